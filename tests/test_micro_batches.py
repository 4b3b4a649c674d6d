"""Micro-batches, the copy-free behaviour policy and the reference KL, against the plain full-batch loop."""

import pytest
import torch
from lightning.pytorch import Callback, Trainer

from sapo_lightning import CISPO, GRPO, GSPO, SAPO, ConfigError, FixedTarget, MLPPolicy, QueryDataModule, RLModule
from sapo_lightning.callbacks import OldPolicySync
from sapo_lightning.objectives import AGGREGATIONS, aggregate, k3_kl, micro_batch_share
from sapo_lightning.rollout import Rollout

TASK = FixedTarget([2, 5, 7, 3, 1])
EOS = 0


class EOSPolicy(MLPPolicy):
    """The seed MLP with an end token: a response ends at its first token 0, so lengths vary (1..T).

    Its draws are one ``[n, T, V]`` block per call, so on the CPU a batch sampled in chunks draws
    the same uniforms as in one piece: a chunked run sees exactly the unchunked run's rollouts.
    """

    pad_token = EOS

    def sample(self, queries, generator=None, greedy=False):
        rollout = super().sample(queries, generator, greedy)
        ended_before = (rollout.responses == EOS).long().cumsum(-1) - (rollout.responses == EOS).long()  # [n, T]
        mask = ended_before == 0  # up to and including the first EOS
        responses = rollout.responses.masked_fill(~mask, EOS)
        return Rollout(responses, rollout.log_probs.masked_fill(~mask, 0.0), mask, ~(responses == EOS).any(-1))


def fit(objective, *, policy=MLPPolicy, steps=6, sync=10, callbacks=(), **kwargs) -> RLModule:
    torch.manual_seed(0)
    module = RLModule(lambda t: policy(t, 16), objective, TASK, group_size=4, **kwargs)
    Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, limit_val_batches=0, callbacks=[OldPolicySync(sync), *callbacks]).fit(
        module, QueryDataModule(TASK, batch_size=8, seed=0))
    return module


def params(module: RLModule) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.policy.parameters()])


OBJECTIVES = [SAPO(aggregation=a) for a in AGGREGATIONS] + [GRPO(aggregation="token-mean"), GSPO(), CISPO()]


@pytest.mark.parametrize("objective", OBJECTIVES, ids=repr)
def test_micro_batches_equal_the_full_batch(objective):
    """32 responses in chunks of 8, variable lengths, 3 updates per rollout, a lagged π_old, a KL term:
    after 6 optimizer steps the parameters are those of the unchunked run.

    SGD, not Adam: Adam divides by |g| + 1e-8, which turns the float noise of gradient entries
    that cancel to ~1e-9 (advantages sum to zero in a group) into visible parameter differences.
    """
    sgd = lambda params: torch.optim.SGD(params, lr=0.5)  # noqa: E731
    options = dict(policy=EOSPolicy, updates_per_rollout=3, sync=4, beta=0.1, optimizer=sgd)
    full = fit(objective, **options)
    chunked = fit(objective, micro_batch_size=8, **options)
    assert torch.allclose(params(chunked), params(full), rtol=0, atol=1e-6)
    assert not torch.equal(params(full), params(fit(objective, **{**options, "beta": 0.0})))  # the KL term acts


@pytest.mark.parametrize("mode", AGGREGATIONS)
def test_shares_sum_the_chunks_to_the_batch(mode):
    """Σ_c w_c · aggregate(chunk c) = aggregate(batch), in value and gradient, with uneven lengths."""
    gen = torch.Generator().manual_seed(1)
    values = torch.randn(12, 7, generator=gen, requires_grad=True)
    lengths = torch.tensor([1, 7, 3, 0, 2, 7, 5, 1, 4, 6, 2, 3])
    mask = torch.arange(7) < lengths.unsqueeze(-1)  # [12, 7], one empty response
    whole = aggregate(values, mask, mode)
    (grad_whole,) = torch.autograd.grad(whole, values)
    parts = sum(micro_batch_share(mode, mask[r], mask) * aggregate(values[r], mask[r], mode)
                for r in (slice(0, 4), slice(4, 8), slice(8, 12)))
    (grad_parts,) = torch.autograd.grad(parts, values)
    assert torch.allclose(parts, whole, atol=1e-6)
    assert torch.allclose(grad_parts, grad_whole, atol=1e-7)


def test_k3_by_hand():
    """k3 = exp(d) − d − 1, d = log π_ref − log π_θ: 0 on the reference, e − 2 at d = 1."""
    log_probs = torch.tensor([-1.0, -2.0])
    assert torch.allclose(k3_kl(log_probs, torch.tensor([-1.0, -1.0])), torch.tensor([0.0, torch.e - 2]))


class KeepCopy(Callback):
    """Keeps the frozen copy whatever OldPolicySync decided (placed after it)."""

    def setup(self, trainer, pl_module, stage):
        pl_module.keep_old_copy(True)


def test_no_copy_when_synced_before_every_rollout():
    """Sync every step: π_old is the live policy, no copy is built, and training is that of a copy."""
    live = fit(SAPO(), sync=1, updates_per_rollout=2)
    copied = fit(SAPO(), sync=1, updates_per_rollout=2, callbacks=[KeepCopy()])
    assert live.old_policy is None and copied.old_policy is not None
    assert not any(key.startswith("old_policy.") for key in live.state_dict())
    assert torch.equal(params(live), params(copied))
    assert fit(SAPO(), sync=3, updates_per_rollout=2).old_policy is not None  # lagged: the copy stays


def test_bad_micro_batch_and_beta_are_refused():
    with pytest.raises(ConfigError, match=r"micro_batch_size must be an integer >= 1.*got 0"):
        RLModule(lambda t: MLPPolicy(t), SAPO(), TASK, micro_batch_size=0)
    with pytest.raises(ConfigError, match=r"beta must be .*got -0.1"):
        RLModule(lambda t: MLPPolicy(t), SAPO(), TASK, beta=-0.1)
    with pytest.raises(ConfigError, match=r"model.micro_batch_size must be a divisor of the batch's 32 responses"):
        fit(SAPO(), micro_batch_size=5)


def test_ref_kl_is_logged_and_grows_from_zero(tmp_path):
    """train/ref_kl is logged at every step: 0 at the first update, where π_θ is still the reference,
    > 0 once it moved."""
    import csv

    from lightning.pytorch.loggers import CSVLogger

    torch.manual_seed(0)
    module = RLModule(lambda t: MLPPolicy(t, 16), SAPO(), TASK, group_size=4, beta=0.05,
                      optimizer=lambda p: torch.optim.SGD(p, lr=0.5))
    Trainer(max_steps=20, logger=CSVLogger(tmp_path), log_every_n_steps=1, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
            callbacks=[OldPolicySync()]).fit(module, QueryDataModule(TASK, batch_size=8, seed=0))
    (metrics,) = tmp_path.rglob("metrics.csv")
    values = [float(row["train/ref_kl"]) for row in csv.DictReader(metrics.open()) if row.get("train/ref_kl")]
    assert len(values) == 20
    assert values[0] == pytest.approx(0.0, abs=1e-6)  # the first update: π_θ is still the reference
    assert values[-1] > 1e-4 and all(v >= 0 for v in values)
