"""Peak memory of one SAPO step at B·G = 1024 responses: micro-batch 1024 (the whole batch) against 64.

    python benchmarks/micro_batch_memory.py                 # CPU: peak RSS; ~1-3 min on a 2-core VM
    python benchmarks/micro_batch_memory.py --device cuda   # GPU: torch.cuda.max_memory_allocated
    python benchmarks/micro_batch_memory.py --micro 1024 256 64 --steps 2

Each case is ``sapo-lightning fit --config configs/hf_tiny.yaml`` (the real CLI) in a process of its
own, with a random Llama of about 1M parameters (width 128, 4 layers, MLP 512, 4 heads, built from
its config) on Copy of 8 symbols with up to 16 new tokens: 128 queries × 8 responses = 1024, each
scored over 8 + 16 - 1 = 23 positions. The weights and Adam's state are ~16 MiB; the activations
of scoring 1024 × 23 tokens are about a gigabyte, so they dominate, and micro-batches cut them.
Sizes were picked so that one step runs in seconds on a 2-core CPU. ``--steps`` optimizer steps are
run (the first is a warm-up for the time column); the memory is the run's peak over them, minus
the memory at the start of training (see ``step_probe.py``). Sampling and scoring run in chunks of
the micro-batch too, and the gradients accumulate, so both cases make the same optimizer step.
"""

from __future__ import annotations

import argparse
import os
import sys

from step_probe import copy_fit_args, run_case

MODEL = {"model_type": "llama", "vocab_size": 11, "hidden_size": 128, "intermediate_size": 512,
         "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 64,
         "tie_word_embeddings": True, "attention_dropout": 0.0, "bos_token_id": None, "eos_token_id": 0,
         "pad_token_id": None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--micro", type=int, nargs="+", default=[1024, 64], help="micro-batch sizes to compare")
    parser.add_argument("--batch", type=int, default=128, help="queries per step (B)")
    parser.add_argument("--group", type=int, default=8, help="responses per query (G)")
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps per case")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per case (CPU)")
    args = parser.parse_args()
    load = os.getloadavg()
    measure = "torch.cuda.max_memory_allocated" if args.device == "cuda" else "peak RSS (VmHWM)"
    print(f"B·G = {args.batch} x {args.group} = {args.batch * args.group} responses, {args.steps} steps per case, "
          f"{args.device}, {measure}, load average {load[0]:.1f}")
    print()
    print("| micro-batch | params | step peak MiB | s/step |")
    print("|---|---|---|---|")
    failed = False
    for micro in args.micro:
        fit_args = copy_fit_args(MODEL, args.steps, args.device, args.batch, args.group)
        result = run_case([*fit_args, f"--model.micro_batch_size={micro}"], args.threads)
        if "error" in result:
            failed = True
            print(f"| {micro} | failed: {result['error'][0][:120]} | | |")
            continue
        print(f"| {micro} | {result['params'] / 1e6:.2f}M | {result['step_peak_mib']:,.0f} | "
              f"{result['seconds_per_step']:.2f} |", flush=True)
    print()
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
