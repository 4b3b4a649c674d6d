"""Does ``torch.compile`` speed up a bf16 decode on this CPU? transformers' ``generate`` with and without it.

    python benchmarks/decode_compile.py                   # SmolLM2-135M-Instruct, attention grouped, 2 threads

Greedy ``model.generate`` of ``--steps`` tokens (no early stop) for ``--rows`` rows (``--prompts`` distinct
random prompts of ``--prompt-length`` tokens, each repeated as a group would be), under
``torch.autocast("cpu", dtype=torch.bfloat16)``, ``--repeats`` times each way: the dynamic KV cache as
transformers runs it by default; a static cache (``cache_implementation="static"``: fixed shapes, what a
compiled decode needs); the static cache with the model's forward compiled by ``torch.compile`` (inductor,
default mode). The first compiled call, which compiles, is timed apart. Printed: the seconds of each call.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from decode_precision import add_batch_arguments, prompt_ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_batch_arguments(parser, repeats=3, threads=2)
    parser.add_argument("--attention", default="grouped", choices=["sdpa", "eager", "grouped"])
    args = parser.parse_args()
    ids = prompt_ids(parser, args)
    from transformers import AutoModelForCausalLM

    import sapo_lightning.lm.attention  # noqa: F401  (registers "grouped" with transformers)
    from sapo_lightning.pretrained import resolve

    torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(resolve("--model", args.model), dtype=torch.float32,
                                                 attn_implementation=args.attention).eval()

    def generate(**kwargs) -> float:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            start = time.perf_counter()
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                           max_new_tokens=args.steps, min_new_tokens=args.steps, **kwargs)
            return time.perf_counter() - start

    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.rows} rows, {args.steps} tokens, attention "
          f"{args.attention}; load average {os.getloadavg()[0]:.2f}", flush=True)
    dynamic = [generate() for _ in range(args.repeats)]
    print("dynamic cache, not compiled, s:", ", ".join(f"{s:.2f}" for s in dynamic), flush=True)
    static = [generate(cache_implementation="static") for _ in range(args.repeats)]
    print("static cache, not compiled, s:", ", ".join(f"{s:.2f}" for s in static), flush=True)
    model.forward = torch.compile(model.forward, dynamic=False)
    first = generate(cache_implementation="static")
    print(f"static cache, compiled: first call (compiling) {first:.1f} s", flush=True)
    compiled = [generate(cache_implementation="static") for _ in range(args.repeats)]
    print("static cache, compiled, s:", ", ".join(f"{s:.2f}" for s in compiled))
    print(f"load average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
