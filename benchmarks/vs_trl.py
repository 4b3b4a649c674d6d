"""SAPO here against TRL's ``GRPOTrainer(loss_type="sapo")``: same model, prompts, reward and settings.

    pip install -e ".[bench]"
    python benchmarks/vs_trl.py                          # Copy task: 2 pairs of frozen runs + one learning run each
    python benchmarks/vs_trl.py --task text              # the text demo's prompts, char_match reward
    python benchmarks/vs_trl.py --steps 60 --pairs 3 --learn-steps 300

What is the same on both sides:

- the model: one tiny random Llama, built once from a config with a fixed seed, saved with
  ``save_pretrained`` and loaded from that directory by both tools (float32, no dropout);
- the tokenizer: for ``copy`` a word-level tokenizer written here whose ids are the Copy task's ids
  (``"a b c d ="`` is ``[3, 4, 5, 6, 1]``, EOS is 0), for ``text`` the shipped ASCII tokenizer;
- the prompts, in the same order: TRL's dataset is the sequence of batches our data module draws
  (``task.train_batch(i, ...)`` for i = 0, 1, ...), and TRL reads it unshuffled;
- the reward: Copy's partial credit (computed by ``Copy.reward`` from TRL's completion ids), or
  ``char_match`` on the decoded completions;
- 16 prompts x 8 completions per optimizer step, one update per rollout (on-policy), Adam (TRL's
  AdamW with weight decay 0), constant learning rate, gradient norm clipped at 1, max new tokens,
  sampling temperature (the log-probs are the tempered ones on both sides), SAPO's tau_pos 1.0 and
  tau_neg 1.05, sequence-mean-token-mean aggregation; no reference model (beta 0), no vLLM, no
  validation, no checkpoints, one torch thread; each side logs every step (ours to TensorBoard,
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
        "config": "configs/hf_tiny.yaml", "max_new_tokens": 8, "temperature": 2.0, "lr": 1e-3,
        "model": {  # configs/hf_tiny.yaml's model_config
            "vocab_size": 11, "hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2,
            "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 128,
            "tie_word_embeddings": True, "attention_dropout": 0.0, "bos_token_id": None, "eos_token_id": 0,
            "pad_token_id": None,
        },
    },
    "text": {
        "config": "configs/text_tiny.yaml", "max_new_tokens": 1, "temperature": 1.0, "lr": 1e-3,
        "model": {  # configs/text_tiny.yaml's model_config
            "vocab_size": 101, "hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2,
            "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 64,
            "tie_word_embeddings": True, "attention_dropout": 0.0, "pad_token_id": 0, "eos_token_id": 1,
            "bos_token_id": 2,
        },
    },
}
COMMON = {"batch": 16, "group": 8, "tau_pos": 1.0, "tau_neg": 1.05, "max_grad_norm": 1.0, "seed": 0}
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


def prompt_rows(task: str, steps: int) -> list[dict]:
    """TRL's dataset: the prompts of our batches 0 .. steps-1, in our order (16 rows per step)."""
    source = copy_task() if task == "copy" else text_task()
    rows = []
    for index in range(steps):
        batch = source.train_batch(index, COMMON["batch"], COMMON["seed"], 0, 1)
        if task == "copy":
            rows += [{"prompt": copy_prompt_text(query)} for query in batch]
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


# -- timing -----------------------------------------------------------------------------------
class PhaseClock:
    """Per-step timestamps and, per step, the seconds spent in each wrapped method."""

    def __init__(self) -> None:
        self.step_starts: list[float] = []  # perf_counter at the start of each optimizer step
        self.first_step_wall: float | None = None  # time.time() of the first step's start
        self.phases: list[dict[str, float]] = []  # per step: phase name -> seconds
        self.first_call: list[dict[str, float]] = []  # per step: phase name -> perf_counter of its first call
        self.rewards: list[float] = []  # mean reward of each step's rollout

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
                "first_call": self.first_call, "rewards": self.rewards,
                "startup_s": (self.first_step_wall or time.time()) - start_wall, "peak_rss_mib": usage / 1024}


# -- our side ---------------------------------------------------------------------------------
def run_ours(task: str, model_dir: Path, steps: int, lr: float, out: Path, start_wall: float) -> None:
    """``sapo-lightning fit`` through the public CLI, on the task's config with the shared model."""
    import torch

    from sapo_lightning.cli import main

    torch.set_num_threads(1)
    setting = SETTINGS[task]
    probe = {"class_path": "vs_trl.OursProbe", "init_args": {"out": str(out), "start_wall": start_wall}}
    policy = [f"--model.policy.init_args.path={model_dir}", "--model.policy.init_args.model_config=null",
              f"--model.policy.init_args.temperature={setting['temperature']}"]
    if task == "copy":  # the saved tokenizer maps the task's tokens by their text (the identity, by design)
        policy.append(f"--model.policy.init_args.tokenizer={model_dir}")
    with tempfile.TemporaryDirectory() as root:
        main(["fit", "--config", str(ROOT / setting["config"]), *policy,
              f"--seed_everything={COMMON['seed']}", f"--data.seed={COMMON['seed']}",
              f"--data.batch_size={COMMON['batch']}", f"--model.group_size={COMMON['group']}",
              "--model.updates_per_rollout=1", f"--model.max_grad_norm={COMMON['max_grad_norm']}",
              f"--model.objective.init_args.tau_pos={COMMON['tau_pos']}",
              f"--model.objective.init_args.tau_neg={COMMON['tau_neg']}",
              f"--model.optimizer.init_args.lr={lr}", "--sync.every_n_steps=1",
              f"--trainer.max_steps={steps}", "--trainer.limit_val_batches=0", "--trainer.log_every_n_steps=1",
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
    (π_old ← π_θ).
    """

    def __init__(self, out: str, start_wall: float) -> None:
        self.out, self.start_wall, self.clock = out, start_wall, PhaseClock()

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

        def recorded(*args, **kwargs):
            result = rewards(*args, **kwargs)
            clock.rewards.append(result.total.mean().item())
            return result

        pl_module.task.rewards = recorded
        clock.wrap(pl_module.task, "rewards", "reward")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.clock.step_begins()

    def on_train_end(self, trainer, pl_module) -> None:
        self.clock.step_starts.append(time.perf_counter())  # the end of the last step
        Path(self.out).write_text(json.dumps(self.clock.report(self.start_wall)))


# -- TRL's side -------------------------------------------------------------------------------
def run_trl(task: str, model_dir: Path, steps: int, lr: float, out: Path, start_wall: float) -> None:
    """``GRPOTrainer(loss_type="sapo")`` on the same model directory, prompts, reward and settings."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(1)
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
        num_generations=COMMON["group"], per_device_train_batch_size=COMMON["batch"] * COMMON["group"],
        gradient_accumulation_steps=1, steps_per_generation=1, num_iterations=1,  # one on-policy update per rollout
        max_completion_length=setting["max_new_tokens"], temperature=setting["temperature"], top_p=1.0, top_k=0,
        learning_rate=lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, optim="adamw_torch",
        max_grad_norm=COMMON["max_grad_norm"], scale_rewards="group", max_steps=steps, shuffle_dataset=False,
        seed=COMMON["seed"], use_vllm=False, bf16=False, fp16=False, use_cpu=True,
        **no_checkpointing(GRPOConfig),
        model_init_kwargs={"dtype": torch.float32}, logging_steps=1, report_to="none", save_strategy="no",
        disable_tqdm=True, dataloader_num_workers=0, log_completions=False,
    )
    rows = json.loads((model_dir.parent / "rows.json").read_text())[: steps * COMMON["batch"]]  # written by the parent
    reward = copy_reward_for_trl(clock.rewards) if task == "copy" else char_match_for_trl(clock.rewards)
    trainer = TimedGRPOTrainer(model=str(model_dir), reward_funcs=reward, args=config,
                               train_dataset=Dataset.from_list(rows),
                               processing_class=AutoTokenizer.from_pretrained(model_dir), callbacks=[Steps()])
    trainer.remove_callback(PrinterCallback)  # it prints every log to stdout; the log history is kept
    assert not trainer.model.is_gradient_checkpointing and trainer.model.dtype == torch.float32
    trainer.train()
    out.write_text(json.dumps(clock.report(start_wall)))


def no_checkpointing(config_class) -> dict[str, bool]:
    """Activation checkpointing off (TRL defaults to on; ours is off); transformers 5.2x renamed the option."""
    names = {field.name for field in dataclasses.fields(config_class)}
    return {name: False for name in ("activation_checkpointing", "gradient_checkpointing") if name in names}


# -- the parent: runs, summary, table -------------------------------------------------------
def launch(side: str, task: str, model_dir: Path, steps: int, lr: float, out: Path) -> dict[str, Any]:
    """One run in a fresh process; returns its report."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "benchmarks"), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, str(Path(__file__).resolve()), "--child", side, "--task", task, "--model-dir",
               str(model_dir), "--steps", str(steps), "--lr", repr(lr), "--out", str(out),
               "--start-wall", repr(time.time())]
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
    return {"s_per_step": seconds, "startup_s": report["startup_s"], "peak_rss_mib": report["peak_rss_mib"],
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


def print_table(frozen: dict[str, list[dict]], learning: dict[str, dict], args, load: tuple) -> None:
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
                       args.learn_steps}):
        cells = []
        for side in ("ours", "trl"):
            rewards = learning[side]["rewards"][max(0, end - window) : end]
            cells.append(f"{sum(rewards) / len(rewards):.3f}")
        print(f"| learning run (lr {SETTINGS[args.task]['lr']}): mean reward, steps {max(1, end - window + 1)}-{end} "
              f"| {cells[0]} | {cells[1]} | |")
    learn_s = [summarise(learning[side], args.skip)["s_per_step"] for side in ("ours", "trl")]
    print(f"| learning run: s / step (one run each, not alternated; completions shorten as it learns) "
          f"| {learn_s[0]:.4f} | {learn_s[1]:.4f} | {learn_s[0] / learn_s[1]:.2f}x |")


def versions() -> str:
    from importlib.metadata import version

    names = ["torch", "transformers", "trl", "accelerate", "datasets", "lightning"]
    return ", ".join(f"{name} {version(name)}" for name in names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=list(SETTINGS), default="copy")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps of each frozen (timed) run")
    parser.add_argument("--pairs", type=int, default=2, help="frozen runs per side, alternating ours, TRL, ...")
    parser.add_argument("--skip", type=int, default=5, help="first steps left out of the steady state")
    parser.add_argument("--learn-steps", type=int, default=None,
                        help="steps of the learning run (default: 200 for copy, 300 for text; 0: none)")
    # the child's arguments (one run in this process)
    parser.add_argument("--child", choices=["ours", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--lr", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--start-wall", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run = run_ours if args.child == "ours" else run_trl
        run(args.task, args.model_dir, args.steps, args.lr, args.out, args.start_wall)
        return
    if args.learn_steps is None:
        args.learn_steps = 200 if args.task == "copy" else 300
    if args.steps <= args.skip + 1:
        parser.error(f"--steps must exceed --skip + 1 = {args.skip + 1}")
    load = os.getloadavg()
    print(f"{platform.machine()}, {os.cpu_count()} CPUs, {versions()}; one torch thread per process", flush=True)
    with tempfile.TemporaryDirectory() as directory:
        directory = Path(directory)
        model_dir = write_assets(args.task, directory)
        # TRL's prompts, made here so that building our task is not part of TRL's start-up
        rows = prompt_rows(args.task, max(args.steps, args.learn_steps))
        (directory / "rows.json").write_text(json.dumps(rows))
        frozen: dict[str, list[dict]] = {"ours": [], "trl": []}
        for pair in range(args.pairs):
            for side in ("ours", "trl"):  # A B A B
                report = launch(side, args.task, model_dir, args.steps, FROZEN_LR, directory / f"{side}{pair}.json")
                frozen[side].append(summarise(report, args.skip))
                print(f"frozen run {pair + 1}/{args.pairs}, {side}: {frozen[side][-1]['s_per_step']:.4f} s/step",
                      flush=True)
        learning = {}
        if args.learn_steps:
            for side in ("ours", "trl"):
                learning[side] = launch(side, args.task, model_dir, args.learn_steps, SETTINGS[args.task]["lr"],
                                        directory / f"{side}_learn.json")
                print(f"learning run, {side}: done", flush=True)
        print_table(frozen, learning, args, load)


if __name__ == "__main__":
    main()
