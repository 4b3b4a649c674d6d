"""The objectives beside SAPO: GRPO (with DAPO and Dr.GRPO as configurations), GSPO, CISPO,
and SAPO's off-by-default sequence-ratio extension. Float64, expected values worked by hand."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from sapo_lightning import CISPO, GRPO, GSPO, SAPO, ConfigError
from sapo_lightning.cli import SAPOCLI, main
from sapo_lightning.data import QueryDataModule
from sapo_lightning.module import RLModule
from sapo_lightning.objectives import aggregate

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# The old policy is kept in eval mode on purpose (main() silences this; these tests build SAPOCLI directly).
pytestmark = pytest.mark.filterwarnings(r"ignore:Found \d+ module\(s\) in eval mode")
F64 = torch.float64

# The shared small case: two responses of padded length 3, the second one 2 tokens long.
LOG_PROBS = [[-0.5, -1.0, -2.0], [-0.3, -0.1, -1.0]]
ADVANTAGES = [2.0, -1.0]
MASK = [[True, True, True], [True, True, False]]


def case(ratios, log_probs=LOG_PROBS, advantages=ADVANTAGES, mask=MASK):
    """Inputs whose ratios exp(log π_θ − log π_old) are ``ratios``; log π_θ requires grad."""
    log_probs = torch.tensor(log_probs, dtype=F64, requires_grad=True)  # [N, T]
    old_log_probs = log_probs.detach() - torch.tensor(ratios, dtype=F64).log()  # [N, T]
    return log_probs, old_log_probs, torch.tensor(advantages, dtype=F64), torch.tensor(mask)


def value_and_grad(objective, log_probs, old_log_probs, advantages, mask):
    out = objective(log_probs, old_log_probs, advantages, mask)
    (grad,) = torch.autograd.grad(out.loss, log_probs)
    return out, grad


def expect(tensor, values):
    torch.testing.assert_close(tensor, torch.tensor(values, dtype=F64), rtol=1e-12, atol=1e-12)


def metric(out, name):
    return out.metrics[name].item()


# -- GRPO ------------------------------------------------------------------------------------
RATIOS = [[1.5, 1.1, 0.5], [0.7, 1.3, 2.0]]  # the last one is padding


def test_grpo_value_gradient_and_clip_fractions_by_hand():
    # ε = 0.2: clip to [0.8, 1.2]; the gradient of r·Â w.r.t. log π_θ is r·Â.
    # response 0, Â = 2:  r=1.5: min(3.0, 1.2·2=2.4) = 2.4 clipped (high) -> loss −2.4, grad 0
    #                     r=1.1: min(2.2, 2.2) -> −2.2, grad −2.2
    #                     r=0.5: min(1.0, 0.8·2=1.6) = 1.0 unclipped -> −1.0, grad −1.0
    # response 1, Â = −1: r=0.7: min(−0.7, −0.8) = −0.8 clipped (low) -> 0.8, grad 0
    #                     r=1.3: min(−1.3, −1.2) = −1.3 unclipped -> 1.3, grad +1.3
    # seq-mean-token-mean: ((−2.4 − 2.2 − 1.0)/3 + (0.8 + 1.3)/2) / 2 = −4.9/12
    # gradients carry the factor 1/(|y_i|·N): 1/6 for response 0, 1/4 for response 1.
    out, grad = value_and_grad(GRPO(), *case(RATIOS))
    expect(out.loss, -4.9 / 12)
    expect(grad, [[0.0, -2.2 / 6, -1.0 / 6], [0.0, 1.3 / 4, 0.0]])
    # one token of five on each side has its gradient zeroed by the clip
    assert metric(out, "clip_frac_low") == pytest.approx(1 / 5)
    assert metric(out, "clip_frac_high") == pytest.approx(1 / 5)
    assert metric(out, "ratio_max") == pytest.approx(1.5)  # the padded 2.0 is not seen
    assert "clip_frac_dual" not in out.metrics


def test_dapo_clip_higher_with_token_mean_by_hand():
    # ε_high = 0.28: r=1.5 with Â=2 now clips at 1.28 -> −2.56; the others as in the GRPO case.
    # token-mean over the 5 real tokens: (−2.56 − 2.2 − 1.0 + 0.8 + 1.3) / 5 = −3.66 / 5
    out, grad = value_and_grad(GRPO(eps_high=0.28, aggregation="token-mean"), *case(RATIOS))
    expect(out.loss, -3.66 / 5)
    expect(grad, [[0.0, -2.2 / 5, -1.0 / 5], [0.0, 1.3 / 5, 0.0]])


def test_dr_grpo_aggregation_by_hand():
    # seq-mean-token-sum-norm: the token losses of the GRPO case summed, over N·T = 2·3 = 6
    # (−2.4 − 2.2 − 1.0 + 0.8 + 1.3) / 6 = −3.5 / 6, every gradient divided by the same 6.
    out, grad = value_and_grad(GRPO(aggregation="seq-mean-token-sum-norm"), *case(RATIOS))
    expect(out.loss, -3.5 / 6)
    expect(grad, [[0.0, -2.2 / 6, -1.0 / 6], [0.0, 1.3 / 6, 0.0]])


def test_grpo_dual_clip_caps_negative_advantage_tokens_only():
    # c = 3, ε = 0.2.  response 0, Â = −1: r=4: min(−4, −1.2) = −4 -> 4, capped at −c·Â = 3, grad 0
    #                                      r=1.3: 1.3 (< 3, grad 1.3);  r=2: 2.0 (< 3, grad 2.0)
    #                  response 1, Â = +1: r=4: min(4, 1.2) -> −1.2 (clip high, grad 0; no cap)
    #                                      r=1: −1 (grad −1), twice
    # ((3 + 1.3 + 2)/3 + (−1.2 − 1 − 1)/3) / 2 = 3.1 / 6
    inputs = case([[4.0, 1.3, 2.0], [4.0, 1.0, 1.0]], advantages=[-1.0, 1.0], mask=[[True] * 3] * 2)
    out, grad = value_and_grad(GRPO(dual_clip=3.0), *inputs)
    expect(out.loss, 3.1 / 6)
    expect(grad, [[0.0, 1.3 / 6, 2.0 / 6], [0.0, -1.0 / 6, -1.0 / 6]])
    assert metric(out, "clip_frac_dual") == pytest.approx(1 / 6)
    assert metric(out, "clip_frac_high") == pytest.approx(1 / 6)
    assert metric(out, "clip_frac_low") == 0
    # without the cap the r=4 token costs 4 and keeps its gradient: ((4 + 1.3 + 2)/3 − 3.2/3) / 2
    out, grad = value_and_grad(GRPO(), *inputs)
    expect(out.loss, 4.1 / 6)
    assert grad[0, 0].item() == pytest.approx(4.0 / 6)


def test_clip_fractions_count_exactly_the_tokens_whose_gradient_is_zeroed():
    # One real token per response, one padded token that would count if it were seen.
    # r=0.5 Â=+1: outside the range but the min keeps r·Â -> gradient, not counted
    # r=0.5 Â=−1: low clip selected -> zero gradient, counted low
    # r=1.5 Â=+1: high clip selected -> zero gradient, counted high
    # r=1.5 Â=−1: min keeps r·Â -> gradient, not counted
    # r=1.5 Â= 0: no signal, not counted
    ratios = [[0.5, 0.5], [0.5, 0.5], [1.5, 1.5], [1.5, 1.5], [1.5, 1.5]]
    advantages = [1.0, -1.0, 1.0, -1.0, 0.0]
    mask = [[True, False]] * 5
    inputs = case(ratios, log_probs=[[-1.0, -1.0]] * 5, advantages=advantages, mask=mask)
    out, grad = value_and_grad(GRPO(), *inputs)
    assert metric(out, "clip_frac_low") == pytest.approx(1 / 5)
    assert metric(out, "clip_frac_high") == pytest.approx(1 / 5)
    zeroed = (grad[:, 0] == 0) & (inputs[2] != 0)
    assert zeroed.tolist() == [False, True, True, False, False]


# -- GSPO ------------------------------------------------------------------------------------
def gspo_reference(log_probs, old_log_probs, advantages, mask, eps_low=3e-4, eps_high=4e-4):
    """GSPO in its sequence form, written independently of the implementation."""
    m = mask.to(log_probs.dtype)
    s = torch.exp(((log_probs - old_log_probs) * m).sum(-1) / m.sum(-1))  # [N]
    return -torch.minimum(s * advantages, s.clamp(1 - eps_low, 1 + eps_high) * advantages).mean()


GSPO_Z = [
    [1e-3, -1e-3, 0.0],  # Â=+1:  log s = 0, s = 1, inside -> −1, grad −1/(3·4) per token
    [0.01, 0.03, 0.5],  # Â=−1: log s = 0.02 (pad ignored); above 1+ε but Â < 0 keeps s·Â -> +e^0.02
    [0.006, 0.006, 0.006],  # Â=+1: s = e^0.006 > 1.0004 -> clipped high, −1.0004, grad 0
    [-0.002, -0.004, 0.0],  # Â=−2: s = e^−0.002 = 0.998 < 0.9997 -> clipped low, +2·0.9997, grad 0
]
GSPO_ADV = [1.0, -1.0, 1.0, -2.0]
GSPO_MASK = [[True] * 3, [True, True, False], [True] * 3, [True] * 3]


def gspo_case():
    log_probs = torch.linspace(-2.0, -0.1, 12, dtype=F64).view(4, 3).requires_grad_()
    old_log_probs = log_probs.detach() - torch.tensor(GSPO_Z, dtype=F64)
    return log_probs, old_log_probs, torch.tensor(GSPO_ADV, dtype=F64), torch.tensor(GSPO_MASK)


def test_gspo_value_gradient_and_clip_fractions_by_hand():
    # seq-mean: (−1 + e^0.02 − 1.0004 + 1.9994) / 4 = (e^0.02 − 0.001) / 4
    # gradient of response i's term w.r.t. each of its tokens: −s_i·Â_i / (|y_i|·N)
    out, grad = value_and_grad(GSPO(), *gspo_case())
    expect(out.loss, (math.exp(0.02) - 0.001) / 4)
    e = math.exp(0.02) / 8
    expect(grad, [[-1 / 12] * 3, [e, e, 0.0], [0.0] * 3, [0.0] * 3])
    # 11 real tokens; response 2 (3 tokens) clipped high, response 3 (3 tokens) clipped low
    assert metric(out, "clip_frac_high") == pytest.approx(3 / 11)
    assert metric(out, "clip_frac_low") == pytest.approx(3 / 11)
    assert metric(out, "seq_ratio_max") == pytest.approx(math.exp(0.02))
    assert metric(out, "seq_ratio_min") == pytest.approx(math.exp(-0.002))


def test_gspo_token_form_matches_the_sequence_form():
    generator = torch.Generator().manual_seed(0)
    log_probs = (-torch.rand(6, 5, generator=generator, dtype=F64) * 3).requires_grad_()
    old_log_probs = log_probs.detach() + 1e-3 * torch.randn(6, 5, generator=generator, dtype=F64)
    advantages = torch.randn(6, generator=generator, dtype=F64)
    mask = torch.arange(5) < torch.tensor([5, 4, 3, 5, 1, 2]).unsqueeze(-1)  # [6, 5]
    out, grad = value_and_grad(GSPO(), log_probs, old_log_probs, advantages, mask)
    reference = gspo_reference(log_probs, old_log_probs, advantages, mask)
    (reference_grad,) = torch.autograd.grad(reference, log_probs)
    assert 0 < metric(out, "clip_frac_low") + metric(out, "clip_frac_high") < 1  # both branches seen
    torch.testing.assert_close(out.loss, reference, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grad, reference_grad, rtol=1e-12, atol=1e-14)


# -- CISPO -----------------------------------------------------------------------------------
def test_cispo_value_gradient_and_clip_fractions_by_hand():
    # weights sg[clip(r, 0.8, 6.0)]: [1.5, 6.0, 0.8], [0.8, 1.3] (pad ignored)
    # token loss −w·Â·log π:  response 0 (Â=2): −1.5·2·(−0.5) = 1.5, −6·2·(−1) = 12, −0.8·2·(−2) = 3.2
    #                         response 1 (Â=−1): −0.8·(−1)·(−0.3) = −0.24, −1.3·(−1)·(−0.1) = −0.13
    # token-mean: 16.33 / 5;  gradient −w·Â / 5 on every real token, clipped ones included.
    out, grad = value_and_grad(CISPO(), *case([[1.5, 7.0, 0.5], [0.7, 1.3, 2.0]]))
    expect(out.loss, 16.33 / 5)
    expect(grad, [[-3.0 / 5, -12.0 / 5, -1.6 / 5], [0.8 / 5, 1.3 / 5, 0.0]])
    # truncated weights: r=0.5 and r=0.7 below 0.8 (2 of 5), r=7 above 6 (1 of 5)
    assert metric(out, "clip_frac_low") == pytest.approx(2 / 5)
    assert metric(out, "clip_frac_high") == pytest.approx(1 / 5)


# -- SAPO's sequence-ratio extension ---------------------------------------------------------
def test_sapo_sequence_ratio_gate_by_hand():
    # One response, z = ln2 ± 0.1, so s = 2 while no token ratio is 2.
    # Â = +1, τ_pos = 1: loss = −f(2) = −4σ(1); gate w(2) = sech²(1/2) = 0.7864 (docs/math.md);
    # gradient per token −w·s·Â/|y| = −0.7864·2/2.  Â = −1, τ_neg = 1.05: w(2) = 0.7681 (docs/math.md).
    ratios = [[2 * math.exp(0.1), 2 * math.exp(-0.1)]]
    for adv, tau, w in ((1.0, 1.0, 0.7864), (-1.0, 1.05, 0.7681)):
        inputs = case(ratios, log_probs=[[-1.0, -2.0]], advantages=[adv], mask=[[True] * 2])
        out, grad = value_and_grad(SAPO(ratio_level="sequence"), *inputs)
        assert out.loss.item() == pytest.approx(-(4 / tau) / (1 + math.exp(-tau)) * adv, rel=1e-12)
        assert grad[0].tolist() == pytest.approx([-w * adv] * 2, abs=1e-4)
        assert metric(out, "gate_mean") == pytest.approx(w, abs=1e-4)
        assert metric(out, "seq_ratio_mean") == pytest.approx(2.0)


def test_sapo_sequence_ratio_equals_token_ratio_when_ratios_are_equal_within_a_response():
    ratios = [[1.7, 1.7, 1.7], [0.6, 0.6, 3.0]]  # response 1's third token is padding
    token_out, token_grad = value_and_grad(SAPO(), *case(ratios))
    seq_out, seq_grad = value_and_grad(SAPO(ratio_level="sequence"), *case(ratios))
    torch.testing.assert_close(seq_out.loss, token_out.loss, rtol=1e-12, atol=0)
    torch.testing.assert_close(seq_grad, token_grad, rtol=1e-12, atol=1e-15)


# -- identities and gradcheck ----------------------------------------------------------------
def on_policy_case():
    generator = torch.Generator().manual_seed(1)
    log_probs = (-torch.rand(6, 4, generator=generator, dtype=F64) * 3).requires_grad_()
    advantages = torch.randn(6, generator=generator, dtype=F64)
    mask = torch.arange(4) < torch.tensor([4, 3, 4, 1, 2, 4]).unsqueeze(-1)  # [6, 4]
    return log_probs, log_probs.detach().clone(), advantages, mask  # r = 1 exactly


def policy_gradient(aggregation):
    """The plain policy-gradient loss −agg(Â · log π_θ)."""
    return lambda log_probs, old, advantages, mask: aggregate(-advantages.unsqueeze(-1) * log_probs, mask, aggregation)


@pytest.mark.parametrize(
    ("objective", "aggregation"),
    [
        (SAPO(), "seq-mean-token-mean"),
        (SAPO(tau_pos=0.5, tau_neg=3.0), "seq-mean-token-mean"),
        (SAPO(ratio_level="sequence"), "seq-mean-token-mean"),
        (GRPO(), "seq-mean-token-mean"),
        (GRPO(eps_low=0.0, eps_high=0.0, dual_clip=3.0), "seq-mean-token-mean"),
        (GRPO(eps_high=0.28, aggregation="token-mean"), "token-mean"),  # DAPO
        (GRPO(aggregation="seq-mean-token-sum-norm"), "seq-mean-token-sum-norm"),  # Dr.GRPO
        (GSPO(), "seq-mean-token-mean"),  # GSPO's seq-mean
        (CISPO(), "token-mean"),
    ],
    ids=repr,
)
def test_on_policy_gradient_is_the_plain_policy_gradient(objective, aggregation):
    inputs = on_policy_case()
    _, grad = value_and_grad(objective, *inputs)
    (expected,) = torch.autograd.grad(policy_gradient(aggregation)(*inputs), inputs[0])
    assert grad.abs().max() > 1e-3  # not a vacuous zero
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-15)


# Token log-ratios at least 1e-3 away from every clip boundary (finite differences stay on one side).
GRADCHECK_Z = [[-0.7, -0.1, 0.05, 0.4], [0.3, -0.3, 1.2, 0.0], [0.1, 0.1, 0.1, -2.0]]
GRADCHECK_ADV = [1.3, -0.8, -1.5]
GRADCHECK_MASK = [[True] * 4, [True, True, True, False], [True, True, False, False]]


@pytest.mark.parametrize(
    "objective",
    [SAPO(ratio_level="sequence"), GRPO(), GRPO(eps_high=0.28, dual_clip=1.5, aggregation="token-mean"),
     GRPO(aggregation="seq-mean-token-sum-norm"), GSPO(), GSPO(eps_low=0.2, eps_high=0.2)],
    ids=repr,
)
def test_gradcheck(objective):
    log_probs = torch.linspace(-2.5, -0.2, 12, dtype=F64).view(3, 4).requires_grad_()
    old_log_probs = log_probs.detach() - torch.tensor(GRADCHECK_Z, dtype=F64)
    advantages, mask = torch.tensor(GRADCHECK_ADV, dtype=F64), torch.tensor(GRADCHECK_MASK)
    assert torch.autograd.gradcheck(lambda lp: objective(lp, old_log_probs, advantages, mask).loss, (log_probs,))


@pytest.mark.parametrize("objective", [CISPO(), CISPO(eps_low=0.5, eps_high=0.1, aggregation="seq-mean-token-mean")],
                         ids=repr)
def test_gradcheck_cispo_with_the_ratio_held_fixed(objective):
    # CISPO's gradient is by design not the derivative of its value: the weight sg[clip(r)] is a
    # constant. It is the derivative with π_old moving along with π_θ (r held at its value),
    # which finite differences see when old_log_probs is rebuilt from the perturbed input.
    z = torch.tensor(GRADCHECK_Z, dtype=F64)
    advantages, mask = torch.tensor(GRADCHECK_ADV, dtype=F64), torch.tensor(GRADCHECK_MASK)
    log_probs = torch.linspace(-2.5, -0.2, 12, dtype=F64).view(3, 4).requires_grad_()
    assert torch.autograd.gradcheck(lambda lp: objective(lp, lp.detach() - z, advantages, mask).loss, (log_probs,))


# -- validation ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("build", "names"),
    [
        (lambda: GRPO(eps_low=-0.1), ["eps_low", "-0.1"]),
        (lambda: GRPO(eps_high=-0.01), ["eps_high", ">= 0", "-0.01"]),
        (lambda: GRPO(eps_high=float("nan")), ["eps_high", "nan"]),
        (lambda: GRPO(eps_low=1.0), ["eps_low", "[0, 1)", "1.0"]),
        (lambda: GRPO(dual_clip=1.0), ["dual_clip", "> 1", "1.0"]),
        (lambda: GRPO(dual_clip=0.5), ["dual_clip", "0.5"]),
        (lambda: GRPO(aggregation="mean"), ["aggregation", "token-mean", "'mean'"]),
        (lambda: GSPO(eps_low=-3e-4), ["eps_low", "-0.0003"]),
        (lambda: GSPO(eps_low=1.5), ["eps_low", "[0, 1)", "1.5"]),
        (lambda: GSPO(eps_high=-4e-4), ["eps_high", "-0.0004"]),
        (lambda: CISPO(eps_low=-0.2), ["eps_low", "-0.2"]),
        (lambda: CISPO(eps_high=-5.0), ["eps_high", "-5.0"]),
        (lambda: CISPO(aggregation="sum"), ["aggregation", "'sum'"]),
        (lambda: SAPO(ratio_level="seq"), ["ratio_level", "sequence", "'seq'"]),
    ],
)
def test_invalid_values_are_refused_naming_the_option_and_value(build, names):
    with pytest.raises(ConfigError) as err:
        build()
    for name in names:
        assert name in str(err.value)


def test_boundary_values_are_accepted():
    GRPO(eps_low=0.0, eps_high=0.0, dual_clip=1.01)
    CISPO(eps_low=1.0)  # no lower bound on the weight, as MiniMax-M1 runs it


# -- configs and CLI -------------------------------------------------------------------------
# Each shipped objective overlay is resolved and trained in tests/test_configs.py.


@pytest.fixture(autouse=True)
def bare_argv(monkeypatch):
    """LightningCLI warns when it gets ``args`` while pytest's own options sit in sys.argv."""
    monkeypatch.setattr(sys, "argv", ["sapo-lightning"])


def test_dr_grpo_overlay_uses_unscaled_advantages():
    args = ["--config", str(CONFIGS / "sapo.yaml"), "--config", str(CONFIGS / "objectives" / "dr_grpo.yaml")]
    cli = SAPOCLI(RLModule, QueryDataModule, args=args, run=False)
    assert cli.model.advantage_scale == "none"
    assert cli.model.objective.aggregation == "seq-mean-token-sum-norm"


def test_objective_is_chosen_from_the_command_line():
    base = ["--config", str(CONFIGS / "sapo.yaml")]
    cli = SAPOCLI(RLModule, QueryDataModule, args=base + ["--model.objective=GRPO", "--model.objective.eps_high=0.28"],
                  run=False)
    assert isinstance(cli.model.objective, GRPO)
    assert (cli.model.objective.eps_low, cli.model.objective.eps_high) == (0.2, 0.28)
    cli = SAPOCLI(RLModule, QueryDataModule, args=base + ["--model.objective=sapo_lightning.objectives.GSPO"],
                  run=False)
    assert isinstance(cli.model.objective, GSPO)


def test_cli_refuses_an_invalid_objective_value(tmp_path, capsys):
    args = ["fit", "--config", str(CONFIGS / "sapo.yaml"), "--config", str(CONFIGS / "objectives" / "grpo.yaml"),
            "--model.objective.dual_clip=0.9",
            "--trainer.default_root_dir", str(tmp_path / "run")]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert "dual_clip must be a finite number > 1" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
