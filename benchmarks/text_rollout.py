"""Rollout throughput of CausalLMPolicy.sample on a text task against the same model's ``generate()``.

    python benchmarks/text_rollout.py [--sizes tiny small] [--batch 64] [--new-tokens 32] [--repeats 5]

Both sample from the same random Llama (built from a config, nothing downloaded) over the shipped
ASCII tokenizer, on the same left-padded arithmetic prompts, with the same max_new_tokens,
temperature, top_k, top_p, EOS and pad ids, KV cache on, one torch thread. The two are timed
alternately (the order flips every repeat) after one warm-up round each; tokens/s is
batch · decoding steps / seconds, where the steps are the columns each produced (both stop once
every row has ended). The table gives the mean and median over the repeats, and the load
average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from sapo_lightning.lm.policy import CausalLMPolicy
from sapo_lightning.text.task import PromptTask

ASCII = str(Path(__file__).resolve().parents[1] / "assets" / "tokenizers" / "ascii")
SPECIAL = {"bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0, "attention_dropout": 0.0}
SIZES = {  # Llama configs over the 101 ASCII ids
    "tiny": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2},
    "small": {"hidden_size": 384, "intermediate_size": 1024, "num_hidden_layers": 8, "num_attention_heads": 6},
}


def prompt_task(directory: str, new_tokens: int) -> PromptTask:
    path = Path(directory, "prompts.jsonl")
    # lengths 6..21 characters: every batch is left-padded
    rows = [{"prompt": f"{i * 7919 % 10 ** (1 + i % 4)}+{i}" + "0" * (i % 9) + "=", "answer": "0"} for i in range(256)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return PromptTask(str(path), ASCII, [{"function": "sapo_lightning.text.rewards.numeric_answer"}],
                      max_new_tokens=new_tokens, max_prompt_length=64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--batch", type=int, default=64, help="completions sampled at once")
    parser.add_argument("--new-tokens", type=int, default=32, help="max_new_tokens")
    parser.add_argument("--repeats", type=int, default=5, help="timings per path after the warm-up")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--top-p", type=float, default=0.95)
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as directory:
        task = prompt_task(directory, args.new_tokens)
        queries = task.train_batch(0, args.batch, 0, 0, 1)
        print(f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, 1 thread; batch {args.batch}, "
              f"prompts {int(queries.attention_mask.sum(-1).min())}..{queries.input_ids.shape[1]} tokens "
              f"(left-padded), max_new_tokens {args.new_tokens}, temperature {args.temperature}, top_k {args.top_k}, "
              f"top_p {args.top_p}")
        print()
        print("| model | params | sample tok/s (mean / median) | generate tok/s (mean / median) | ratio (median) |")
        print("|---|---|---|---|---|")
        for size in args.sizes:
            torch.manual_seed(0)
            config = {"model_type": "llama", "vocab_size": 101, "max_position_embeddings": 256, **SPECIAL,
                      **SIZES[size], "num_key_value_heads": SIZES[size]["num_attention_heads"]}
            policy = CausalLMPolicy(task, model_config=config, temperature=args.temperature, top_k=args.top_k,
                                    top_p=args.top_p).eval()
            rates = time_both(policy, queries, args)
            params = sum(p.numel() for p in policy.parameters())
            ours, theirs = rates["sample"], rates["generate"]
            print(f"| {size} | {params / 1e6:.2f}M | {statistics.mean(ours):,.0f} / {statistics.median(ours):,.0f} | "
                  f"{statistics.mean(theirs):,.0f} / {statistics.median(theirs):,.0f} | "
                  f"{statistics.median(ours) / statistics.median(theirs):.2f}x |")
    print()
    print(f"load average (1, 5, 15 min): before {load_before}, after {os.getloadavg()}")


def time_both(policy: CausalLMPolicy, queries, args) -> dict[str, list[float]]:
    """Tokens/s of each path, per repeat (the warm-up round left out)."""

    def sample(seed: int) -> int:
        rollout = policy.sample(queries, torch.Generator().manual_seed(seed))
        return int(rollout.mask.any(0).sum())  # decoding steps run

    def generate(seed: int) -> int:
        torch.manual_seed(seed)
        with torch.no_grad():
            out = policy.model.generate(
                input_ids=queries.input_ids, attention_mask=queries.attention_mask, max_new_tokens=args.new_tokens,
                do_sample=True, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                eos_token_id=policy.stop_ids.tolist(), pad_token_id=policy.pad_token, use_cache=True)
        return out.shape[1] - queries.input_ids.shape[1]

    paths = {"sample": sample, "generate": generate}
    rates = {name: [] for name in paths}
    for repeat in range(args.repeats + 1):
        for name in (list(paths) if repeat % 2 else list(paths)[::-1]):
            start = time.perf_counter()
            steps = paths[name](repeat)
            seconds = time.perf_counter() - start
            if repeat:
                rates[name].append(len(queries) * steps / seconds)
    return rates


if __name__ == "__main__":
    main()
