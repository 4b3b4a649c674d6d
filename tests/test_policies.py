import pytest
import torch

from sapo_lightning.checks import ConfigError
from sapo_lightning.policies import MLPPolicy, sample_from_logits
from sapo_lightning.tasks import FixedTarget


@pytest.fixture
def policy():
    torch.manual_seed(0)
    return MLPPolicy(FixedTarget([2, 5, 7, 3, 1], vocab_size=10), hidden_dim=16)


def test_shapes(policy):
    queries = torch.randn(6, 5)
    assert policy(queries).shape == (6, 5, 10)
    rollout = policy.sample(queries, torch.Generator().manual_seed(0))
    assert rollout.responses.shape == rollout.log_probs.shape == rollout.mask.shape == (6, 5)
    assert rollout.responses.dtype == torch.long and rollout.mask.all()
    scores = policy.score(queries, rollout.responses)
    assert scores.log_probs.shape == scores.entropy.shape == (6, 5)


def test_sampled_log_probs_equal_scored_log_probs(policy):
    queries = torch.randn(32, 5)
    rollout = policy.sample(queries, torch.Generator().manual_seed(1))
    scores = policy.score(queries, rollout.responses)
    torch.testing.assert_close(rollout.log_probs, scores.log_probs)
    # the sequence log-prob is the sum of the per-token ones, equal to log_softmax gathered
    expected = torch.log_softmax(policy(queries), -1).gather(-1, rollout.responses.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(scores.log_probs.sum(-1), expected.sum(-1))


def test_entropy_of_uniform_logits_is_log_vocab():
    scores_entropy = torch.distributions.Categorical(logits=torch.zeros(3, 7)).entropy()
    from sapo_lightning.policies import token_scores

    scores = token_scores(torch.zeros(3, 7), torch.zeros(3, dtype=torch.long))
    torch.testing.assert_close(scores.entropy, scores_entropy)
    torch.testing.assert_close(scores.log_probs, torch.full((3,), -torch.log(torch.tensor(7.0)).item()))


def test_gumbel_sampling_follows_the_softmax():
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4])
    logits = probs.log().expand(40000, 4)
    tokens, _ = sample_from_logits(logits, torch.Generator().manual_seed(0), greedy=False)
    frequencies = torch.bincount(tokens, minlength=4).float() / 40000
    torch.testing.assert_close(frequencies, probs, atol=0.01, rtol=0)  # 4 sigma ≈ 0.01 at n = 40000


def test_sampling_is_reproducible_from_the_generator(policy):
    queries = torch.randn(8, 5)
    a = policy.sample(queries, torch.Generator().manual_seed(7)).responses
    b = policy.sample(queries, torch.Generator().manual_seed(7)).responses
    c = policy.sample(queries, torch.Generator().manual_seed(8)).responses
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_greedy_takes_the_argmax(policy):
    queries = torch.randn(4, 5)
    assert torch.equal(policy.sample(queries, greedy=True).responses, policy(queries).argmax(-1))


def test_fixed_target_reward_by_hand():
    task = FixedTarget([2, 5, 7, 3, 1], vocab_size=10)
    responses = torch.tensor([[2, 5, 7, 3, 1], [2, 5, 0, 0, 1], [0, 0, 0, 0, 0]])
    mask = torch.ones_like(responses, dtype=torch.bool)
    torch.testing.assert_close(task.reward(None, responses, mask), torch.tensor([1.0, 0.6, 0.0]))
    assert task.exact_match(None, responses, mask).tolist() == [True, False, False]


@pytest.mark.parametrize(
    "kwargs, message",
    [({"target": []}, "target"), ({"target": [1, 10]}, "vocab_size=10"), ({"target": [1, -1]}, r"\[0, vocab_size"),
     ({"target": [1], "vocab_size": 1}, "vocab_size must be an integer >= 2")],
)
def test_bad_task_is_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        FixedTarget(**kwargs)


def test_bad_hidden_dim_is_refused():
    with pytest.raises(ConfigError, match="hidden_dim"):
        MLPPolicy(FixedTarget([1, 2]), hidden_dim=0)
