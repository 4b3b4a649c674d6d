"""What sharing a group's prompt saves in the update's forward and backward.

    OMP_NUM_THREADS=1 python benchmarks/prefix_sharing.py
    OMP_NUM_THREADS=1 python benchmarks/prefix_sharing.py --prompt 150 --response 200 --group 8 --queries 2

The G responses of a query share its prompt. The full pass runs prompt ⧺ response for each of
them; the shared one (what CausalLMPolicy's ``score`` does, see ``lm.prefill.shared_prompts``)
runs each prompt once, with gradients, keeps its KV cache, repeats the cache G times
(``Cache.batch_repeat_interleave``) and runs only the responses on it: the same log-probs and
gradients up to float rounding. This measures both, alternating, on
``configs/hf_tiny.yaml``'s random Llama (the Copy size by default: 16 queries x 8 responses, a
5-token prompt, 8 response tokens), and prints the mean milliseconds of forward + backward and the
largest difference of the log-probs and of the gradients.
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from sapo_lightning.lm.model import cache_argument

LLAMA = dict(vocab_size=11, hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
             num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True, bos_token_id=None,
             eos_token_id=0, pad_token_id=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=16)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=5)
    parser.add_argument("--response", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", **LLAMA))
    cache_arg = cache_argument(model)
    b, g, p, t = args.queries, args.group, args.prompt, args.response
    prompts = torch.randint(1, 11, (b, p))  # [B, P]
    responses = torch.randint(0, 11, (b * g, t))  # [N, T]

    def full() -> torch.Tensor:  # today's score: prompt ⧺ response for every response
        tokens = torch.cat([prompts.repeat_interleave(g, 0), responses[:, :-1]], 1)  # [N, P + T - 1]
        logits = model(tokens, use_cache=False, logits_to_keep=t).logits  # [N, T, V]
        return logits.float().log_softmax(-1).gather(-1, responses.unsqueeze(-1)).squeeze(-1)

    def shared() -> torch.Tensor:  # each prompt once, its cache repeated for the group
        out = model(prompts, use_cache=True, logits_to_keep=1)
        cache = getattr(out, cache_arg)
        cache.batch_repeat_interleave(g)
        first = out.logits[:, -1:].repeat_interleave(g, 0)  # [N, 1, V]: predicts each response's first token
        positions = torch.arange(p, p + t - 1).expand(b * g, -1)  # [N, T - 1]
        rest = model(responses[:, :-1], position_ids=positions, use_cache=True, **{cache_arg: cache}).logits
        logits = torch.cat([first, rest], 1)  # [N, T, V]
        return logits.float().log_softmax(-1).gather(-1, responses.unsqueeze(-1)).squeeze(-1)

    params = list(model.parameters())
    a, s = full(), shared()
    grads_a, grads_s = torch.autograd.grad(a.sum(), params), torch.autograd.grad(s.sum(), params)
    grad_diff = max(((x - y).abs().max() / x.abs().max().clamp(min=1e-12)).item() for x, y in zip(grads_a, grads_s))
    times = {"full": [], "shared": []}
    for _ in range(args.repeats):
        for name, run in (("full", full), ("shared", shared)):  # alternating
            start = time.perf_counter()
            for _ in range(10):
                model.zero_grad(set_to_none=True)
                run().sum().backward()
            times[name].append((time.perf_counter() - start) / 10 * 1e3)
    mean = {name: sum(v) / len(v) for name, v in times.items()}
    print(f"{b} queries x {g} responses, prompt {p}, response {t} tokens; forward + backward, mean of "
          f"{args.repeats} alternating rounds of 10")
    print(f"full   {mean['full']:.1f} ms")
    print(f"shared {mean['shared']:.1f} ms ({mean['shared'] / mean['full']:.2f}x)")
    print(f"max |log-prob difference| {(a - s).abs().max().item():.1e}; max gradient difference relative "
          f"to the tensor's largest entry {grad_diff:.1e}")


if __name__ == "__main__":
    main()
