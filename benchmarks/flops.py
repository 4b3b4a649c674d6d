"""The physical limit of a step: this machine's matmul peaks, a step's useful FLOPs, each phase's utilisation.

    python benchmarks/flops.py --threads 2                     # float32 and bfloat16 peaks (GFLOP/s), SmolLM2's shapes
    python benchmarks/vs_trl.py --task smollm2                 # prints the float32 table for our frozen runs

Peak: the best of ``--repeats`` timed ``torch.mm`` calls (after a warm-up) of a square 2048 matrix
and of the model's layer shapes, ``[M, d] x [d, d_ff]`` and the like, at M = the rows of one
decoding step (64) and of the update's forward (1024). Memory bandwidth: the best of timed
``torch.add(a, b, out=c)`` on 2^25 floats (3 x 4 bytes per element), the ceiling of the optimizer.

By precision (the command above): the same ``torch.mm`` at four shapes (the update's MLP up, the decoding
step's lm_head and q projection, the 2048 square) in three kernel paths: float32 tensors (MKL's sgemm),
bfloat16 tensors (oneDNN, on AVX512-BF16 or AMX where the CPU has them), and float32 tensors with
``torch.backends.mkldnn.matmul.fp32_precision = "bf16"`` (oneDNN rounds the inputs to bf16 inside the
kernel: the weights and activations stay float32 in memory).

Useful FLOPs of one step (N = all parameters, the tied embedding matrix counted once; V x d of them
are that matrix; a lookup costs no FLOPs, the lm_head matmul 2·V·d per position whose logits are used):

- forward of one token through the layers: 2·(N − V·d); its logits: 2·V·d more;
- generation: each distinct prompt's tokens once (prefill, shared by the group) and each generated
  token; logits at each generated token;
- scoring (forward with gradients): each distinct prompt once plus every completion token; logits
  at each completion token; backward: twice the forward (gradients of activations and of weights);
- optimizer (gradient norm, clipping, AdamW): about 20 FLOPs per parameter, bound by memory: its
  bytes (parameter, gradient, two moments: read 4, write 3, plus the norm's and the clip's passes
  over the gradient: 10 float32 arrays of N) against the measured bandwidth.

Work not counted as useful: padding (left pads of prompts, positions after a completion's end,
which the batched loops still compute), attention's score and value products (about
4·layers·context·d per token: ~1% at these 50-token contexts), softmax, sampling and Python.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

#: SmolLM2-135M's shapes (config.json of the dequantized GGUF): d, d_ff, kv width, vocabulary, layers
SMOLLM2 = {"d": 576, "d_ff": 1536, "kv": 192, "vocab": 49152, "layers": 30}


def best_seconds(call, repeats: int) -> float:
    call()  # warm-up: allocation, thread pool
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_peaks(threads: int, repeats: int = 5, shape: dict[str, int] = SMOLLM2,
                 dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """GFLOP/s of ``dtype`` ``torch.mm`` at ``threads`` threads, by label; ``peak`` is the best of them."""
    torch.set_num_threads(threads)
    d, ff, kv, vocab = shape["d"], shape["d_ff"], shape["kv"], shape["vocab"]
    cases = {"2048 x 2048 x 2048": (2048, 2048, 2048)}
    for m in (64, 1024):
        cases |= {f"[{m}, {d}] x [{d}, {ff}] (MLP up)": (m, d, ff), f"[{m}, {ff}] x [{ff}, {d}] (MLP down)": (m, ff, d),
                  f"[{m}, {d}] x [{d}, {d}] (q, o)": (m, d, d), f"[{m}, {d}] x [{d}, {kv}] (k, v)": (m, d, kv),
                  f"[{m}, {d}] x [{d}, {vocab}] (lm_head)": (m, d, vocab)}
    generator = torch.Generator().manual_seed(0)
    rates = {}
    for label, (m, k, n) in cases.items():
        a, b = torch.randn(m, k, generator=generator).to(dtype), torch.randn(k, n, generator=generator).to(dtype)
        out = torch.empty(m, n, dtype=dtype)
        rates[label] = 2 * m * k * n / best_seconds(lambda a=a, b=b, out=out: torch.mm(a, b, out=out), repeats) / 1e9
    rates["peak"] = max(rates.values())
    return rates


def mm_rate(m: int, k: int, n: int, dtype: torch.dtype, repeats: int) -> float:
    """GFLOP/s of ``torch.mm`` of ``[m, k] x [k, n]`` random ``dtype`` matrices, the best of ``repeats`` calls."""
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(m, k, generator=generator).to(dtype), torch.randn(k, n, generator=generator).to(dtype)
    out = torch.empty(m, n, dtype=dtype)
    return 2 * m * k * n / best_seconds(lambda a=a, b=b, out=out: torch.mm(a, b, out=out), repeats) / 1e9


#: (label, (m, k, n)) of the precision table: SmolLM2's update MLP, decoding lm_head and projection, a large square
PRECISION_SHAPES = [("[1024, 576] x [576, 1536] (update, MLP up)", (1024, 576, 1536)),
                    ("[64, 576] x [576, 49152] (decoding, lm_head)", (64, 576, 49152)),
                    ("[64, 576] x [576, 576] (decoding, q, o)", (64, 576, 576)),
                    ("2048 x 2048 x 2048", (2048, 2048, 2048))]


def precision_rates(threads: int, repeats: int = 3) -> dict[str, tuple[float, float, float]]:
    """GFLOP/s by shape label: (float32, bfloat16, float32 computed by oneDNN in bf16)."""
    torch.set_num_threads(threads)
    rates = {}
    for label, (m, k, n) in PRECISION_SHAPES:
        f32, bf16 = mm_rate(m, k, n, torch.float32, repeats), mm_rate(m, k, n, torch.bfloat16, repeats)
        before = torch.backends.mkldnn.matmul.fp32_precision
        torch.backends.mkldnn.matmul.fp32_precision = "bf16"
        try:
            implicit = mm_rate(m, k, n, torch.float32, repeats)
        finally:
            torch.backends.mkldnn.matmul.fp32_precision = before
        rates[label] = (f32, bf16, implicit)
    return rates


def print_precision_rates(rates: dict[str, tuple[float, float, float]]) -> None:
    print("| torch.mm, GFLOP/s | float32 | bfloat16 | bf16 / float32 | float32, oneDNN fp32_precision=bf16 |\n"
          "|---|---|---|---|---|")
    for label, (f32, bf16, implicit) in rates.items():
        print(f"| {label} | {f32:.1f} | {bf16:.1f} | {bf16 / f32:.2f}x | {implicit:.1f} |")


def bandwidth(threads: int, repeats: int = 5, elements: int = 1 << 25) -> float:
    """GB/s of ``torch.add(a, b, out=c)`` on float32 arrays far larger than the caches (read 2, write 1)."""
    torch.set_num_threads(threads)
    a, b, c = torch.ones(elements), torch.ones(elements), torch.empty(elements)
    return 3 * 4 * elements / best_seconds(lambda: torch.add(a, b, out=c), repeats) / 1e9


def parameter_count(model_dir) -> tuple[int, int]:
    """(N, V·d): the model's parameters (tied matrices once) and its output embedding's, from the directory."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):  # shapes only, no weights read
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    return sum(p.numel() for p in model.parameters()), model.get_output_embeddings().weight.numel()


def useful_flops(n: int, head: int, tokens: dict[str, float]) -> dict[str, float]:
    """Useful FLOPs per step by phase, from the mean tokens per step (distinct prompt, completion)."""
    body = 2 * (n - head)  # one token's forward through the layers
    prompt, completion = tokens["prompt_tokens"], tokens["completion_tokens"]
    forward = body * (prompt + completion) + 2 * head * completion  # generation and scoring: the same tokens
    return {"generate": forward, "score": forward, "backward": 2 * forward, "optimizer": 20 * n}


PHASES = [  # (label, phase, its milliseconds per step in vs_trl.summarise)
    ("generation (prefill + decoding)", "generate", "generate_ms"),
    ("scoring: forward with gradients", "score", "score_ms"),
    ("backward", "backward", "backward_ms"),
    ("optimizer (norm, clip, AdamW)", "optimizer", "optimizer_total_ms"),
]


def print_peaks(peaks: dict[str, float], gbs: float, dtype: torch.dtype = torch.float32) -> None:
    print(f"| {str(dtype).removeprefix('torch.')} matmul | GFLOP/s |\n|---|---|")
    for label, rate in peaks.items():
        print(f"| {label} | {rate:.1f} |")
    print(f"| memory bandwidth (torch.add, 2^25 floats), GB/s | {gbs:.1f} |")


def print_utilisation(summary: dict[str, float], model_dir, threads: int, repeats: int = 5,
                      dtype: torch.dtype = torch.float32) -> None:
    """The table: per phase, useful GFLOP, seconds, GFLOP/s and the share of the ``dtype`` matmul peak (or of the
    bandwidth); a bf16-mixed run is measured against the bfloat16 peak, the higher one."""
    n, head = parameter_count(model_dir)
    peaks, gbs = matmul_peaks(threads, repeats, dtype=dtype), bandwidth(threads, repeats)
    flops = useful_flops(n, head, summary)
    print(f"\nthe physical limit ({threads} threads): N = {n / 1e6:.1f}M parameters (the tied embedding once; "
          f"{head / 1e6:.1f}M of them the V x d matrix); per step {summary['prompt_tokens']:.0f} distinct prompt "
          f"tokens, {summary['completion_tokens']:.0f} completion tokens of {summary['rows']:.0f} x "
          f"{summary['width']:.0f} positions\n")
    print_peaks(peaks, gbs, dtype)
    print("\n| phase (ours, frozen runs) | useful GFLOP / step | s / step | GFLOP/s | of the matmul peak |\n"
          "|---|---|---|---|---|")
    for label, phase, key in PHASES:
        seconds = summary.get(key, 0.0) / 1000
        rate = flops[phase] / seconds / 1e9 if seconds else float("nan")
        share = f"{rate / peaks['peak']:.0%}"
        if phase == "optimizer":  # memory-bound: 10 passes over N floats against the bandwidth
            share += f" (bytes: {10 * 4 * n / seconds / 1e9 / gbs:.0%} of the bandwidth)" if seconds else ""
        print(f"| {label} | {flops[phase] / 1e9:.1f} | {seconds:.3f} | {rate:.1f} | {share} |")
    rest = summary["s_per_step"] - sum(summary.get(key, 0.0) for *_, key in PHASES) / 1000
    print(f"| the rest (reward, objective, advantages, logging, framework) | - | {rest:.3f} | - | - |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per shape; the best counts")
    parser.add_argument("--all-shapes", action="store_true", help="also the float32 table at every layer shape")
    args = parser.parse_args()
    capability = torch.backends.cpu.get_cpu_capability()
    print(f"torch {torch.__version__}, {args.threads} threads, CPU capability {capability}, "
          f"load average before: {os.getloadavg()[0]:.1f}\n")
    print_precision_rates(precision_rates(args.threads, args.repeats))
    print(f"| memory bandwidth (torch.add, 2^25 floats), GB/s | {bandwidth(args.threads, args.repeats):.1f} | | | |")
    if args.all_shapes:
        print()
        print_peaks(matmul_peaks(args.threads, args.repeats), bandwidth(args.threads, args.repeats))
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
