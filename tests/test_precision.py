"""bf16-mixed on the CPU: log-probs, ratios and the loss stay float32, and the tasks are still solved."""

import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sapo_lightning.cli import main
from sapo_lightning.objectives import CISPO, GRPO, GSPO, SAPO
from sapo_lightning.policies import MLPPolicy
from sapo_lightning.tasks import FixedTarget, Reverse
from sapo_lightning.transformer import TransformerPolicy

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("make", [lambda: (MLPPolicy(FixedTarget([2, 5, 7]), 16), FixedTarget([2, 5, 7])),
                                  lambda: (TransformerPolicy(Reverse(), d_model=32), Reverse())],
                         ids=["mlp", "transformer"])
def test_log_probs_and_losses_are_float32_under_bf16_autocast(make):
    policy, task = make()
    queries = task.sample_queries(8, torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rollout = policy.sample(queries, torch.Generator().manual_seed(1))
        scores = policy.score(queries, rollout.responses)
        assert rollout.log_probs.dtype == scores.log_probs.dtype == scores.entropy.dtype == torch.float32
        advantages = torch.randn(8)
        for objective in (SAPO(), GRPO(), GSPO(), CISPO()):
            out = objective(scores.log_probs, rollout.log_probs, advantages, rollout.mask)
            assert out.loss.dtype == torch.float32
            assert all(value.dtype == torch.float32 for value in out.metrics.values())


@pytest.mark.slow
@pytest.mark.parametrize("config, steps", [("sapo.yaml", 200), ("transformer.yaml", 250)])
def test_tasks_are_solved_under_bf16_mixed(tmp_path, monkeypatch, config, steps):
    monkeypatch.setattr(sys, "argv", ["sapo-lightning"])
    main(["fit", "--config", str(CONFIGS / config), "--trainer.precision=bf16-mixed", f"--trainer.max_steps={steps}",
          "--trainer.enable_progress_bar=false", "--trainer.default_root_dir", str(tmp_path)])
    (events,) = (tmp_path / "lightning_logs" / "version_0").glob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    assert accumulator.Scalars("val/exact_match")[-1].value == 1.0


LLAMA = {"model_type": "llama", "vocab_size": 16, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 64}
TASK = Reverse(length=6)


@pytest.fixture
def policy():
    """A tiny random Llama for the Reverse task, in eval mode."""
    pytest.importorskip("transformers")
    from sapo_lightning.lm.policy import CausalLMPolicy

    torch.manual_seed(0)
    return CausalLMPolicy(TASK, model_config=LLAMA).eval()


def lightning_autocast():
    """bf16 autocast as Lightning's precision plugin enters it: the cast cache off."""
    return torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False)


def lm_head_casts(profile, policy) -> int:
    """How many times the profiled code cast the lm_head weight ([16, 32]: no other weight has its shape)."""
    shape = list(policy.model.get_output_embeddings().weight.shape)
    return sum(e.name == "aten::_to_copy" and e.input_shapes[:1] == [shape] for e in profile.events())


def test_a_decode_under_autocast_casts_each_weight_once(policy):
    queries = TASK.sample_queries(4, torch.Generator().manual_seed(0))
    with lightning_autocast(), torch.profiler.profile(record_shapes=True) as profile:
        rollout = policy.sample(queries, torch.Generator().manual_seed(1))
    assert rollout.responses.shape[1] == 7 and lm_head_casts(profile, policy) == 1  # 7 forwards, one cast


def test_a_turn_of_an_episode_under_autocast_casts_each_weight_once(policy):
    queries = TASK.sample_queries(4, torch.Generator().manual_seed(0))
    decoder = policy.turns(queries, torch.ones_like(queries))
    live, budget = torch.ones(4, dtype=torch.bool), torch.full((4,), 6)
    with lightning_autocast(), torch.profiler.profile(record_shapes=True) as profile:
        turn = decoder.turn(live, budget, torch.Generator().manual_seed(1), greedy=True)
    assert turn.tokens.shape[1] >= 3 and lm_head_casts(profile, policy) == 1  # a forward per token, one cast


def test_a_decode_after_the_weights_change_inside_one_autocast_uses_the_new_weights(policy):
    queries = TASK.sample_queries(16, torch.Generator().manual_seed(0))
    with lightning_autocast():  # one training step: sample, update, sample again
        before = policy.sample(queries, torch.Generator().manual_seed(1))
        with torch.no_grad():
            policy.model.get_output_embeddings().weight.mul_(-3.0)
        after = policy.sample(queries, torch.Generator().manual_seed(1))
    with lightning_autocast():
        fresh = policy.sample(queries, torch.Generator().manual_seed(1))
    assert not torch.equal(after.responses, before.responses)
    assert torch.equal(after.responses, fresh.responses) and torch.equal(after.log_probs, fresh.log_probs)
