"""Where the sampler and the update disagree: log-probs stored by the cached decode against one full forward.

    python benchmarks/mismatch.py                # configs/hf_tiny.yaml's Llama on Copy, a few seconds

For each precision (float32; bf16 autocast, as under ``trainer.precision=bf16-mixed``; bf16 weights, the
policy's ``dtype: bfloat16``), attention kernel (``sdpa``, transformers' default: torch's fused
scaled_dot_product_attention; ``eager``: plain matmuls and softmax) and query length (4 symbols as in
hf_tiny, 8), one policy samples 64 responses (16 queries x 4, the KV-cache decode) and scores them (one
forward over prompt and responses, as the update does). Prints, over the sampled tokens, the largest and
mean |log π_score − log π_sample|, the share of tokens where they differ at all, and what the training
diagnostics would log: ``mismatch_kl`` (mean k3) and ``mismatch_ratio_outside`` (ratio outside [0.9, 1.1]).
"""

from __future__ import annotations

import argparse
import os

import torch

from sapo_lightning.lm.policy import CausalLMPolicy
from sapo_lightning.objectives import k3_kl
from sapo_lightning.tasks import Copy

LLAMA = {"model_type": "llama", "vocab_size": 11, "hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2,
         "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 64, "tie_word_embeddings": True,
         "attention_dropout": 0.0, "bos_token_id": None, "eos_token_id": 0, "pad_token_id": None}
PRECISIONS = {"float32": ("float32", False), "bf16 autocast": ("float32", True), "bf16 weights": ("bfloat16", False)}


def mismatch(length: int, attention: str, precision: str, seed: int = 0) -> dict[str, float]:
    """The decode-vs-forward statistics of one setting."""
    dtype, autocast = PRECISIONS[precision]
    task = Copy(length=length, num_symbols=8, max_new_tokens=2 * length)
    torch.manual_seed(seed)
    policy = CausalLMPolicy(task, model_config=LLAMA | {"attn_implementation": attention}, temperature=2.0,
                            dtype=dtype).eval()
    queries = task.sample_queries(16, torch.Generator().manual_seed(seed)).repeat_interleave(4, 0)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast), torch.no_grad():
        rollout = policy.sample(queries, torch.Generator().manual_seed(seed + 1))
        scored = policy.score(queries, rollout.responses).log_probs
    diff = (scored - rollout.log_probs)[rollout.mask]
    ratio = diff.exp()
    return {"max |d|": diff.abs().max().item(), "mean |d|": diff.abs().mean().item(),
            "differ": (diff != 0).float().mean().item(),
            "mismatch_kl": k3_kl(rollout.log_probs, scored)[rollout.mask].mean().item(),
            "outside": ((ratio < 0.9) | (ratio > 1.1)).float().mean().item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"load average {os.getloadavg()[0]:.1f}\n")
    print("| precision | attention | symbols | max \\|Δ log p\\| | mean \\|Δ log p\\| | tokens that differ "
          "| mismatch_kl | ratio outside [0.9, 1.1] |\n|---|---|---|---|---|---|---|---|")
    for precision in PRECISIONS:
        for attention in ("sdpa", "eager"):
            for length in (4, 8):
                s = mismatch(length, attention, precision)
                print(f"| {precision} | {attention} | {length} | {s['max |d|']:.2g} | {s['mean |d|']:.2g} | "
                      f"{s['differ']:.0%} | {s['mismatch_kl']:.2g} | {s['outside']:.0%} |")


if __name__ == "__main__":
    main()
