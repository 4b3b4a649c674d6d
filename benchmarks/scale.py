"""Peak memory and seconds per step of the HF policy at two sizes: plain, micro-batches, bf16-mixed,
LoRA, and with a lagged π_old (the copy that every_n_steps=1 does not build).

    python benchmarks/scale.py                               # CPU, sizes 4M and 30M, 3 steps per case
    python benchmarks/scale.py --device cuda --batch 64      # on a GPU: torch.cuda.max_memory_allocated
    python benchmarks/scale.py --sizes 4M --steps 5 --lora   # LoRA too (needs the [peft] extra)
    python benchmarks/scale.py --cases plain lora            # only some cases

Each case is ``sapo-lightning fit --config configs/hf_tiny.yaml`` (the real CLI, in a process of its
own; see ``step_probe.py``) with a random Llama built from its config, on Copy of 8 symbols with up to
16 new tokens, ``--batch`` queries × 8 responses per step. The cases of a size:

- ``plain``: float32, the whole batch at once, π_old refreshed every step (so no copy is built);
- ``micro``: ``model.micro_batch_size`` = a quarter of the batch's responses;
- ``bf16-mixed``: ``trainer.precision=bf16-mixed`` (log-probs and loss stay float32);
- ``lora``: ``model.policy.init_args.lora={r: 8, alpha: 16, dropout: 0.0, target_modules: [q_proj, v_proj]}``
  (only with ``--lora``);
- ``lagged``: ``sync.every_n_steps=10``, so π_old is a frozen copy of the policy.

*resident* is the memory once the model, its copies and the optimizer are built (CPU: RSS growth from
before the CLI built anything; CUDA: memory_allocated), *step peak* what the steps add on top of it.
The old copy's cost is the ``lagged`` row's resident minus the ``plain`` row's.
"""

from __future__ import annotations

import argparse
import os
import sys

from step_probe import copy_fit_args, run_case

SIZES = {  # random Llama configs over Copy's 11 tokens
    "4M": {"hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 4, "num_attention_heads": 4},
    "30M": {"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 8, "num_attention_heads": 8},
}
LORA = "{r: 8, alpha: 16, dropout: 0.0, target_modules: [q_proj, v_proj]}"


def base_args(size: str, steps: int, device: str, batch: int) -> list[str]:
    model = {"model_type": "llama", "vocab_size": 11, "max_position_embeddings": 64, "tie_word_embeddings": True,
             "attention_dropout": 0.0, "bos_token_id": None, "eos_token_id": 0, "pad_token_id": None,
             **SIZES[size], "num_key_value_heads": SIZES[size]["num_attention_heads"]}
    return [*copy_fit_args(model, steps, device, batch, 8), "--sync.every_n_steps=1"]


def cases(batch: int, lora: bool) -> dict[str, list[str]]:
    return {
        "plain": [],
        "micro": [f"--model.micro_batch_size={batch * 8 // 4}"],
        "bf16-mixed": ["--trainer.precision=bf16-mixed"],
        **({"lora": [f"--model.policy.init_args.lora={LORA}"]} if lora else {}),
        "lagged": ["--sync.every_n_steps=10"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per case (the first is a warm-up)")
    parser.add_argument("--batch", type=int, default=8, help="queries per step (x 8 responses)")
    parser.add_argument("--lora", action="store_true", help="also the LoRA case (needs the [peft] extra)")
    parser.add_argument("--cases", nargs="+", help="only these cases (plain, micro, bf16-mixed, lora, lagged)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per case (CPU)")
    args = parser.parse_args()
    load = os.getloadavg()
    print(f"{args.device}, B·G = {args.batch} x 8 = {args.batch * 8} responses of up to 16 tokens after 9, "
          f"{args.steps} steps per case, load average {load[0]:.1f}")
    print()
    print("| size | params | case | old copy | resident MiB | step peak MiB | s/step |")
    print("|---|---|---|---|---|---|---|")
    failed = False
    for size in args.sizes:
        plain = None
        for name, extra in cases(args.batch, args.lora or "lora" in (args.cases or [])).items():
            if args.cases and name not in args.cases:
                continue
            result = run_case(base_args(size, args.steps, args.device, args.batch) + extra, args.threads)
            if "error" in result or not result["reward_finite"]:
                failed = True
                print(f"| {size} | | {name} | "
                      f"failed: {result.get('error', ['train/reward not finite'])[0][:120]} | | | |")
                continue
            plain = result if name == "plain" else plain
            params = f"{result['params'] / 1e6:.1f}M" + (
                f" ({result['trainable'] / 1e6:.2f}M trained)" if result["trainable"] != result["params"] else "")
            saved = ""
            if name == "lagged" and plain is not None:
                saved = f" (+{result['resident_mib'] - plain['resident_mib']:,.0f} for the copy)"
            print(f"| {size} | {params} | {name} | {'yes' if result['old_copy'] else 'no'} | "
                  f"{result['resident_mib']:,.0f}{saved} | {result['step_peak_mib']:,.0f} | "
                  f"{result['seconds_per_step']:.2f} |", flush=True)
    print()
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
