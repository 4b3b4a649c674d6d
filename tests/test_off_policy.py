"""The paper's off-policy regime: mini-batches per rollout, dynamic sampling, the entropy bonus."""

import csv
import math

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger

from blind_task import Blind  # tests/ is on sys.path under pytest
from sapo_lightning import SAPO, ConfigError, FixedTarget, MLPPolicy, QueryDataModule, RLModule
from sapo_lightning.callbacks import OldPolicySync
from sapo_lightning.lm.sampling import truncated_scores
from sapo_lightning.objectives import ObjectiveOutput

TASK = FixedTarget([2, 5, 7, 3, 1])


class Recording(SAPO):
    """SAPO that keeps, at every optimizer step, its diagnostics and the advantages it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[torch.Tensor, dict[str, torch.Tensor]]] = []

    def __call__(self, log_probs, old_log_probs, advantages, mask) -> ObjectiveOutput:
        out = super().__call__(log_probs, old_log_probs, advantages, mask)
        self.calls.append((advantages.clone(), out.metrics))
        return out


def fit(task=TASK, *, steps: int, batch_size: int = 4, sync: int = 10, objective=None, log_dir=None, lr=0.01,
        optimizer=None, **kwargs) -> RLModule:
    torch.manual_seed(0)
    module = RLModule(lambda t: MLPPolicy(t, 16), objective or SAPO(), task, group_size=4,
                      optimizer=optimizer or (lambda p: torch.optim.Adam(p, lr=lr)), **kwargs)
    logger = CSVLogger(log_dir, name="", version="") if log_dir else False
    Trainer(max_steps=steps, logger=logger, log_every_n_steps=1, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, limit_val_batches=0, callbacks=[OldPolicySync(sync)]).fit(
        module, QueryDataModule(task, batch_size=batch_size, seed=0))
    return module


def params(module: RLModule) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.policy.parameters()])


def logged(log_dir) -> dict[str, list[tuple[int, float]]]:
    """Every train/ column of the CSV log: name -> [(step, value)]."""
    rows = list(csv.DictReader((log_dir / "metrics.csv").open()))
    names = [name for name in rows[0] if name.startswith("train/")]
    return {name: [(int(r["step"]), float(r[name])) for r in rows if r[name]] for name in names}


# -- mini-batches per rollout ------------------------------------------------------------------
@pytest.mark.parametrize("updates", [1, 2])
def test_defaults_spelt_out_are_the_plain_loop(tmp_path, updates):
    """One mini-batch, no filter, no entropy bonus, given explicitly: the same weights and every logged value."""
    plain = fit(steps=6, updates_per_rollout=updates, log_dir=tmp_path / "plain")
    spelt = fit(steps=6, updates_per_rollout=updates, mini_batches=1, filter_groups=False, entropy_coef=0.0,
                log_dir=tmp_path / "spelt")
    assert torch.equal(params(plain), params(spelt))
    assert (tmp_path / "plain" / "metrics.csv").read_text() == (tmp_path / "spelt" / "metrics.csv").read_text()
    # logged at every optimizer step, x = global_step (the optimizer steps done)
    assert [step for step, _ in logged(tmp_path / "plain")["train/loss"]] == list(range(1, 7))


def test_each_mini_batch_is_an_optimizer_step_and_only_the_first_is_on_policy(tmp_path):
    """Batch 4, G 4, M 4: each step sees one group; π_old is the rollout's policy (synced every S = 4 steps),
    so the first step of a rollout has r = 1 and gate 1, the other three do not."""
    objective = Recording()
    module = fit(steps=12, mini_batches=4, sync=4, objective=objective, log_dir=tmp_path)
    assert module.steps_per_rollout == 4 and module.old_policy is None  # refreshed before every rollout
    assert len(objective.calls) == 12
    for step, (advantages, metrics) in enumerate(objective.calls):
        assert advantages.shape == (4,)  # one group of the rollout's four
        spread = metrics["ratio_max"].item() - metrics["ratio_min"].item()
        if step % 4 == 0:
            assert metrics["ratio_min"].item() == pytest.approx(1.0, abs=1e-6)
            assert metrics["ratio_max"].item() == pytest.approx(1.0, abs=1e-6)
            assert metrics["gate_mean"].item() == pytest.approx(1.0, abs=1e-6)
        else:
            assert spread > 1e-4, step
    values = logged(tmp_path)
    assert [step for step, _ in values["train/ratio_max"]] == list(range(1, 13))
    first = [value for step, value in values["train/ratio_max"] if step % 4 == 1]
    later = [value for step, value in values["train/ratio_max"] if step % 4 != 1]
    assert first == pytest.approx([1.0] * 3, abs=1e-6) and min(later) > 1 + 1e-4


def test_a_bad_mini_batch_split_is_refused():
    with pytest.raises(ConfigError, match=r"^mini_batches must be an integer >= 1; got 0$"):
        RLModule(lambda t: MLPPolicy(t), SAPO(), TASK, mini_batches=0)
    with pytest.raises(ConfigError, match=r"^model.mini_batches must be a divisor of data.batch_size=4 "
                                          r"\(a mini-batch holds whole groups\); got 3$"):
        fit(steps=3, mini_batches=3)
    with pytest.raises(ConfigError, match=r"^model.micro_batch_size must be a divisor of a mini-batch's 8 responses "
                                          r"\(data.batch_size=4 x model.group_size=4 / model.mini_batches=2\); "
                                          r"got 16$"):
        fit(steps=2, mini_batches=2, micro_batch_size=16)
    with pytest.raises(ConfigError, match=r"^trainer.max_steps must be a multiple of 4, the optimizer steps a rollout "
                                          r"batch makes \(model.updates_per_rollout=2 x model.mini_batches=2\); "
                                          r"got 6$"):
        fit(steps=6, mini_batches=2, updates_per_rollout=2)


def test_micro_batches_within_a_mini_batch_equal_the_whole_mini_batch():
    """SGD: Adam would turn the float noise of gradient entries that cancel into visible steps."""
    options = dict(steps=8, batch_size=8, mini_batches=2, updates_per_rollout=2, sync=3,
                   optimizer=lambda p: torch.optim.SGD(p, lr=0.5))
    whole = fit(**options)
    chunked = fit(**options, micro_batch_size=4)
    assert torch.allclose(params(chunked), params(whole), rtol=0, atol=1e-6)
    assert not torch.equal(params(whole), params(fit(**{**options, "mini_batches": 1})))  # the split acts


# -- dynamic sampling ------------------------------------------------------------------------
def test_filtered_batches_hold_only_informative_groups(tmp_path):
    """Half the queries are unrewarded: without the filter some trained groups have advantages 0 everywhere;
    with it every trained group carries a signal, drawn from more than B groups where needed."""
    blind = Blind([2, 5, 7, 3, 1])
    unfiltered = Recording()
    fit(blind, steps=6, objective=unfiltered)
    assert any((a.view(4, 4) == 0).all(-1).any() for a, _ in unfiltered.calls)

    filtered = Recording()
    fit(blind, steps=6, objective=filtered, filter_groups=True, max_sampling_rounds=8, log_dir=tmp_path)
    for advantages, _ in filtered.calls:
        assert not (advantages.view(4, 4) == 0).all(-1).any()
    values = {name: [v for _, v in series] for name, series in logged(tmp_path).items()}
    assert values["train/groups_kept"] == [4.0] * 6
    assert max(values["train/groups_drawn"]) > 4 and min(values["train/groups_drawn"]) >= 4
    assert values["train/groups_drawn"] == [4 * r for r in values["train/sampling_rounds"]]
    assert values["train/zero_adv_frac"] == [0.0] * 6  # of the batch trained on
    assert all(0 <= v < 1 for v in values["train/reward_drawn"])  # of the first round, as without the filter


def test_the_cap_is_respected_and_groups_without_signal_fill_the_batch(tmp_path):
    """No query is rewarded: every round is drawn up to the cap, none kept, and the filling groups
    (advantages 0) leave the weights as they were."""
    before = params(fit(Blind([2, 5, 7, 3, 1], sighted=math.inf), steps=0))
    module = fit(Blind([2, 5, 7, 3, 1], sighted=math.inf), steps=3, filter_groups=True, max_sampling_rounds=3,
                 log_dir=tmp_path)
    assert module.task.reward_calls == 9  # 3 batches x 3 rounds
    values = {name: [v for _, v in series] for name, series in logged(tmp_path).items()}
    assert values["train/sampling_rounds"] == [3.0] * 3
    assert values["train/groups_drawn"] == [12.0] * 3
    assert values["train/groups_kept"] == [0.0] * 3
    assert torch.equal(params(module), before)


def test_dynamic_sampling_is_reproducible_and_changes_training():
    runs = [fit(Blind([2, 5, 7, 3, 1]), steps=8, mini_batches=2, filter_groups=True) for _ in range(2)]
    assert torch.equal(params(runs[0]), params(runs[1]))
    assert not torch.equal(params(runs[0]), params(fit(Blind([2, 5, 7, 3, 1]), steps=8, mini_batches=2)))


def test_filter_groups_and_the_cap_are_checked():
    with pytest.raises(ConfigError, match=r"^filter_groups must be false with group_size=1 \(a group of one response "
                                          r"has no spread to filter on\); got True$"):
        RLModule(lambda t: MLPPolicy(t), SAPO(), TASK, group_size=1, advantage_scale="none", filter_groups=True)
    with pytest.raises(ConfigError, match=r"^max_sampling_rounds must be an integer >= 1; got 0$"):
        RLModule(lambda t: MLPPolicy(t), SAPO(), TASK, filter_groups=True, max_sampling_rounds=0)


# -- entropy bonus ---------------------------------------------------------------------------
def test_entropy_bonus_step_is_the_gradient_of_the_mean_entropy(tmp_path):
    """No query rewarded, so the objective adds no gradient: one SGD step (lr 1) moves the weights by
    c · ∇ mean H, the MLP's entropy per position (independent of the responses) on the batch's queries."""
    c, task = 0.5, Blind([2, 5, 7, 3, 1], sighted=math.inf)
    torch.manual_seed(0)
    policy = MLPPolicy(task, 16)
    queries = task.train_batch(0, 4, 0, 0, 1)  # batch 0 of rank 0, seed 0: what the data module draws
    log_p = torch.log_softmax(policy(queries), -1)  # [B, T, V]
    entropy = -(log_p.exp() * log_p).sum(-1).mean()
    grads = torch.autograd.grad(entropy, list(policy.parameters()))
    expected = torch.cat([(p + c * g).detach().flatten() for p, g in zip(policy.parameters(), grads)])

    torch.manual_seed(0)
    module = RLModule(lambda t: MLPPolicy(t, 16), SAPO(), task, group_size=4, entropy_coef=c,
                      optimizer=lambda p: torch.optim.SGD(p, lr=1.0))
    Trainer(max_steps=1, logger=CSVLogger(tmp_path, name="", version=""), log_every_n_steps=1,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
            callbacks=[OldPolicySync()]).fit(module, QueryDataModule(task, batch_size=4, seed=0))
    assert torch.allclose(params(module), expected, rtol=0, atol=1e-6)
    assert not torch.allclose(params(module), torch.cat([p.detach().flatten() for p in policy.parameters()]))
    (bonus,) = logged(tmp_path)["train/entropy_bonus"]
    assert bonus == (1, pytest.approx(-c * entropy.item(), rel=1e-5))


def test_entropy_bonus_keeps_the_entropy_up():
    """On the seed task the entropy falls as the policy learns; the bonus slows the fall."""
    def entropy_after(c: float) -> float:
        module = fit(steps=40, batch_size=8, lr=0.01, entropy_coef=c)
        queries = TASK.train_batch(999, 64, 1, 0, 1)
        with torch.no_grad():
            return module.policy.score(queries, torch.zeros(64, 5, dtype=torch.long)).entropy.mean().item()

    plain, bonus = entropy_after(0.0), entropy_after(0.2)
    assert bonus > plain + 0.1, (bonus, plain)


def test_entropy_grad_is_explicit_and_finite_through_truncated_logits():
    torch.manual_seed(0)
    policy = MLPPolicy(TASK, 8)
    queries, responses = torch.randn(3, 5), torch.randint(0, 10, (3, 5))
    assert not policy.score(queries, responses).entropy.requires_grad  # a diagnostic by default
    assert policy.score(queries, responses, entropy_grad=True).entropy.requires_grad

    kept = torch.randn(4, 6, requires_grad=True)
    logits = torch.cat([kept, torch.full((4, 3), float("-inf"))], -1)  # three tokens outside the sampled set
    truncated_scores(logits, torch.zeros(4, dtype=torch.long), entropy_grad=True).entropy.sum().backward()
    reference = kept.detach().requires_grad_()  # the kept tokens alone: the same distribution
    log_p = torch.log_softmax(reference, -1)
    (-(log_p.exp() * log_p).sum()).backward()
    assert torch.isfinite(kept.grad).all()
    torch.testing.assert_close(kept.grad, reference.grad)


def test_a_negative_entropy_coef_is_refused():
    with pytest.raises(ConfigError, match=r"^entropy_coef must be a finite number >= 0; got -0.1$"):
        RLModule(lambda t: MLPPolicy(t), SAPO(), TASK, entropy_coef=-0.1)
