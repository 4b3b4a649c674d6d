"""The training diagnostics' fast path: batched metric updates and direct logger writes keep every value."""

import math

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sapo_lightning.callbacks import OldPolicySync
from sapo_lightning.data import QueryDataModule
from sapo_lightning.loop.metrics import Diagnostics
from sapo_lightning.module import RLModule
from sapo_lightning.objectives import SAPO, ObjectiveOutput
from sapo_lightning.policies import MLPPolicy
from sapo_lightning.tasks import FixedTarget

NAN = float("nan")
MODULE_METRICS = ("reward", "reward_std", "zero_adv_frac", "loss", "entropy", "grad_norm")


def record_rows(metric: Diagnostics, names: list[str], rows: torch.Tensor) -> None:
    for row in rows:
        metric.record(dict(zip(names, row)))


def test_pop_is_mean_min_max_over_updates_skipping_nan():
    metric = Diagnostics()
    record_rows(metric, ["loss", "ratio_min", "ratio_max"],
                torch.tensor([[1.0, 0.5, 1.5], [NAN, 0.25, 3.0], [4.0, 0.75, 2.0]]))
    out = metric.pop()
    assert out["loss"].item() == pytest.approx((1.0 + 4.0) / 2)  # the NaN update is skipped
    assert out["ratio_min"].item() == 0.25
    assert out["ratio_max"].item() == 3.0


def test_values_are_matched_by_name_not_by_position():
    metric = Diagnostics()
    metric.record({"loss": torch.tensor(1.0), "ratio_max": torch.tensor(5.0)})
    metric.record({"ratio_max": torch.tensor(7.0), "loss": torch.tensor(3.0)})  # other order
    assert {k: v.item() for k, v in metric.pop().items()} == {"loss": 2.0, "ratio_max": 7.0}


def test_pop_starts_a_new_window():
    metric = Diagnostics()
    metric.record({"loss": torch.tensor(1.0)})
    metric.pop()
    metric.record({"loss": torch.tensor(5.0)})
    assert metric.pop()["loss"].item() == 5.0


@pytest.mark.parametrize("flush_every", [1, 3, 64])
def test_queued_records_equal_one_update_per_record(flush_every):
    values = torch.randn(200, 4)
    values[2, 1] = NAN
    names = ["a", "b_min", "c_max", "d"]
    metric = Diagnostics(flush_every=flush_every)
    record_rows(metric, names, values)
    out = metric.pop()
    assert out["a"].item() == pytest.approx(values[:, 0].mean().item(), abs=1e-6)
    assert out["b_min"].item() == values[:, 1].nan_to_num(float("inf")).min().item()
    assert out["c_max"].item() == values[:, 2].max().item()
    assert out["d"].item() == pytest.approx(values[:, 3].mean().item(), abs=1e-6)


def test_a_name_without_any_finite_value_is_left_out():
    metric = Diagnostics()
    record_rows(metric, ["gate_pos", "loss"], torch.tensor([[NAN, 1.0], [NAN, 3.0]]))
    assert set(metric.pop()) == {"loss"}


class Recording(SAPO):
    """SAPO that keeps what it returned at every update."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[ObjectiveOutput] = []

    def __call__(self, *args) -> ObjectiveOutput:
        out = super().__call__(*args)
        self.calls.append(out)
        return out


@pytest.mark.slow
def test_logged_values_are_the_mean_min_max_of_the_updates_since_the_last_log_point(tmp_path):
    objective = Recording()
    task = FixedTarget([2, 5, 7, 3, 1], vocab_size=10)
    rl = RLModule(lambda t: MLPPolicy(t, 8), objective, task, group_size=4, updates_per_rollout=2,
                  optimizer=lambda p: torch.optim.Adam(p, lr=0.05))
    trainer = Trainer(max_steps=12, log_every_n_steps=3, val_check_interval=3, check_val_every_n_epoch=None,
                      logger=TensorBoardLogger(tmp_path, name="", version=""), enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, callbacks=[OldPolicySync()])
    trainer.fit(rl, QueryDataModule(task, batch_size=2, val_size=4, seed=0))
    assert len(objective.calls) == 12  # 6 rollout batches x 2 updates

    events = EventAccumulator(str(tmp_path))
    events.Reload()
    logged = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    # the optimizer step axis, x = global_step: every 3rd optimizer step, so windows cross rollout batches
    assert [step for step, _ in logged["train/gate_mean"]] == [3, 6, 9, 12]
    for i, (_, value) in enumerate(logged["train/gate_mean"]):
        window = objective.calls[3 * i : 3 * (i + 1)]  # 3 optimizer steps
        assert value == pytest.approx(sum(c.metrics["gate_mean"].item() for c in window) / 3, rel=1e-6)
        assert logged["train/ratio_max"][i][1] == pytest.approx(max(c.metrics["ratio_max"].item() for c in window))
        assert logged["train/ratio_min"][i][1] == pytest.approx(min(c.metrics["ratio_min"].item() for c in window))
        assert logged["train/loss"][i][1] == pytest.approx(sum(c.loss.item() for c in window) / 3, rel=1e-6)
    for name in MODULE_METRICS:
        assert f"train/{name}" in logged
        assert all(math.isfinite(value) for _, value in logged[f"train/{name}"])
    assert "train/reward" in trainer.callback_metrics  # callbacks (checkpoint monitors) see it
    assert "train/reward" in trainer.progress_bar_metrics


def reference_gate_metrics(sig, advantages, mask):
    """SAPO's gate diagnostics as first written: masked means over [N, T] selections."""
    gate = 4 * sig * (1 - sig)
    adv = advantages.unsqueeze(-1)

    def mean(values, where):
        return (values * where).sum() / where.sum()

    return {
        "gate_mean": mean(gate, mask), "gate_pos": mean(gate, mask & (adv > 0)),
        "gate_neg": mean(gate, mask & (adv < 0)), "soft_clip_frac": mean((gate < 0.5).to(gate.dtype), mask),
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sapo_gate_diagnostics_by_response_sums_equal_the_token_masked_means(dtype):
    g = torch.Generator().manual_seed(0)
    log_probs = (-3 * torch.rand(64, 9, generator=g, dtype=dtype)).requires_grad_(True)
    old = log_probs.detach() + torch.randn(64, 9, generator=g, dtype=dtype)  # ratios far from 1: some w < 0.5
    advantages = torch.randn(64, generator=g, dtype=dtype)
    advantages[::5] = 0.0  # zero advantage: in neither gate_pos nor gate_neg
    mask = torch.arange(9) < torch.randint(1, 10, (64, 1), generator=g)
    objective = SAPO(tau_pos=1.0, tau_neg=1.05)
    out = objective(log_probs, old, advantages, mask)
    tau = torch.where(advantages > 0, torch.tensor(1.0, dtype=dtype), torch.tensor(1.05, dtype=dtype)).unsqueeze(-1)
    sig = torch.sigmoid(tau * (torch.exp(log_probs.detach() - old) - 1))
    expected = reference_gate_metrics(sig, advantages, mask)
    assert out.metrics["gate_mean"].item() == expected["gate_mean"].item()  # same reduction: bit for bit
    assert out.metrics["soft_clip_frac"].item() == expected["soft_clip_frac"].item() > 0  # exact counts
    for name in ("gate_pos", "gate_neg"):  # summed per response first: float rounding only
        assert out.metrics[name].item() == pytest.approx(expected[name].item(), rel=1e-6)
        assert out.metrics[name].dtype == dtype
    # one sign absent: that side is NaN (skipped when logged), as a mean over no token was before
    out = objective(log_probs, old, advantages.abs() + 1, mask)
    assert math.isnan(out.metrics["gate_neg"].item()) and math.isfinite(out.metrics["gate_pos"].item())
