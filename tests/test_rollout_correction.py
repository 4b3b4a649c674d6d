"""Rollout correction (TIS, MIS) worked by hand; its weights in the objectives give verl's weighted per-token loss."""

import math

import pytest
import torch

from sapo_lightning.checks import ConfigError
from sapo_lightning.objectives import CISPO, GRPO, GSPO, SAPO, aggregate
from sapo_lightning.rollout_correction import RolloutCorrection, check_correction

# two responses, the second one token shorter; ρ = π_old / π_rollout per sampled token:
# row 0: 3, 1, 0.5 (product 1.5); row 1: 1.5, 1.2 (product 1.8); the padded position holds junk
MASK = torch.tensor([[True, True, True], [True, True, False]])
ROLLOUT = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -1.0, 0.0]])
RHO = torch.tensor([[3.0, 1.0, 0.5], [1.5, 1.2, 50.0]])
OLD = ROLLOUT + RHO.log()


def correct(kind, level, cap):
    return RolloutCorrection(kind, level, cap).check()(OLD, ROLLOUT, MASK)


@pytest.mark.parametrize(("kind", "level", "cap", "weights", "mask", "mean", "clipped"), [
    # TIS, token: min(ρ, 2); nothing leaves the mask
    ("tis", "token", 2.0, [[2, 1, 0.5], [1.5, 1.2, 0]], [[1, 1, 1], [1, 1, 0]], 6.2 / 5, 1 / 5),
    # MIS, token: the token with ρ = 3 > 2 is dropped, the others keep ρ
    ("mis", "token", 2.0, [[0, 1, 0.5], [1.5, 1.2, 0]], [[0, 1, 1], [1, 1, 0]], 4.2 / 5, 1 / 5),
    # TIS, sequence: ρ_0 = 1.5 on each token of row 0, ρ_1 = 1.8 truncated to 1.6 on each of row 1's
    ("tis", "sequence", 1.6, [[1.5, 1.5, 1.5], [1.6, 1.6, 0]], [[1, 1, 1], [1, 1, 0]], 7.7 / 5, 2 / 5),
    # MIS, sequence: row 1 (1.8 > 1.6) is dropped whole, row 0 keeps 1.5
    ("mis", "sequence", 1.6, [[1.5, 1.5, 1.5], [0, 0, 0]], [[1, 1, 1], [0, 0, 0]], 4.5 / 5, 2 / 5),
])
def test_weights_masks_and_diagnostics_by_hand(kind, level, cap, weights, mask, mean, clipped):
    out = correct(kind, level, cap)
    torch.testing.assert_close(out.weights, torch.tensor(weights, dtype=torch.float32), atol=1e-6, rtol=0)
    assert torch.equal(out.mask, torch.tensor(mask, dtype=torch.bool))
    assert out.metrics["rollout_is_mean"].item() == pytest.approx(mean, abs=1e-6)
    assert out.metrics["rollout_is_clipped_frac"].item() == pytest.approx(clipped)
    expected_max = 3.0 if level == "token" else 1.8  # the largest ratio before the cap, over the sampled tokens
    assert out.metrics["rollout_ratio_max"].item() == pytest.approx(expected_max, rel=1e-6)


def test_equal_log_probs_give_weight_one_and_drop_nothing():
    for kind in ("tis", "mis"):
        for level in ("token", "sequence"):
            out = RolloutCorrection(kind, level, 1.0).check()(ROLLOUT, ROLLOUT, MASK)
            assert torch.equal(out.weights, MASK.float()) and torch.equal(out.mask, MASK)


@pytest.mark.parametrize(("value", "message"), [
    ({"kind": "pis"}, "rollout_correction.kind must be one of tis, mis; got 'pis'"),
    ({"kind": "tis", "level": "turn"}, "rollout_correction.level must be one of token, sequence; got 'turn'"),
    ({"kind": "mis", "cap": 0.9}, "rollout_correction.cap must be a finite number >= 1; got 0.9"),
    ({"kind": "tis", "clip": 2}, r"rollout_correction fields must be among kind, level, cap; got \['clip'\]"),
])
def test_bad_corrections_are_one_line_config_errors(value, message):
    with pytest.raises(ConfigError, match=f"^{message}$"):
        check_correction(value)


# -- the weights in the objectives: what verl computes, pg_losses * w aggregated over the loss mask ----------------
def verl_style_token_losses(name, log_probs, old, adv, mask):
    """Each objective's per-token loss ``[N, T]`` with one advantage per response, written out independently."""
    z = (log_probs - old).clamp(-20, 20)
    a = adv[:, None]
    if name == "sapo":
        tau = torch.where(a > 0, 1.0, 1.05)
        return -(4 / tau) * torch.sigmoid(tau * (z.exp() - 1)) * a
    if name == "grpo":
        r = z.exp()
        return -torch.minimum(r * a, r.clamp(0.8, 1.2) * a)
    if name == "cispo":
        return -z.exp().clamp(0.8, 6.0).detach() * a * log_probs
    log_s = (z * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1)  # gspo, token form
    s = (log_s.detach() + z - z.detach()).exp()
    return -torch.minimum(s * a, s.clamp(1 - 3e-4, 1 + 4e-4) * a)


OBJECTIVES = {"sapo": SAPO, "grpo": GRPO, "cispo": CISPO, "gspo": GSPO}


AGGREGATIONS = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm")
PAIRS = [(name, aggregation) for name in OBJECTIVES for aggregation in AGGREGATIONS  # GSPO has one aggregation
         if name != "gspo" or aggregation == AGGREGATIONS[0]]


@pytest.mark.parametrize(("name", "aggregation"), PAIRS)
@pytest.mark.parametrize(("kind", "level"), [("tis", "token"), ("mis", "token"), ("tis", "sequence"),
                                             ("mis", "sequence")])
def test_weights_multiplied_into_the_advantages_equal_the_weighted_per_token_loss(name, aggregation, kind, level):
    generator = torch.Generator().manual_seed(0)
    mask = torch.rand(6, 5, generator=generator) < 0.8
    mask[:, 0] = True
    rollout = -torch.rand(6, 5, generator=generator) * 2
    old = rollout + torch.randn(6, 5, generator=generator) * 0.5  # ratios π_old / π_rollout from about 0.4 to 2.5
    log_probs = (old + torch.randn(6, 5, generator=generator) * 0.2).requires_grad_()
    advantages = torch.tensor([1.0, -0.5, 0.0, 2.0, -1.5, 0.7])
    weights, keep, _ = RolloutCorrection(kind, level, 1.5).check()(old, rollout, mask)
    assert 0 < keep.sum() < mask.sum() if kind == "mis" else (weights[mask] == 1.5).any()  # the cap acts
    kwargs = {} if name == "gspo" else {"aggregation": aggregation}
    ours = OBJECTIVES[name](**kwargs)(log_probs, old, advantages[:, None] * weights, keep).loss
    (grad,) = torch.autograd.grad(ours, log_probs)
    theirs = aggregate(weights * verl_style_token_losses(name, log_probs, old, advantages, keep), keep, aggregation)
    (expected,) = torch.autograd.grad(theirs, log_probs)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(grad, expected, atol=1e-6, rtol=1e-6)


def test_per_token_advantages_broadcast_from_one_per_response_give_the_same_loss_and_diagnostics():
    generator = torch.Generator().manual_seed(1)
    log_probs, old = torch.randn(4, 3, generator=generator), torch.randn(4, 3, generator=generator)
    advantages, mask = torch.tensor([1.0, -1.0, 0.5, 0.0]), torch.ones(4, 3, dtype=torch.bool)
    for objective in (SAPO(), GRPO(), GSPO(), CISPO()):
        per_response = objective(log_probs, old, advantages, mask)
        per_token = objective(log_probs, old, advantages[:, None].expand(4, 3), mask)
        assert per_response.loss == per_token.loss
        for key, value in per_response.metrics.items():
            torch.testing.assert_close(per_token.metrics[key], value, equal_nan=True)


def test_sapo_gate_sides_follow_each_tokens_weighted_advantage():
    """Dropped tokens (weight 0) count on neither side; a positive weight keeps the side of the response's advantage."""
    log_probs, old = torch.zeros(2, 2), torch.tensor([[0.0, math.log(2.0)], [0.0, 0.0]])  # r = 1, 0.5; 1, 1
    advantages = torch.tensor([[1.0, 1.0], [-1.0, 0.0]])  # row 1's second token dropped
    metrics = SAPO()(log_probs, old, advantages, torch.ones(2, 2, dtype=torch.bool)).metrics
    sech2 = 1 / math.cosh(0.5 * (0.5 - 1)) ** 2  # the gate at r = 0.5, tau = 1
    assert metrics["gate_pos"].item() == pytest.approx((1 + sech2) / 2)
    assert metrics["gate_neg"].item() == pytest.approx(1.0)
