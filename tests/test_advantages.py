import pytest
import torch

from sapo_lightning.advantages import group_advantages, group_advantages_with_stats
from sapo_lightning.checks import ConfigError


def test_group_normalised_by_hand():
    # group (1, 2, 3, 4): mean 2.5, Bessel std sqrt(5/3) = 1.2909944 -> ±1.5/1.2909944 = ±1.1618950, ±0.3872983
    advantages = group_advantages(torch.tensor([1.0, 2.0, 3.0, 4.0, 0.0, 1.0, 0.0, 1.0]), group_size=4)
    expected_first = torch.tensor([-1.1618950, -0.3872983, 0.3872983, 1.1618950])
    torch.testing.assert_close(advantages[:4], expected_first, atol=1e-5, rtol=0)
    # group (0, 1, 0, 1): mean 0.5, std sqrt(1/3) = 0.5773503 -> ±0.8660254
    torch.testing.assert_close(advantages[4:], torch.tensor([-0.8660254, 0.8660254] * 2), atol=1e-5, rtol=0)


@pytest.mark.parametrize("value", [0.2, 0.6, 1.0, 0.0, 0.7])
def test_all_equal_group_is_exactly_zero_in_float32(value):
    rewards = torch.tensor([value] * 8 + [0.0, 1.0] * 4, dtype=torch.float32)
    advantages, zero_signal, _ = group_advantages_with_stats(rewards, group_size=8)
    assert torch.equal(advantages[:8], torch.zeros(8))
    assert zero_signal.tolist() == [True, False]
    assert advantages[8:].abs().min() > 0.9


def test_scale_none_is_centered_reward():
    advantages = group_advantages(torch.tensor([0.2, 0.4, 0.9, 0.9]), group_size=2, scale="none")
    torch.testing.assert_close(advantages, torch.tensor([-0.1, 0.1, 0.0, 0.0]))


def test_groups_sum_to_zero():
    rewards = torch.rand(6 * 5, generator=torch.Generator().manual_seed(0))
    advantages = group_advantages(rewards, group_size=5).view(6, 5)
    torch.testing.assert_close(advantages.sum(-1), torch.zeros(6), atol=1e-5, rtol=0)


def test_bad_group_size_is_refused():
    with pytest.raises(ConfigError, match="group_size must be an integer >= 2"):
        group_advantages(torch.ones(4), group_size=1)
    group_advantages(torch.ones(4), group_size=1, scale="none")  # a single sample is fine without std
    with pytest.raises(ConfigError, match="advantage_scale"):
        group_advantages(torch.ones(4), group_size=2, scale="batch")
    with pytest.raises(ValueError, match="multiple of group_size"):
        group_advantages(torch.ones(5), group_size=2)


def test_group_std_is_the_bessel_std_the_advantages_divide_by():
    rewards = torch.tensor([0.5] * 4 + [0.0, 1.0, 0.0, 1.0])
    stats = group_advantages_with_stats(rewards, group_size=4)
    # group 2: mean 0.5, squared deviations 4 x 0.25, Bessel: sqrt(1 / 3)
    torch.testing.assert_close(stats.std, torch.tensor([0.0, (1 / 3) ** 0.5]))
    torch.testing.assert_close(stats.advantages[4:],
                               torch.tensor([-1.0, 1.0, -1.0, 1.0]) * 0.5 / ((1 / 3) ** 0.5 + 1e-6))
