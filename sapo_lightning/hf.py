"""Any Hugging Face ``transformers`` causal LM as a :class:`~sapo_lightning.policies.Policy`.

Needs the ``[hf]`` extra (``pip install "sapo-lightning[hf]"``); the rest of the package never
imports this module.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable
from typing import Any

import torch
from huggingface_hub.errors import StrictDataclassError  # a dependency of transformers
from torch import Tensor
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from sapo_lightning.checks import ConfigError, check_choice, check_positive, fail
from sapo_lightning.lora import LoRA, apply_lora, base_model
from sapo_lightning.policies import Policy, Rollout, Scores, check_token_queries, decode, token_scores
from sapo_lightning.tasks import Task

DTYPES = ("float32", "bfloat16", "float16")


class HFCausalLMPolicy(Policy):
    """A ``transformers`` causal LM: a saved model (``path``) or a new random one (``model_config``).

    The task's token t is the model's token ``token_ids[t]``; the policy is the model's
    next-token distribution restricted to those tokens (softmax over their logits, divided
    by ``temperature``), so every sampled token is one the task can reward. Queries are the
    prompt; decoding runs token by token with the model's own KV cache and stops at the
    task's EOS or after ``task.response_len`` tokens. ``score`` is one forward pass over
    prompt ⧺ response; when the rows are groups of G equal queries (the G responses of each),
    sampling and ``score`` run each query once and repeat its KV cache for the group
    (:func:`shared_prompts`). The token map comes from, in this order:

    - ``token_ids``: the model id of each task token, given directly;
    - ``tokenizer``: each task token's text (``task.token_texts``) must encode to exactly one
      token of this tokenizer; the task's EOS becomes the tokenizer's EOS;
    - neither: the identity (task token t is model token t).

    The model comes from exactly one of:

    - ``path``: a local directory written by ``save_pretrained``, loaded with
      ``AutoModelForCausalLM.from_pretrained``. Hub ids are not accepted: download the model
      first (``hf download ID --local-dir DIR``), so a run never depends on the network;
    - ``model_config``: a ``transformers`` config as a mapping, ``model_type`` (``llama``,
      ``gpt2``, ...) and that config's fields, built with ``AutoConfig.for_model`` and
      ``AutoModelForCausalLM.from_config``: randomly initialised from the global torch seed
      (the run's ``seed_everything``), no file needed.

    With ``lora``, the model is wrapped by PEFT and only the adapters train: π_old and the
    reference are copies of the adapters on the one shared base model, and checkpoints hold
    the adapters, not the base weights (``pip install "sapo-lightning[peft]"``).

    Updates run the model in train mode: a config that sets dropout (GPT-2's default is 0.1)
    scores with dropout, so π_θ ≠ π_old even at the first update; set its dropout to 0 for
    exact on-policy ratios (Llama-style models have none).

    Args:
        task: Token-query task; sets the vocabulary, max_new_tokens and EOS.
        path: Local directory of a model saved with ``save_pretrained``.
        model_config: ``transformers`` config of a new random model: ``model_type`` and its fields.
        tokenizer: Local directory of a tokenizer to map task tokens by their text.
        token_ids: Model token id of each task token, ``task.vocab_size`` distinct ids.
        temperature: Sampling temperature (> 0); log-probs are those of the tempered softmax.
        dtype: Parameter dtype: float32, bfloat16 or float16.
        stop_when_done: End decoding once every response has ended. Set false under FSDP,
            where every rank must run the same number of forward passes.
        gradient_checkpointing: Recompute activations in backward to save memory.
        lora: Train LoRA adapters (rank, alpha, dropout, target modules) instead of every
            weight; null trains the whole model.
    """

    def __init__(
        self,
        task: Task,
        path: str | None = None,
        model_config: dict[str, Any] | None = None,
        tokenizer: str | None = None,
        token_ids: list[int] | None = None,
        temperature: float = 1.0,
        dtype: str = "float32",
        stop_when_done: bool = True,
        gradient_checkpointing: bool = False,
        lora: LoRA | None = None,
    ) -> None:
        super().__init__()
        check_token_queries("HFCausalLMPolicy", task)
        self.temperature = check_positive("temperature", temperature)
        if tokenizer is not None and not os.path.isdir(tokenizer):
            fail("tokenizer", "an existing tokenizer directory (written by save_pretrained)", tokenizer)
        self.query_len = task.query_dim
        self.max_new_tokens = task.response_len
        self.eos_token = task.eos_token
        self.pad_token = 0 if task.eos_token is None else task.eos_token  # decode's fill after EOS
        self.stop_when_done = stop_when_done
        self.model = load_causal_lm(path, model_config, dtype, gradient_checkpointing, lora)
        model_vocab = self.model.get_output_embeddings().weight.shape[0]
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
        identity = token_ids == list(range(model_vocab))
        # model id of each task token [V]; None when the two vocabularies are the same
        self.register_buffer("vocab", None if identity else torch.tensor(token_ids), persistent=False)
        self._cache_arg = cache_argument(self.model)
        self._logits_to_keep = "logits_to_keep" in inspect.signature(base_model(self.model).forward).parameters
        self._share_prompts = can_share_prompts_in_training(self.model)

    def _forward(self, keep: int) -> Callable[..., Any]:
        """The model's forward, asking for the logits of the last ``keep`` positions only where it can skip the rest."""
        return functools.partial(self.model, **({"logits_to_keep": keep} if self._logits_to_keep else {}))

    def _to_model(self, tokens: Tensor) -> Tensor:
        return tokens if self.vocab is None else self.vocab[tokens]

    def _restrict(self, logits: Tensor) -> Tensor:  # [..., V_model] -> [..., V]
        return logits if self.vocab is None else logits[..., self.vocab]

    def sample(self, queries: Tensor, generator: torch.Generator | None = None, greedy: bool = False) -> Rollout:
        state = {}
        group = prompt_group(queries, self.model, self._share_prompts)

        def next_logits(tokens: Tensor | None) -> Tensor:
            if tokens is None:  # each distinct prompt once, its cache repeated for its group
                out, logits = prefill_once(self._forward(1), group, self._cache_arg, input_ids=self._to_model(queries))
            else:
                new = self._to_model(tokens).unsqueeze(-1)  # [N, 1]
                out = self.model(new, use_cache=True, **{self._cache_arg: state["cache"]})
                logits = out.logits
            state["cache"] = getattr(out, self._cache_arg)
            return self._restrict(logits[:, -1])  # [N, V]

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
        steps = responses.shape[1]
        group = prompt_group(queries, self.model, self._share_prompts)
        if group == 1:
            tokens = self._to_model(torch.cat([queries, responses[:, :-1]], 1))  # [N, D + T - 1]
            logits = self._forward(steps)(input_ids=tokens, use_cache=False).logits[:, -steps:]  # [N, T, V_model]
        else:  # each distinct prompt once (with gradients), then every response on its prompt's cache
            out, logits = prefill_once(self._forward(1), group, self._cache_arg, input_ids=self._to_model(queries))
            if steps > 1:  # logits [N, 1, V_model] predict y_1; the responses' own positions the rest
                cache = getattr(out, self._cache_arg)
                rest = self.model(self._to_model(responses[:, :-1]), use_cache=True, **{self._cache_arg: cache})
                logits = torch.cat([logits, rest.logits], 1)  # [N, T, V_model]
        return token_scores(self._restrict(logits) / self.temperature, responses)


def load_causal_lm(
    path: str | None,
    model_config: dict[str, Any] | None,
    dtype: str,
    gradient_checkpointing: bool,
    lora: LoRA | dict[str, Any] | None = None,
) -> PreTrainedModel:
    """A causal LM from a local ``save_pretrained`` directory or, randomly initialised, from a config
    mapping; with ``lora``, wrapped by PEFT with only the adapters trainable."""
    if (path is None) == (model_config is None):
        raise ConfigError(
            f"exactly one of path and model_config must be given; got path={path!r}, model_config={model_config!r}"
        )
    check_choice("dtype", dtype, DTYPES)
    if path is not None:
        if not os.path.isdir(path):
            fail("path", "an existing model directory (written by save_pretrained; download a hub model first)", path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    else:
        model = AutoModelForCausalLM.from_config(_model_config(model_config), dtype=getattr(torch, dtype))
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if lora is not None:
        if gradient_checkpointing:  # the frozen embeddings' output must carry a gradient into the checkpoints
            model.enable_input_require_grads()
        model = apply_lora(model, lora)
    return model


def shared_prompts(prompts: Tensor) -> int:
    """G when ``prompts`` ``[N, ...]`` are groups of G equal consecutive rows (the G responses of each
    query), so that a policy can run each distinct prompt once and repeat its KV cache; else 1."""
    n = prompts.shape[0]
    if n < 2:
        return 1
    rows = prompts.reshape(n, -1)
    group = int((rows[1:] == rows[:-1]).all(-1).long().cumprod(0).sum()) + 1  # length of the first run
    if group == 1 or n % group or not torch.equal(rows, rows[::group].repeat_interleave(group, 0)):
        return 1
    return group


def prompt_group(rows: Tensor, model: torch.nn.Module, share_in_training: bool) -> int:
    """:func:`shared_prompts` of ``rows`` where the model may share them now (always in eval mode), else 1."""
    return shared_prompts(rows) if share_in_training or not model.training else 1


def prefill_once(forward: Callable[..., Any], group: int, cache_arg: str, **inputs: Tensor) -> tuple[Any, Tensor]:
    """``forward(**inputs, use_cache=True)`` on every ``group``-th row only (one per group of equal prompts),
    its KV cache repeated ``group`` times in place for the whole batch; the output and its last-position
    logits ``[N, 1, V]`` for every row."""
    out = forward(**{name: value[::group] for name, value in inputs.items()}, use_cache=True)
    if group > 1:
        getattr(out, cache_arg).batch_repeat_interleave(group)
    return out, out.logits[:, -1:].repeat_interleave(group, 0)


def can_share_prompts_in_training(model: torch.nn.Module) -> bool:
    """False under gradient checkpointing (the model keeps no cache in training) and with dropout (each
    response must draw its own dropout mask on the prompt): in train mode, such a model scores every row whole."""
    inner = base_model(model)
    checkpointing = getattr(inner, "is_activation_checkpointing", None)  # transformers 5; 4.x's name below
    if checkpointing is None:
        checkpointing = getattr(inner, "is_gradient_checkpointing", False)
    dropout = any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())
    dropout |= getattr(getattr(inner, "config", None), "attention_dropout", 0) > 0  # functional, in attention
    return not checkpointing and not dropout


def cache_argument(model: PreTrainedModel) -> str:
    """Name of the KV-cache argument of ``model.forward`` and attribute of its output."""
    forward_args = inspect.signature(base_model(model).forward).parameters  # a PEFT wrapper takes **kwargs
    return "cache" if "cache" in forward_args else "past_key_values"  # renamed in transformers 5


def _model_config(spec: Any) -> Any:
    """The ``transformers`` config a ``model_config`` mapping describes; unknown fields are refused."""
    if not isinstance(spec, dict) or not isinstance(spec.get("model_type"), str):
        fail("model_config", "a mapping with a model_type (llama, gpt2, ...) and that config's fields", spec)
    fields = {key: value for key, value in spec.items() if key != "model_type"}
    try:
        default = AutoConfig.for_model(spec["model_type"])
    except ValueError:
        fail("model_config.model_type", "a transformers model type (llama, gpt2, ...)", spec["model_type"])
    # a config stores unknown keys silently: a misspelt field would leave its default in place
    known = set(default.to_dict()) | set(default.attribute_map) | {"attn_implementation"}
    unknown = sorted(set(fields) - known)
    if unknown:
        fail("model_config fields", f"fields of a {spec['model_type']} config", unknown)
    try:
        return AutoConfig.for_model(spec["model_type"], **fields)
    except (ValueError, TypeError, StrictDataclassError) as err:  # the config class validates its fields
        fail("model_config", f"a valid {spec['model_type']} config ({' '.join(str(err).split())})", fields)


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
