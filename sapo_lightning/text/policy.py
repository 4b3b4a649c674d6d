"""A causal LM over its whole vocabulary as the policy of a :class:`~sapo_lightning.text.task.PromptTask`."""

from __future__ import annotations

import copy
import functools
import inspect
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sapo_lightning.checks import check_choice, check_int, check_number, check_positive, fail
from sapo_lightning.hf import cache_argument, can_share_prompts_in_training, load_causal_lm, prefill_once, prompt_group
from sapo_lightning.lora import LoRA, base_model, is_peft_model
from sapo_lightning.policies import Policy, Rollout, Scores, sample_from_logits
from sapo_lightning.tasks import Task
from sapo_lightning.text.prompts import Prompts
from sapo_lightning.text.sampling import response_mask, sampling_logits, truncated_scores


class CausalLMPolicy(Policy):
    """A ``transformers`` causal LM sampling completions of text prompts over its whole vocabulary.

    The tokenizer is the task's; the model, a local ``save_pretrained`` directory (``path``) or a
    new random one (``model_config``, as for :class:`~sapo_lightning.hf.HFCausalLMPolicy`), must
    have a logit for each of its ids. ``sample`` prefills the left-padded prompts, with position
    ids counted from each prompt's first real token, then decodes token by token on the model's
    KV cache, up to ``task.response_len`` new tokens. A completion ends at its first stop token
    (the tokenizer's EOS or one of ``task.stop_token_ids``, kept and unmasked); later positions
    hold the pad id and are masked out, and a completion that never stopped is ``truncated``.

    Tokens are drawn from the sampling distribution: softmax(logits / ``temperature``), then
    restricted to the ``top_k`` most likely tokens, then to the nucleus of mass ``top_p``, and
    renormalised. The log-probs stored for π_old are under that distribution, and ``score``
    computes π_θ's under the same construction (the truncation recomputed from π_θ's own
    logits), in one forward pass over prompt ⧺ completion. The G completions of a prompt share
    it: sampling and ``score`` run each distinct prompt once and repeat its KV cache for the group
    (:func:`~sapo_lightning.hf.shared_prompts`).

    The ratio r = π_θ(y)/π_old(y) is therefore between the two truncated distributions. On
    policy it is 1 for every sampled token, up to float error between the cached decode and
    the full forward (which could, in principle, move a token sitting exactly on the top-k/top-p
    boundary out of ``score``'s set). Off policy, a token outside π_θ's current top-k/top-p set
    has π_θ(y) = 0: its log-ratio is clamped at −20 by the objectives (r ≈ 2e-9) and it gets no
    gradient through log π_θ. With ``top_p=1`` and ``top_k=0`` it is the plain ratio of the
    tempered softmaxes.

    With ``lora``, the model is wrapped by PEFT and only the adapters train: π_old and the
    reference are copies of the adapters on the one shared base model, and checkpoints hold
    the adapters, not the base weights (``pip install "sapo-lightning[peft]"``).

    Updates run the model in train mode: a config with dropout (or LoRA dropout) makes
    π_θ ≠ π_old even on policy; set it to 0 for exact on-policy ratios.

    Args:
        task: The text task (a PromptTask): its tokenizer, max_new_tokens and stop token ids.
        path: Local directory of a model saved with ``save_pretrained``.
        model_config: ``transformers`` config of a new random model: ``model_type`` and its fields.
        temperature: Sampling temperature (> 0); log-probs are those of the tempered distribution.
        top_p: Nucleus mass in (0, 1]; 1 keeps every token.
        top_k: Keep only the k most likely tokens; 0 keeps every token.
        dtype: Parameter dtype: float32, bfloat16 or float16 (the softmax is float32 always).
        gradient_checkpointing: Recompute activations in backward to save memory.
        stop_when_done: End decoding once every completion has stopped. Set false under FSDP,
            where every rank must run the same number of forward passes.
        lora: Train LoRA adapters (rank, alpha, dropout, target modules) instead of every
            weight; null trains the whole model.
    """

    def __init__(
        self,
        task: Task,
        path: str | None = None,
        model_config: dict[str, Any] | None = None,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        dtype: str = "float32",
        gradient_checkpointing: bool = False,
        stop_when_done: bool = True,
        lora: LoRA | None = None,
    ) -> None:
        super().__init__()
        if getattr(task, "tokenizer", None) is None:
            fail("model.policy", f"a policy for token queries with task {type(task).__name__} "
                 "(CausalLMPolicy reads the text prompts of a PromptTask)", "CausalLMPolicy")
        self.temperature = check_positive("temperature", temperature)
        self.top_p = check_number("top_p", top_p, 0, 1, low_open=True)
        self.top_k = check_int("top_k", top_k, 0)
        self.model = load_causal_lm(path, model_config, dtype, gradient_checkpointing, lora)
        self.path = None if path is None else os.path.abspath(path)  # the base an exported adapter names
        self.tokenizer = task.tokenizer
        model_vocab = self.model.get_output_embeddings().weight.shape[0]
        if len(self.tokenizer) > model_vocab:
            fail("the model's vocabulary", f">= the tokenizer's {len(self.tokenizer)} ids (data.task.tokenizer), "
                 "one logit per token id", model_vocab)
        self.max_new_tokens = task.response_len
        self.pad_id = self.pad_token = self.tokenizer.pad_token_id
        self.stop_when_done = stop_when_done
        self.register_buffer("stop_ids", torch.tensor(task.stop_token_ids), persistent=False)  # [S]
        self._cache_arg = cache_argument(self.model)
        self._logits_to_keep = "logits_to_keep" in inspect.signature(base_model(self.model).forward).parameters
        self._share_prompts = can_share_prompts_in_training(self.model)

    def _logits(self, keep: int, **inputs: Tensor) -> Any:
        """The model's output; logits at the last ``keep`` positions only where the model can skip the rest."""
        extra = {"logits_to_keep": keep} if self._logits_to_keep else {}
        return self.model(**inputs, **extra)

    def sampling_logits(self, logits: Tensor) -> Tensor:
        """Float32 logits ``[..., V]`` of the tempered, truncated distribution (-inf outside it)."""
        return sampling_logits(logits, self.temperature, self.top_k, self.top_p)

    @torch.no_grad()
    def sample(self, queries: Prompts, generator: torch.Generator | None = None, greedy: bool = False) -> Rollout:
        ids, prompt_mask = queries.input_ids, queries.attention_mask  # [N, P] each
        (n, p), steps, device = ids.shape, self.max_new_tokens, ids.device
        # a stopped row keeps attending to its pads: its later outputs are discarded
        attention = torch.ones(n, p + steps, dtype=prompt_mask.dtype, device=device)  # [N, P + T]
        attention[:, :p] = prompt_mask
        positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)  # [N, P]
        next_position = positions[:, -1:] + 1  # [N, 1]
        responses = torch.full((n, steps), self.pad_id, dtype=torch.long, device=device)  # [N, T]
        log_probs = torch.zeros(n, steps, device=device)  # [N, T]
        mask = torch.zeros(n, steps, dtype=torch.bool, device=device)  # [N, T]
        done = torch.zeros(n, dtype=torch.bool, device=device)  # [N]
        group = prompt_group(torch.cat([ids, prompt_mask], 1), self.model, self._share_prompts)
        # each distinct prompt once, its cache repeated for its group
        out, prompt_logits = prefill_once(functools.partial(self._logits, 1), group, self._cache_arg, input_ids=ids,
                                          attention_mask=prompt_mask, position_ids=positions)  # [N, 1, V]
        for t in range(steps):
            logits = self.sampling_logits((prompt_logits if t == 0 else out.logits)[:, -1])  # [N, V]
            tokens, token_log_probs = sample_from_logits(logits, generator, greedy)  # [N] each
            live = ~done
            responses[:, t] = tokens.masked_fill(done, self.pad_id)
            log_probs[:, t] = token_log_probs.masked_fill(done, 0.0)
            mask[:, t] = live
            done |= torch.isin(tokens, self.stop_ids)
            if t + 1 == steps or (self.stop_when_done and bool(done.all())):
                break
            cache = {self._cache_arg: getattr(out, self._cache_arg)}
            out = self._logits(1, input_ids=responses[:, t : t + 1], attention_mask=attention[:, : p + t + 1],
                               position_ids=next_position + t, use_cache=True, **cache)
        return Rollout(responses, log_probs, mask, ~done)

    def score(self, queries: Prompts, responses: Tensor) -> Scores:
        mask = response_mask(responses, self.stop_ids)  # [N, T]
        prompt_mask, steps = queries.attention_mask, responses.shape[1]
        ids = torch.cat([queries.input_ids, responses[:, :-1]], 1)  # [N, P + T - 1]
        attention = torch.cat([prompt_mask, mask[:, :-1].to(prompt_mask.dtype)], 1)  # [N, P + T - 1]
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        group = prompt_group(torch.cat([queries.input_ids, prompt_mask], 1), self.model, self._share_prompts)
        if group == 1:
            out = self._logits(steps, input_ids=ids, attention_mask=attention, position_ids=positions, use_cache=False)
            logits = out.logits[:, -steps:]  # [N, T, V]
        else:  # each distinct prompt once (with gradients), then every completion on its prompt's cache
            p = prompt_mask.shape[1]
            out, logits = prefill_once(functools.partial(self._logits, 1), group, self._cache_arg,
                                       input_ids=ids[:, :p], attention_mask=prompt_mask, position_ids=positions[:, :p])
            if steps > 1:  # logits [N, 1, V] predict y_1; the completions' own positions the rest
                cache = getattr(out, self._cache_arg)
                rest = self._logits(steps - 1, input_ids=ids[:, p:], attention_mask=attention,
                                    position_ids=positions[:, p:], use_cache=True, **{self._cache_arg: cache})
                logits = torch.cat([logits, rest.logits], 1)  # [N, T, V]
        scores = truncated_scores(self.sampling_logits(logits), responses)  # [N, T] each
        return Scores(scores.log_probs.masked_fill(~mask, 0.0), scores.entropy.masked_fill(~mask, 0.0))

    @property
    def has_lora(self) -> bool:
        """Whether the model carries LoRA adapters (the policy's ``lora`` was given)."""
        return is_peft_model(self.model)

    def export(self, directory: str, lora: str = "merged") -> None:
        """Write the model and tokenizer with ``save_pretrained``; ``generate()`` defaults to this sampling.

        A LoRA policy is written as ``lora`` says: ``merged``, the base model with the adapters
        merged into its weights (a plain ``transformers`` model; the policy itself is untouched,
        the merge happens on a copy); ``adapter``, the PEFT adapter only (``adapter_config.json``,
        ``adapter_model.safetensors``), for ``peft.PeftModel.from_pretrained(base, directory)``.
        Its ``base_model_name_or_path`` is the policy's ``path``, or for a ``model_config`` base,
        which exists nowhere else, ``directory/base``, where the base model is written too.
        """
        check_choice("lora", lora, ("merged", "adapter"))
        if lora == "adapter" and not self.has_lora:
            fail("lora", "merged for a policy without LoRA adapters (model.policy.init_args.lora is null)", lora)
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
                          pad_token_id=self.pad_id)
        generation.save_pretrained(target)
