"""The sampler and the update, on a tiny Hugging Face Llama: their mismatch measured (zero in float32, not in bf16),
π_old recomputed by the update's own path (the first ratio exactly 1), rollout correction, and bf16 sampling."""

import csv

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger

from sapo_lightning import SAPO, ConfigError, QueryDataModule, RLModule
from sapo_lightning.callbacks import OldPolicySync
from sapo_lightning.lm.policy import CausalLMPolicy
from sapo_lightning.objectives import ObjectiveOutput
from sapo_lightning.tasks import Copy

pytest.importorskip("transformers")

# configs/hf_tiny.yaml's Llama; queries of 8 symbols: prompt and response are long enough that the fused attention
# runs its decode step and its full forward differently (with 4 symbols they agree bit for bit, in bf16 too)
LLAMA = {"model_type": "llama", "vocab_size": 11, "hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2,
         "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 64, "tie_word_embeddings": True,
         "attention_dropout": 0.0, "bos_token_id": None, "eos_token_id": 0, "pad_token_id": None}
TASK = Copy(length=8, num_symbols=8, max_new_tokens=16)


class Recording(SAPO):
    """SAPO that keeps the diagnostics and the shapes of each call (one per micro-batch)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[dict] = []

    def __call__(self, log_probs, old_log_probs, advantages, mask) -> ObjectiveOutput:
        out = super().__call__(log_probs, old_log_probs, advantages, mask)
        self.calls.append({name: value.item() for name, value in out.metrics.items()}
                          | {"advantages": advantages.shape, "tokens": int(mask.sum())})
        return out


def fit(tmp_path=None, *, precision="32-true", dtype="float32", steps=2, objective=None, attention=None,
        config=LLAMA, **kwargs) -> RLModule:
    torch.manual_seed(0)
    module = RLModule(lambda task: CausalLMPolicy(task, model_config=config, temperature=2.0, dtype=dtype,
                                                  attention=attention),
                      objective or SAPO(), TASK, group_size=4, **kwargs)
    logger = CSVLogger(tmp_path, name="", version="") if tmp_path else False
    Trainer(max_steps=steps, precision=precision, accelerator="cpu", logger=logger, log_every_n_steps=1,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
            callbacks=[OldPolicySync(1)]).fit(module, QueryDataModule(TASK, batch_size=4, seed=0))
    return module


def logged(log_dir) -> dict[str, list[float]]:
    rows = list(csv.DictReader((log_dir / "metrics.csv").open()))
    return {name: [float(r[name]) for r in rows if r[name]] for name in rows[0] if name.startswith("train/")}


@pytest.mark.parametrize(("precision", "dtype", "exact"), [
    ("32-true", "float32", True), ("bf16-mixed", "float32", False), ("32-true", "bfloat16", False)])
def test_the_mismatch_reads_zero_in_float32_and_more_in_bf16(tmp_path, precision, dtype, exact):
    fit(tmp_path, precision=precision, dtype=dtype)
    values = logged(tmp_path)
    kl, outside = values["train/mismatch_kl"], values["train/mismatch_ratio_outside"]
    assert len(kl) == len(outside) == 2  # each step is its rollout's first
    if exact:  # the decode and the full forward differ by float32 rounding only (|Δ log p| ~ 1e-7)
        assert max(kl) < 1e-10 and max(outside) == 0
    else:
        assert min(kl) > 1e-8


@pytest.mark.parametrize(("attention", "kv_heads"), [("eager", 2), ("grouped", 1)])
def test_eager_attention_leaves_no_mismatch_in_bf16(tmp_path, attention, kv_heads):
    """The mismatch of bf16-mixed is sdpa's: with eager attention, or grouped (eager's arithmetic without repeat_kv's
    copies; here 2 query heads share 1 key/value head), the decode and the update agree exactly."""
    fit(tmp_path, precision="bf16-mixed", attention=attention, config={**LLAMA, "num_key_value_heads": kv_heads})
    values = logged(tmp_path)
    assert len(values["train/mismatch_kl"]) == 2
    assert values["train/mismatch_kl"] == [0.0, 0.0] and values["train/mismatch_ratio_outside"] == [0.0, 0.0]


def test_the_mismatch_is_measured_at_each_rollouts_first_step_only(tmp_path):
    fit(tmp_path, precision="bf16-mixed", steps=4, mini_batches=2)
    values = logged(tmp_path)  # log_every_n_steps=1: each optimizer step's values alone
    assert len(values["train/loss"]) == 4 and len(values["train/mismatch_kl"]) == 2  # NaN (not logged) at the others


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
@pytest.mark.parametrize("recompute", [True, False])
def test_recomputed_old_log_probs_make_the_first_ratio_exactly_one(precision, recompute):
    """Two mini-batches of two micro-batches each: the first step's micro-batches see ratio 1 exactly, the stale
    second step does not; without the recompute, bf16 leaves the sampler's rounding in the first ratio."""
    objective = Recording()
    fit(precision=precision, steps=4, objective=objective, mini_batches=2, micro_batch_size=4,
        recompute_old_log_probs=recompute)
    first = [call for step in (0, 2) for call in objective.calls[2 * step: 2 * step + 2]]  # each rollout's first step
    stale = [call for step in (1, 3) for call in objective.calls[2 * step: 2 * step + 2]]
    ratios = {(call["ratio_min"], call["ratio_max"]) for call in first}
    if recompute:
        assert ratios == {(1.0, 1.0)}
    elif precision == "bf16-mixed":
        assert all(low < 1 < high for low, high in ratios)
    assert all(call["ratio_max"] - call["ratio_min"] > 1e-3 for call in stale)


def test_recompute_keeps_the_sampled_log_probs_for_the_mismatch(tmp_path):
    fit(tmp_path, precision="bf16-mixed", recompute_old_log_probs=True)
    values = logged(tmp_path)
    assert values["train/ratio_min"] == values["train/ratio_max"] == [1.0, 1.0] and min(values["train/mismatch_kl"]) > 0


def test_the_corrections_weights_reach_the_objective_per_token(tmp_path):
    """MIS with C = 1 in bf16: the tokens whose recomputed π_old exceeds the sampler's leave the loss; TIS in float32:
    the weights are 1 up to rounding."""
    objective = Recording()
    fit(tmp_path, precision="bf16-mixed", objective=objective, recompute_old_log_probs=True,
        rollout_correction={"kind": "mis", "level": "token", "cap": 1.0})
    assert all(0 < frac < 1 for frac in logged(tmp_path)["train/rollout_is_clipped_frac"])
    assert all(len(call["advantages"]) == 2 for call in objective.calls)  # [N, T]: per-token advantages
    fit(tmp_path / "f32", recompute_old_log_probs=True,
        rollout_correction={"kind": "tis", "level": "token", "cap": 1.0})
    assert logged(tmp_path / "f32")["train/rollout_is_mean"] == pytest.approx([1.0, 1.0], abs=1e-6)


def test_a_correction_without_recompute_is_refused_in_one_line():
    message = (r"^recompute_old_log_probs must be true with a rollout_correction \(it weighs π_old's recomputed "
               r"log-probs against the sampled ones\); got False$")
    with pytest.raises(ConfigError, match=message):
        RLModule(lambda task: CausalLMPolicy(task, model_config=LLAMA), SAPO(), TASK,
                 rollout_correction={"kind": "tis"})


@pytest.mark.parametrize(("precision", "dtype"), [("32-true", torch.float32), ("bf16-mixed", torch.bfloat16)])
def test_sampling_runs_in_the_trainers_precision(precision, dtype):
    """Lightning runs training_step under the precision plugin's autocast: the rollouts are decoded in bf16 too."""
    seen = []
    torch.manual_seed(0)

    def policy(task):
        built = CausalLMPolicy(task, model_config=LLAMA, temperature=2.0)
        sample = built.sample

        def recorded_sample(*args, **kwargs):
            hook = built.model.lm_head.register_forward_hook(lambda module, inputs, out: seen.append(out.dtype))
            try:
                return sample(*args, **kwargs)
            finally:
                hook.remove()

        built.sample = recorded_sample
        return built

    module = RLModule(policy, SAPO(), TASK, group_size=2)
    Trainer(max_steps=1, precision=precision, accelerator="cpu", logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
            callbacks=[OldPolicySync(1)]).fit(module, QueryDataModule(TASK, batch_size=2, seed=0))
    assert len(seen) > 1 and set(seen) == {dtype}  # the prefill and every decoding step
