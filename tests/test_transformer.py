"""TransformerPolicy: sampling, scoring, KV cache, EOS masks, and the config through the CLI."""

from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sapo_lightning.checks import ConfigError
from sapo_lightning.tasks import EOS, Copy, FixedTarget, Reverse
from sapo_lightning.transformer import TransformerPolicy

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "transformer.yaml"


def rollout(task, temperature=1.0, seed=0, n=64, **kwargs):
    torch.manual_seed(0)
    policy = TransformerPolicy(task, n_layer=2, n_head=2, d_model=32, temperature=temperature, **kwargs).eval()
    queries = task.sample_queries(n, torch.Generator().manual_seed(1))
    return policy, queries, policy.sample(queries, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("temperature, vocab_size", [(1.0, None), (0.7, 2048)])
def test_sampled_log_probs_equal_scored_log_probs(temperature, vocab_size):
    task = Reverse(length=4, num_symbols=8, vocab_size=vocab_size, max_new_tokens=10)
    policy, queries, out = rollout(task, temperature)
    scores = policy.score(queries, out.responses)
    torch.testing.assert_close(scores.log_probs[out.mask], out.log_probs[out.mask], atol=1e-5, rtol=1e-5)
    assert (out.log_probs[~out.mask] == 0).all()


def test_kv_cache_sampling_equals_full_recompute():
    task = Copy(length=3, num_symbols=6, max_new_tokens=16)
    policy, queries, cached = rollout(task, temperature=1.3)
    policy.use_kv_cache = False
    full = policy.sample(queries, torch.Generator().manual_seed(0))
    assert torch.equal(cached.responses, full.responses) and torch.equal(cached.mask, full.mask)
    torch.testing.assert_close(cached.log_probs, full.log_probs, atol=1e-5, rtol=1e-5)
    assert cached.mask.sum(-1).float().mean() > 4  # many steps were decoded, not one


def test_masks_follow_eos():
    task = Copy(length=3, num_symbols=6, max_new_tokens=20)
    _, _, out = rollout(task, n=128)
    is_eos = out.responses == EOS  # padding after the end is EOS too
    first_eos = torch.where(is_eos.any(-1), is_eos.float().argmax(-1), task.response_len)  # [N]
    positions = torch.arange(task.response_len)
    assert torch.equal(out.mask, positions <= first_eos.unsqueeze(-1))  # the EOS itself is a real token
    assert (out.responses[~out.mask] == EOS).all()
    lengths = out.mask.sum(-1)
    assert lengths.min() < task.response_len and lengths.max() == task.response_len  # both kinds occur


def test_sampling_is_reproducible_and_greedy_is_argmax():
    task = Copy(length=3, num_symbols=6, max_new_tokens=8)
    policy, queries, first = rollout(task, seed=5)
    again = policy.sample(queries, torch.Generator().manual_seed(5))
    other = policy.sample(queries, torch.Generator().manual_seed(6))
    assert torch.equal(first.responses, again.responses) and not torch.equal(first.responses, other.responses)
    greedy = policy.sample(queries, greedy=True)
    tokens = torch.cat([queries, greedy.responses[:, :-1]], 1)
    logits = policy.head(policy(tokens))[:, task.query_dim - 1 :]  # [N, T, V]
    chosen = greedy.mask.clone()
    assert torch.equal(greedy.responses[chosen], logits.argmax(-1)[chosen])


def test_temperature_divides_logits():
    task = Copy(length=3, num_symbols=6, max_new_tokens=6)
    policy, queries, out = rollout(task, temperature=0.5)
    tokens = torch.cat([queries, out.responses[:, :-1]], 1)
    logits = policy.head(policy(tokens))[:, task.query_dim - 1 :]  # [N, T, V]
    expected = torch.log_softmax(logits / 0.5, -1).gather(-1, out.responses.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(policy.score(queries, out.responses).log_probs, expected)


def test_score_is_causal():
    task = Copy(length=3, num_symbols=6, max_new_tokens=8)
    policy, queries, out = rollout(task)
    changed = out.responses.clone()
    changed[:, 4:] = 5
    before, after = policy.score(queries, out.responses), policy.score(queries, changed)
    torch.testing.assert_close(before.log_probs[:, :4], after.log_probs[:, :4])  # y_4 onwards cannot leak back
    assert not torch.allclose(before.log_probs[:, 4:], after.log_probs[:, 4:])


@pytest.mark.parametrize(
    "task, kwargs, option",
    [
        (Copy(), {"d_model": 30, "n_head": 4}, "d_model"),
        (Copy(), {"n_layer": 0}, "n_layer"),
        (Copy(), {"temperature": 0.0}, "temperature"),
        (Copy(), {"dropout": 1.0}, "dropout"),
        (FixedTarget([1, 2]), {}, "model.policy must be a policy for state queries"),
    ],
)
def test_bad_arguments(task, kwargs, option):
    with pytest.raises(ConfigError, match=option):
        TransformerPolicy(task, **kwargs)


@pytest.mark.slow
def test_transformer_config_trains_through_the_cli(tmp_path):
    from sapo_lightning.cli import main

    main(["fit", "--config", str(CONFIG), "--trainer.max_steps=3", "--trainer.default_root_dir", str(tmp_path),
          "--trainer.enable_progress_bar=false", "--trainer.val_check_interval=3", "--trainer.log_every_n_steps=1",
          "--data.val_size=16"])
    run = tmp_path / "lightning_logs" / "version_0"
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)  # as the CLI loads it to resume
    assert state["global_step"] == 3
    assert any(k.startswith("policy.blocks.1.attn") for k in state["state_dict"])
    events = EventAccumulator(str(run))
    events.Reload()
    assert [e.step for e in events.Scalars("train/reward")] == [1, 2, 3]
    assert [e.step for e in events.Scalars("val/exact_match")] == [3]  # the axis of train/* and of step=3.ckpt
    assert all(0 <= e.value <= 1 for e in events.Scalars("val/exact_match"))


def test_gradient_checkpointing_gives_the_same_gradients_and_keeps_fewer_activations():
    task = Reverse(length=6, num_symbols=8)
    queries = task.sample_queries(16, torch.Generator().manual_seed(0))
    results = []
    for recompute in (False, True):
        torch.manual_seed(0)
        policy = TransformerPolicy(task, n_layer=3, d_model=32, dropout=0.1, gradient_checkpointing=recompute)
        responses = policy.sample(queries, torch.Generator().manual_seed(1)).responses
        saved = []

        def pack(tensor, saved=saved):
            saved.append(tensor.numel() * tensor.element_size())
            return tensor

        torch.manual_seed(2)  # the same dropout masks
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            loss = policy.score(queries, responses).log_probs.sum()
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in policy.parameters()], sum(saved)))
    (plain_loss, plain_grads, plain_bytes), (ckpt_loss, ckpt_grads, ckpt_bytes) = results
    assert torch.equal(plain_loss, ckpt_loss)
    for a, b in zip(plain_grads, ckpt_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert ckpt_bytes < plain_bytes / 2  # only each block's input is kept
