"""Sampling throughput of TransformerPolicy: KV cache against full recomputation of the prefix.

    python benchmarks/sampling.py [--lengths 32 128] [--batch 128] [--vocab-size 11] [--repeats 5]

For each response length T both paths sample from the same seed and must draw the same
tokens (checked). EOS is switched off (``policy.eos_token = None``) so every response is
exactly T tokens and tokens/s = batch · T / seconds, the best of ``--repeats`` timings taken
alternately for the two paths. The defaults are the model and vocabulary of
``configs/transformer.yaml`` with a 9-token prompt. Per-step costs that both paths share
(sampling over the vocabulary, the output head) grow with ``--vocab-size`` and narrow the gap.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from sapo_lightning.tasks import Copy
from sapo_lightning.transformer import TransformerPolicy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[32, 128], help="response lengths T")
    parser.add_argument("--batch", type=int, default=128, help="responses sampled at once (N)")
    parser.add_argument("--vocab-size", type=int, default=11, help="token ids (>= 11)")
    parser.add_argument("--repeats", type=int, default=5, help="timings per path; the best is kept")
    parser.add_argument("--n-layer", type=int, default=2)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--n-head", type=int, default=2)
    args = parser.parse_args()

    print(f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"TransformerPolicy n_layer={args.n_layer} d_model={args.d_model} n_head={args.n_head}, "
          f"batch {args.batch}, vocab {args.vocab_size}")
    print(f"{'T':>5} {'KV cache tok/s':>15} {'recompute tok/s':>16} {'speed-up':>9}")
    for length in args.lengths:
        task = Copy(length=8, num_symbols=8, vocab_size=args.vocab_size, max_new_tokens=length)
        torch.manual_seed(0)
        policy = TransformerPolicy(task, args.n_layer, args.n_head, args.d_model).eval()
        policy.eos_token = None  # decode exactly T tokens
        queries = task.sample_queries(args.batch, torch.Generator().manual_seed(0))
        seconds, tokens = {True: [], False: []}, {}
        for _ in range(args.repeats + 1):  # the first round warms up
            for use_kv_cache in (True, False):
                policy.use_kv_cache = use_kv_cache
                start = time.perf_counter()
                tokens[use_kv_cache] = policy.sample(queries, torch.Generator().manual_seed(0)).responses
                seconds[use_kv_cache].append(time.perf_counter() - start)
        assert torch.equal(tokens[True], tokens[False]), "KV cache and recomputation sampled different tokens"
        cached, full = (args.batch * length / min(seconds[k][1:]) for k in (True, False))
        print(f"{length:>5} {cached:>15,.0f} {full:>16,.0f} {cached / full:>8.1f}x")


if __name__ == "__main__":
    main()
