"""Any Hugging Face ``transformers`` causal LM as the policy of a token task or a text task."""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import AutoTokenizer

from sapo_lightning.checks import ConfigError, check_choice, check_int, check_number, check_positive, fail
from sapo_lightning.lm.model import cache_argument, load_causal_lm, takes_logits_to_keep, weights_cast_once
from sapo_lightning.lm.prefill import can_share_prompts_in_training, prefill_once, prompt_group
from sapo_lightning.lm.sampling import response_mask, sampling_logits, truncated_scores
from sapo_lightning.lm.turns import TurnDecoder
from sapo_lightning.lora import LoRA, is_peft_model
from sapo_lightning.policies import Policy, check_token_queries, decode
from sapo_lightning.pretrained import resolve
from sapo_lightning.rollout import Prompts, Rollout, Scores
from sapo_lightning.tasks import Task


class CausalLMPolicy(Policy):
    """A ``transformers`` causal LM: a saved model (``path``) or a new random one (``model_config``).

    It serves both kinds of task that read tokens:

    - a text task (a :class:`~sapo_lightning.text.task.PromptTask`): the queries are left-padded
      :class:`~sapo_lightning.text.prompts.Prompts` of the task's tokenizer, and the policy is
      the model's distribution over its whole vocabulary (which must hold every tokenizer id). A
      completion ends at its first stop token (the tokenizer's EOS or one of
      ``task.stop_token_ids``); later positions hold the tokenizer's pad id.
    - a token task (Copy, Reverse, ...): the queries are task tokens ``[N, D]``, read as prompts
      without padding. The task's token t is the model's token ``token_ids[t]`` and the policy is
      the model's distribution restricted to those tokens, so every sampled token is one the task
      can reward. A response ends at the task's EOS; later positions hold the EOS. The token map
      comes from, in this order: ``token_ids``, the model id of each task token, given directly;
      ``tokenizer``, where each task token's text (``task.token_texts``) must encode to exactly
      one token and the task's EOS becomes the tokenizer's EOS; neither, the identity (task token
      t is model token t).

    ``sample`` prefills the prompts, with position ids counted from each prompt's first real
    token, then decodes token by token on the model's KV cache, up to ``task.response_len`` new
    tokens; a response that never stopped is ``truncated``. ``score`` is one forward pass over
    prompt ⧺ response. When the rows are groups of G equal prompts (the G responses of each),
    sampling and ``score`` run each distinct prompt once and repeat its KV cache for the group
    (:func:`~sapo_lightning.lm.prefill.shared_prompts`); in training, not for a model with dropout
    or gradient checkpointing, which scores every row whole.

    Tokens are drawn from the sampling distribution: softmax(logits / ``temperature``), then
    restricted to the ``top_k`` most likely tokens, then to the nucleus of mass ``top_p``, and
    renormalised. The log-probs stored for π_old are under that distribution, and ``score``
    computes π_θ's under the same construction (the truncation recomputed from π_θ's own
    logits); log-probs and entropies after a response's stop token are 0. On policy the ratio
    π_θ(y)/π_old(y) is 1 for every sampled token, up to float error between the cached decode
    and the full forward (which could, in principle, move a token sitting exactly on the
    top-k/top-p boundary out of ``score``'s set). Off policy, a token outside π_θ's current
    top-k/top-p set has π_θ(y) = 0: its log-ratio is clamped at −20 by the objectives (r ≈ 2e-9)
    and it gets no gradient through log π_θ. With ``top_p=1`` and ``top_k=0`` it is the plain
    ratio of the tempered softmaxes.

    The model comes from exactly one of ``path`` and ``model_config``. ``path`` is a directory
    written by ``save_pretrained``, a hub id (through transformers' cache; offline, it must be
    cached), a ``.gguf`` file or ``pkg:PACKAGE/FILE.gguf``, a GGUF file an installed package ships
    (dequantized once per machine into a cached directory: :mod:`sapo_lightning.pretrained`).
    ``model_config`` is a ``transformers`` config as a mapping, ``model_type`` (``llama``,
    ``gpt2``, ...) and that config's fields, randomly initialised from the global torch seed (the
    run's ``seed_everything``), no file needed. The longest prompt plus ``max_new_tokens`` must
    fit the model's ``max_position_embeddings``.

    With ``lora``, the model is wrapped by PEFT and only the adapters train: π_old and the
    reference are copies of the adapters on the one shared base model, and checkpoints hold
    the adapters, not the base weights (``pip install "sapo-lightning[peft]"``).

    Updates run the model in train mode: a config with dropout (GPT-2's default is 0.1, or
    LoRA dropout) makes π_θ ≠ π_old even on policy; set it to 0 for exact on-policy ratios
    (Llama-style models have none).

    Args:
        task: The task served: a text task (its tokenizer, max_new_tokens and stop token ids) or
            a token task (its vocabulary, max_new_tokens and EOS).
        path: The model: a ``save_pretrained`` directory, a hub id, a ``.gguf`` file, or
            ``pkg:PACKAGE/FILE.gguf`` (a GGUF file inside an installed package).
        model_config: ``transformers`` config of a new random model: ``model_type`` and its fields.
        tokenizer: Token tasks only: a tokenizer to map task tokens by their text (a directory, hub id
            or GGUF file, as ``path``).
        token_ids: Token tasks only: model token id of each task token, ``task.vocab_size`` distinct ids.
        temperature: Sampling temperature (> 0); log-probs are those of the distribution sampled from.
        top_p: Nucleus mass in (0, 1]; 1 keeps every token.
        top_k: Keep only the k most likely tokens; 0 keeps every token.
        dtype: Parameter dtype: float32, bfloat16 or float16 (the softmax is float32 always).
        stop_when_done: End decoding once every response has stopped. Set false under FSDP,
            where every rank must run the same number of forward passes.
        gradient_checkpointing: Recompute activations in backward to save memory.
        lora: Train LoRA adapters (rank, alpha, dropout, target modules) instead of every
            weight; null trains the whole model.
        attention: transformers' attention implementation: ``sdpa``, ``eager`` or ``grouped``
            (eager's arithmetic without copying shared key/value heads: :mod:`~sapo_lightning.lm.attention`);
            null: the model's default (sdpa). On this CPU grouped is the fastest in bf16 (docs/benchmarks.md).
    """

    def __init__(
        self,
        task: Task,
        path: str | None = None,
        model_config: dict[str, Any] | None = None,
        tokenizer: str | None = None,
        token_ids: list[int] | None = None,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        dtype: str = "float32",
        stop_when_done: bool = True,
        gradient_checkpointing: bool = False,
        lora: LoRA | None = None,
        attention: str | None = None,
    ) -> None:
        super().__init__()
        text = getattr(task, "tokenizer", None) is not None  # a text task: Prompts of its tokenizer
        if not text:
            check_token_queries("CausalLMPolicy", task)
        elif tokenizer is not None or token_ids is not None:
            fail("tokenizer and token_ids", "null for a text task, whose tokens are its tokenizer's "
                 "(data.task.init_args.tokenizer)", {"tokenizer": tokenizer, "token_ids": token_ids})
        self.temperature = check_positive("temperature", temperature)
        self.top_p = check_number("top_p", top_p, 0, 1, low_open=True)
        self.top_k = check_int("top_k", top_k, 0)
        tokenizer = None if tokenizer is None else resolve("tokenizer", tokenizer)
        source = None if path is None else resolve("path", path)  # a directory or a hub id
        self.model = load_causal_lm(source, model_config, dtype, gradient_checkpointing, lora, attention)
        # the base an exported adapter names
        self.path = source if source is None or not os.path.isdir(source) else os.path.abspath(source)
        if getattr(task, "max_episode_tokens", None) is not None:  # a task of episodes: a whole one must fit
            check_context(self.model, task.max_episode_tokens)
        else:
            check_positions(self.model, task.longest_prompt if text else task.query_dim, task.response_len)
        self.max_new_tokens = task.response_len
        self.stop_when_done = stop_when_done
        model_vocab = self.model.get_output_embeddings().weight.shape[0]
        if text:
            self.tokenizer = task.tokenizer  # written beside the model by export; None for a token task
            if len(self.tokenizer) > model_vocab:
                fail("the model's vocabulary", f">= the tokenizer's {len(self.tokenizer)} ids "
                     "(data.task.tokenizer), one logit per token id", model_vocab)
            vocab, stops, self.pad_token = None, task.stop_token_ids, self.tokenizer.pad_token_id
        else:
            self.tokenizer = None
            vocab = task_token_map(task, model_vocab, tokenizer, token_ids)
            stops = [] if task.eos_token is None else [task.eos_token]
            self.pad_token = 0 if task.eos_token is None else task.eos_token
        # model id of each token the policy samples [V]; None: the model's whole vocabulary
        self.register_buffer("vocab", vocab, persistent=False)
        self.register_buffer("stop_ids", torch.tensor(stops, dtype=torch.long), persistent=False)  # [S]
        self._cache_arg = cache_argument(self.model)
        self._logits_to_keep = takes_logits_to_keep(self.model)
        self._share_prompts = can_share_prompts_in_training(self.model)

    def _forward(self, keep: int, **inputs: Tensor) -> Any:
        """The model's output; logits at the last ``keep`` positions only where the model can skip the rest."""
        return self.model(**inputs, **({"logits_to_keep": keep} if self._logits_to_keep else {}))

    def _prefill(self, group: int, **inputs: Tensor) -> tuple[Any, Tensor]:
        """The prompts run once per group of ``group`` equal rows, their KV cache repeated for the whole batch:
        the model's output and the logits ``[N, 1, V_model]`` that predict each row's first response token."""
        return prefill_once(functools.partial(self._forward, 1), group, self._cache_arg, **inputs)

    def _to_model(self, tokens: Tensor) -> Tensor:
        return tokens if self.vocab is None else self.vocab[tokens]

    def sampling_logits(self, logits: Tensor) -> Tensor:
        """Float32 logits ``[..., V]`` of the tempered, truncated distribution (-inf outside it) from the
        model's logits ``[..., V_model]``, restricted to the policy's tokens."""
        restricted = logits if self.vocab is None else logits[..., self.vocab]
        return sampling_logits(restricted, self.temperature, self.top_k, self.top_p)

    @torch.no_grad()
    def sample(
        self, queries: Prompts | Tensor, generator: torch.Generator | None = None, greedy: bool = False
    ) -> Rollout:
        ids, prompt_mask = prompt_tensors(queries)  # [N, P] each
        (n, p), device = ids.shape, ids.device
        # a stopped row keeps attending to its pads: its later outputs are discarded
        attention = torch.ones(n, p + self.max_new_tokens, dtype=prompt_mask.dtype, device=device)  # [N, P + T]
        attention[:, :p] = prompt_mask
        positions = position_ids(prompt_mask)  # [N, P]
        group = prompt_group(torch.cat([ids, prompt_mask], 1), self.model, self._share_prompts)
        state = {}

        def next_logits(tokens: Tensor | None) -> Tensor:
            if tokens is None:
                out, logits = self._prefill(group, input_ids=self._to_model(ids), attention_mask=prompt_mask,
                                            position_ids=positions)  # [N, 1, V_model]
                state["length"] = p
            else:
                state["length"] += 1
                out = self._forward(1, input_ids=self._to_model(tokens).unsqueeze(-1),
                                    attention_mask=attention[:, : state["length"]],
                                    position_ids=positions[:, -1:] + state["length"] - p, use_cache=True,
                                    **{self._cache_arg: state["cache"]})
                logits = out.logits
            state["cache"] = getattr(out, self._cache_arg)
            return self.sampling_logits(logits[:, -1])  # [N, V]

        with weights_cast_once(device):
            return decode(next_logits, n, self.max_new_tokens, self.stop_ids, self.pad_token, generator, greedy,
                          device, self.stop_when_done)

    def score(self, queries: Prompts | Tensor, responses: Tensor, entropy_grad: bool = False,
              attention: Tensor | None = None) -> Scores:
        prompt_ids, prompt_mask = prompt_tensors(queries)  # [N, P] each
        # the tokens each row holds: an episode's whole transcript, or a completion up to its first stop token
        mask = response_mask(responses, self.stop_ids) if attention is None else attention  # [N, T]
        p, steps = prompt_ids.shape[1], responses.shape[1]
        ids = self._to_model(torch.cat([prompt_ids, responses[:, :-1]], 1))  # [N, P + T - 1]
        attention = torch.cat([prompt_mask, mask[:, :-1].to(prompt_mask.dtype)], 1)  # [N, P + T - 1]
        positions = position_ids(attention)
        group = prompt_group(torch.cat([prompt_ids, prompt_mask], 1), self.model, self._share_prompts)
        if group == 1:
            out = self._forward(steps, input_ids=ids, attention_mask=attention, position_ids=positions, use_cache=False)
            parts = [out.logits[:, -steps:]]  # [N, T, V_model]
        else:  # each distinct prompt once (with gradients), then every response on its prompt's cache
            out, first = self._prefill(group, input_ids=ids[:, :p], attention_mask=prompt_mask,
                                       position_ids=positions[:, :p])
            parts = [first]  # [N, 1, V_model] predict y_1; the responses' own positions the rest
            if steps > 1:
                cache = getattr(out, self._cache_arg)
                rest = self._forward(steps - 1, input_ids=ids[:, p:], attention_mask=attention,
                                     position_ids=positions[:, p:], use_cache=True, **{self._cache_arg: cache})
                parts.append(rest.logits)  # [N, T - 1, V_model]
        # each part scored alone: joining the logits would copy the step's largest tensor once more
        tokens = responses.split([part.shape[1] for part in parts], 1)
        scores = [truncated_scores(self.sampling_logits(part), y, entropy_grad) for part, y in zip(parts, tokens)]
        log_probs, entropy = (torch.cat(values, 1) for values in zip(*scores))  # [N, T] each
        return Scores(log_probs.masked_fill(~mask, 0.0), entropy.masked_fill(~mask, 0.0))

    def turns(self, ids: Tensor, attention: Tensor, reuse_cache: bool = True) -> TurnDecoder:
        """A decoder of transcripts turn by turn from the left-padded prompts ``ids`` / ``attention`` ``[N, P]``
        (a task of episodes runs it; :mod:`sapo_lightning.lm.turns`)."""
        return TurnDecoder(self, ids, attention, reuse_cache)

    @property
    def has_lora(self) -> bool:
        """Whether the model carries LoRA adapters (the policy's ``lora`` was given)."""
        return is_peft_model(self.model)

    def check_export(self, lora: str = "merged") -> None:
        """Refuse, in one line, an :meth:`export` this policy cannot write (before anything is loaded or written)."""
        check_choice("lora", lora, ("merged", "adapter"))
        if self.tokenizer is None:
            raise ConfigError("data.task must be a text task (PromptTask) to export its policy: a token task has no "
                              "tokenizer to write")
        if lora == "adapter" and not self.has_lora:
            fail("lora", "merged for a policy without LoRA adapters (model.policy.init_args.lora is null)", lora)

    def export(self, directory: str, lora: str = "merged") -> None:
        """Write the model and tokenizer with ``save_pretrained``; ``generate()`` defaults to this sampling.

        A LoRA policy is written as ``lora`` says: ``merged``, the base model with the adapters
        merged into its weights (a plain ``transformers`` model; the policy itself is untouched,
        the merge happens on a copy); ``adapter``, the PEFT adapter only (``adapter_config.json``,
        ``adapter_model.safetensors``), for ``peft.PeftModel.from_pretrained(base, directory)``.
        Its ``base_model_name_or_path`` is the policy's ``path``, or for a ``model_config`` base,
        which exists nowhere else, ``directory/base``, where the base model is written too.
        Only the policy of a text task exports: a token task has no tokenizer.
        """
        self.check_export(lora)
        target = Path(directory)
        if not self.has_lora:
            self.model.save_pretrained(target)
        elif lora == "merged":
            copy.deepcopy(self.model).merge_and_unload().save_pretrained(target)
        else:
            base = self.path
            if base is None:
                base = str((target / "base").absolute())
                copy.deepcopy(self.model).unload().save_pretrained(base)
            config = self.model.peft_config["default"]
            config.base_model_name_or_path = base
            self.model.save_pretrained(target)
        self.tokenizer.save_pretrained(target)
        generation = copy.deepcopy(self.model.generation_config)
        generation.update(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                          max_new_tokens=self.max_new_tokens, eos_token_id=self.stop_ids.tolist(),
                          pad_token_id=self.pad_token)
        generation.save_pretrained(target)


def check_positions(model: torch.nn.Module, prompt_tokens: int, max_new_tokens: int) -> None:
    """Refuse a task whose longest prompt and response do not fit the model's positions (RoPE or learned)."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and prompt_tokens + max_new_tokens > limit:
        fail("max_new_tokens", f"at most {limit - prompt_tokens}: the longest prompt ({prompt_tokens} tokens) plus "
             f"max_new_tokens must fit the model's max_position_embeddings={limit}", max_new_tokens)


def check_context(model: torch.nn.Module, max_episode_tokens: int) -> None:
    """Refuse episodes longer than the model's positions."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and max_episode_tokens > limit:
        fail("max_episode_tokens", f"at most the model's max_position_embeddings={limit}", max_episode_tokens)


def prompt_tensors(queries: Prompts | Tensor) -> tuple[Tensor, Tensor]:
    """Token ids ``[N, P]`` and attention mask ``[N, P]`` of a batch: a text task's left-padded prompts,
    or a token task's queries ``[N, D]``, every position a real token."""
    if isinstance(queries, Tensor):
        return queries, torch.ones_like(queries)
    return queries.input_ids, queries.attention_mask


def position_ids(attention_mask: Tensor) -> Tensor:
    """Position of each token ``[N, S]``, counted from its row's first real token (0 on the left padding)."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def task_token_map(task: Task, model_vocab: int, tokenizer: str | None, token_ids: list[int] | None) -> Tensor | None:
    """The model id of each task token ``[V]`` from ``token_ids``, else ``tokenizer``, else the identity;
    None when task and model share one vocabulary."""
    if token_ids is None and tokenizer is not None:
        token_ids = _token_ids_from_tokenizer(task, tokenizer)
    if token_ids is None:
        if task.vocab_size > model_vocab:
            fail("task vocab_size", f"<= the model's vocabulary ({model_vocab}) when token_ids is not given",
                 task.vocab_size)
        token_ids = list(range(task.vocab_size))
    if len(token_ids) != task.vocab_size or len(set(token_ids)) != len(token_ids):
        fail("token_ids", f"{task.vocab_size} distinct ids, one per task token", token_ids)
    if any(not isinstance(i, int) or not 0 <= i < model_vocab for i in token_ids):
        fail("token_ids", f"integers in [0, {model_vocab})", token_ids)
    return None if token_ids == list(range(model_vocab)) else torch.tensor(token_ids)


def _token_ids_from_tokenizer(task: Task, path: str) -> list[int]:
    texts = getattr(task, "token_texts", None)
    if texts is None:
        fail("tokenizer", f"null for task {type(task).__name__}, which has no token texts (give token_ids)", path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    ids = []
    for token, text in enumerate(texts):
        if text is None:
            if tokenizer.eos_token_id is None:
                fail("tokenizer", f"a tokenizer with an EOS token, for task token {token} (EOS)", path)
            ids.append(tokenizer.eos_token_id)
            continue
        encoded = tokenizer.encode(text, add_special_tokens=False)
        if len(encoded) != 1:
            requirement = f"a tokenizer that spells task token {token} ({text!r}) as one token (else give token_ids)"
            fail("tokenizer", requirement, tokenizer.convert_ids_to_tokens(encoded))
        ids.append(encoded[0])
    return ids
