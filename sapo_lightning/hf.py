"""Any Hugging Face ``transformers`` causal LM as a :class:`~sapo_lightning.policies.Policy`.

Needs the ``[hf]`` extra (``pip install "sapo-lightning[hf]"``); the rest of the package never
imports this module. ``python -m sapo_lightning.hf make-tiny DIR`` writes a tiny randomly
initialised Llama to DIR, for trying the adapter without downloading anything.
"""

from __future__ import annotations

import argparse
import inspect

import torch
from torch import Tensor
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from sapo_lightning.checks import ConfigError
from sapo_lightning.objectives import check_positive
from sapo_lightning.policies import Policy, Rollout, Scores, check_token_queries, decode, token_scores
from sapo_lightning.tasks import Task

DTYPES = ("float32", "bfloat16", "float16")


class HFCausalLMPolicy(Policy):
    """A ``transformers`` causal LM, loaded with ``AutoModelForCausalLM.from_pretrained(path)``.

    The task's token t is the model's token ``token_ids[t]``; the policy is the model's
    next-token distribution restricted to those tokens (softmax over their logits, divided
    by ``temperature``), so every sampled token is one the task can reward. Queries are the
    prompt; decoding runs token by token with the model's own KV cache and stops at the
    task's EOS or after ``task.response_len`` tokens. ``score`` is one forward pass over
    prompt ⧺ response. The token map comes from, in this order:

    - ``token_ids``: the model id of each task token, given directly;
    - ``tokenizer``: each task token's text (``task.token_texts``) must encode to exactly one
      token of this tokenizer; the task's EOS becomes the tokenizer's EOS;
    - neither: the identity (task token t is model token t).

    Updates run the model in train mode: a checkpoint whose config sets dropout (GPT-2's
    default is 0.1) scores with dropout, so π_θ ≠ π_old even at the first update; set its
    dropout to 0 in ``config.json`` for exact on-policy ratios (Llama-style models have none).

    Args:
        task: Token-query task; sets the vocabulary, max_new_tokens and EOS.
        path: Directory of a model saved with ``save_pretrained`` (or a hub id, when online).
        tokenizer: Directory (or hub id) of a tokenizer to map task tokens by their text.
        token_ids: Model token id of each task token, ``task.vocab_size`` distinct ids.
        temperature: Sampling temperature (> 0); log-probs are those of the tempered softmax.
        dtype: Parameter dtype: float32, bfloat16 or float16.
        stop_when_done: End decoding once every response has ended. Set false under FSDP,
            where every rank must run the same number of forward passes.
        gradient_checkpointing: Recompute activations in backward to save memory.
    """

    def __init__(
        self,
        task: Task,
        path: str,
        tokenizer: str | None = None,
        token_ids: list[int] | None = None,
        temperature: float = 1.0,
        dtype: str = "float32",
        stop_when_done: bool = True,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        check_token_queries("HFCausalLMPolicy", task)
        if dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
        self.temperature = check_positive("temperature", temperature)
        self.query_len = task.query_dim
        self.max_new_tokens = task.response_len
        self.eos_token = task.eos_token
        self.stop_when_done = stop_when_done
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
        if gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        model_vocab = self.model.get_output_embeddings().weight.shape[0]
        if token_ids is None and tokenizer is not None:
            token_ids = _token_ids_from_tokenizer(task, tokenizer)
        if token_ids is None:
            if task.vocab_size > model_vocab:
                raise ConfigError(
                    f"task vocab_size must be <= the model's vocabulary ({model_vocab}) when token ids are "
                    f"used directly; got {task.vocab_size}"
                )
            token_ids = list(range(task.vocab_size))
        if len(token_ids) != task.vocab_size or len(set(token_ids)) != len(token_ids):
            raise ConfigError(f"token_ids must hold task vocab_size={task.vocab_size} distinct ids; got {len(token_ids)}")
        bad = [i for i in token_ids if not isinstance(i, int) or not 0 <= i < model_vocab]
        if bad:
            raise ConfigError(f"token_ids must be integers in [0, {model_vocab}); got {bad}")
        identity = token_ids == list(range(model_vocab))
        # model id of each task token [V]; None when the two vocabularies are the same
        self.register_buffer("vocab", None if identity else torch.tensor(token_ids), persistent=False)
        forward_args = inspect.signature(self.model.forward).parameters
        self._cache_arg = "cache" if "cache" in forward_args else "past_key_values"  # renamed in transformers 5

    def _to_model(self, tokens: Tensor) -> Tensor:
        return tokens if self.vocab is None else self.vocab[tokens]

    def _restrict(self, logits: Tensor) -> Tensor:  # [..., V_model] -> [..., V]
        return logits if self.vocab is None else logits[..., self.vocab]

    def sample(self, queries: Tensor, generator: torch.Generator | None = None, greedy: bool = False) -> Rollout:
        state = {}

        def next_logits(tokens: Tensor | None) -> Tensor:
            if tokens is None:
                out = self.model(self._to_model(queries), use_cache=True)
            else:
                new = self._to_model(tokens).unsqueeze(-1)  # [N, 1]
                out = self.model(new, use_cache=True, **{self._cache_arg: state["cache"]})
            state["cache"] = getattr(out, self._cache_arg)
            return self._restrict(out.logits[:, -1])  # [N, V]

        return decode(
            next_logits,
            queries.shape[0],
            self.max_new_tokens,
            self.eos_token,
            generator,
            greedy,
            self.temperature,
            queries.device,
            self.stop_when_done,
        )

    def score(self, queries: Tensor, responses: Tensor) -> Scores:
        tokens = self._to_model(torch.cat([queries, responses[:, :-1]], 1))  # [N, D + T - 1]
        logits = self.model(tokens, use_cache=False).logits[:, self.query_len - 1 :]  # [N, T, V_model]
        return token_scores(self._restrict(logits) / self.temperature, responses)


def _token_ids_from_tokenizer(task: Task, path: str) -> list[int]:
    texts = getattr(task, "token_texts", None)
    if texts is None:
        raise ConfigError(f"tokenizer needs a task with token_texts; {type(task).__name__} has none (give token_ids)")
    tokenizer = AutoTokenizer.from_pretrained(path)
    ids = []
    for token, text in enumerate(texts):
        if text is None:
            if tokenizer.eos_token_id is None:
                raise ConfigError(f"tokenizer must define an EOS token for task token {token} (EOS)")
            ids.append(tokenizer.eos_token_id)
            continue
        encoded = tokenizer.encode(text, add_special_tokens=False)
        if len(encoded) != 1:
            raise ConfigError(
                f"tokenizer must spell task token {token} ({text!r}) as exactly one token; got {len(encoded)} "
                "(give token_ids instead)"
            )
        ids.append(encoded[0])
    return ids


def make_tiny(
    directory: str, vocab_size: int, n_layer: int = 2, d_model: int = 64, n_head: int = 2, max_len: int = 128, seed: int = 0
) -> None:
    """Save a randomly initialised Llama with these sizes to ``directory`` (``save_pretrained``)."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=d_model,
        intermediate_size=4 * d_model,
        num_hidden_layers=n_layer,
        num_attention_heads=n_head,
        num_key_value_heads=n_head,
        max_position_embeddings=max_len,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(directory)


def main(args: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sapo_lightning.hf")
    commands = parser.add_subparsers(dest="command", required=True)
    tiny = commands.add_parser("make-tiny", help="write a tiny random Llama to DIR (no download)")
    tiny.add_argument("directory", metavar="DIR")
    tiny.add_argument("--vocab-size", type=int, default=11, help="token ids (default 11: Reverse/Copy with 8 symbols)")
    tiny.add_argument("--n-layer", type=int, default=2)
    tiny.add_argument("--d-model", type=int, default=64)
    tiny.add_argument("--n-head", type=int, default=2)
    tiny.add_argument("--max-len", type=int, default=128, help="longest prompt + response")
    tiny.add_argument("--seed", type=int, default=0)
    ns = parser.parse_args(args)
    make_tiny(ns.directory, ns.vocab_size, ns.n_layer, ns.d_model, ns.n_head, ns.max_len, ns.seed)
    print(f"wrote a tiny random Llama to {ns.directory}")


if __name__ == "__main__":
    main()
