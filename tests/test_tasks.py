"""Query-conditioned tasks: queries, targets and rewards checked by hand on small cases."""

import pytest
import torch

from sapo_lightning.checks import ConfigError
from sapo_lightning.tasks import EOS, FIRST_SYMBOL, PLUS, SEP, Copy, ModularAddition, Reverse, Sort

A, B, C = FIRST_SYMBOL, FIRST_SYMBOL + 1, FIRST_SYMBOL + 2  # symbols 0, 1, 2


def rows(*responses):
    """Responses as [N, T] tokens and the mask a policy gives them (up to and including the first EOS)."""
    tokens = torch.tensor(responses)
    ended_before = torch.cumsum(tokens == EOS, -1) - (tokens == EOS).long()  # EOS tokens strictly before t
    return tokens, ended_before == 0


def test_copy_partial_credit_exact_and_length_penalty():
    task = Copy(length=2, num_symbols=3, max_new_tokens=5, length_penalty=0.1)
    queries = torch.tensor([[A, B, SEP]] * 5)  # target A B, then EOS
    responses, mask = rows(
        [A, B, EOS, EOS, EOS],  # exactly right
        [A, C, EOS, EOS, EOS],  # one symbol wrong: 2 of 3 positions
        [A, B, B, B, B],  # never stops: 2 of 3 positions, 2 tokens too long
        [A, EOS, EOS, EOS, EOS],  # stops early: 1 of 3 (the EOS at t=1 is not B)
        [EOS, B, EOS, EOS, EOS],  # stops at once; tokens after EOS are masked and earn nothing
    )
    assert mask[2].all() and mask[4].tolist() == [True, False, False, False, False]
    expected = torch.tensor([1.0, 2 / 3, 2 / 3 - 0.1 * 2, 1 / 3, 0.0])
    torch.testing.assert_close(task.reward(queries, responses, mask), expected)
    assert task.exact_match(queries, responses, mask).tolist() == [True, False, False, False, False]

    binary = Copy(length=2, num_symbols=3, max_new_tokens=5, reward="exact", length_penalty=0.1)
    torch.testing.assert_close(binary.reward(queries, responses, mask), torch.tensor([1.0, 0.0, -0.2, 0.0, 0.0]))


def test_reverse_and_sort_targets():
    queries = torch.tensor([[A, B, C, SEP], [C, A, C, SEP]])
    assert Reverse(length=3, num_symbols=3).target(queries).tolist() == [[C, B, A], [C, A, C]]
    assert Sort(length=3, num_symbols=3).target(queries).tolist() == [[A, B, C], [A, C, C]]
    task = Reverse(length=3, num_symbols=3)  # max_new_tokens defaults to 3 + 1
    responses, mask = rows([C, B, A, EOS], [C, A, A, EOS])
    torch.testing.assert_close(task.reward(queries, responses, mask), torch.tensor([1.0, 0.75]))


def digits(*ds):
    return [FIRST_SYMBOL + d for d in ds]


def test_modular_addition_targets_by_hand():
    task = ModularAddition(num_digits=2)  # mod 100: 47 + 65 = 112 -> 12; 05 + 04 = 09
    queries = torch.tensor([digits(4, 7) + [PLUS] + digits(6, 5) + [SEP], digits(0, 5) + [PLUS] + digits(0, 4) + [SEP]])
    assert task.target(queries).tolist() == [digits(1, 2), digits(0, 9)]
    mod7 = ModularAddition(num_digits=2, modulus=7)  # 5 + 4 = 9 = 2 mod 7 -> "02"
    assert mod7.target(queries[1:]).tolist() == [digits(0, 2)]
    responses, mask = rows(digits(1, 2) + [EOS], digits(0, 8) + [EOS])
    torch.testing.assert_close(task.reward(queries, responses, mask), torch.tensor([1.0, 2 / 3]))


def test_queries_layout_and_determinism():
    task = ModularAddition(num_digits=3, modulus=500)
    queries = task.sample_queries(256, torch.Generator().manual_seed(0))
    assert queries.shape == (256, 8) and queries.dtype == torch.long
    assert (queries[:, 3] == PLUS).all() and (queries[:, 7] == SEP).all()
    a = ((queries[:, :3] - FIRST_SYMBOL) * torch.tensor([100, 10, 1])).sum(-1)  # first operand, as digits
    assert a.max() < 500 and a.min() >= 0
    assert torch.equal(queries, task.sample_queries(256, torch.Generator().manual_seed(0)))

    big = Copy(length=5, num_symbols=6, vocab_size=4096)  # distractor ids never appear in queries
    q = big.sample_queries(512, torch.Generator().manual_seed(1))
    symbols = q[:, :5]
    assert big.vocab_size == 4096 and symbols.min() == FIRST_SYMBOL and symbols.max() == FIRST_SYMBOL + 5
    assert (q[:, 5] == SEP).all() and big.response_len == 6 and big.query_dim == 6


def test_token_texts():
    assert ModularAddition(num_digits=1).token_texts == [None, "=", "+"] + [str(d) for d in range(10)]
    assert Copy(num_symbols=2, vocab_size=6).token_texts == [None, "=", "+", "a", "b", "c"]


@pytest.mark.parametrize(
    "build, option",
    [
        (lambda: Copy(length=0), "length"),
        (lambda: Copy(num_symbols=1), "num_symbols"),
        (lambda: Copy(num_symbols=8, vocab_size=10), "vocab_size"),
        (lambda: Reverse(length=4, max_new_tokens=4), "max_new_tokens"),
        (lambda: Sort(reward="binary"), "reward"),
        (lambda: Copy(length_penalty=-0.1), "length_penalty"),
        (lambda: ModularAddition(num_digits=10), "num_digits"),
        (lambda: ModularAddition(num_digits=1, modulus=11), "modulus"),
    ],
)
def test_bad_arguments_name_the_option(build, option):
    with pytest.raises(ConfigError, match=rf"^{option} must be"):
        build()
