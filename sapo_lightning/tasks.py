"""Tasks: where queries come from and how responses are rewarded."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from sapo_lightning.checks import check_choice, check_int, check_number, fail
from sapo_lightning.rollout import Rollout
from sapo_lightning.seeds import EVAL_STREAMS, QUERY_STREAM, derive_seed


class Rewards(NamedTuple):
    """What a task's rewards are made of."""

    total: Tensor  # [N] float, the reward the advantages are computed from
    terms: dict[str, Tensor]  # name -> [N] float, each reward function's own value (NaN: does not apply)


class Task:
    """A task draws queries and scores responses.

    Queries are whatever the task's policies read: a tensor ``[n, query_dim]`` for the
    synthetic tasks. A task samples them from a generator (:meth:`sample_queries`); a task
    backed by a dataset overrides :meth:`train_batch`, :meth:`eval_rows` and :meth:`collate`.

    Attributes every task sets:
        vocab_size: Number of token ids a response may contain.
        response_len: Tokens per response T (the maximum, where responses can end early).
        eos_token: Token id that ends a response, or None for fixed-length responses.
        query_dim: Width of a query: features of a state query, or tokens of a token query.
        query_dtype: ``torch.float32`` for state queries, ``torch.long`` for token queries.
    """

    vocab_size: int
    response_len: int
    eos_token: int | None = None
    query_dim: int
    query_dtype: torch.dtype = torch.float32

    def sample_queries(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` queries ``[n, query_dim]``, drawn from ``generator`` alone."""
        raise NotImplementedError

    def train_batch(self, index: int, batch_size: int, seed: int, rank: int, world_size: int) -> Any:
        """The queries of training batch ``index`` of ``rank``: a pure function of the arguments."""
        generator = torch.Generator().manual_seed(derive_seed(seed, rank, index, QUERY_STREAM))
        return self.sample_queries(batch_size, generator)

    def eval_rows(self, stage: str, size: int, seed: int) -> Sequence[Any]:
        """The fixed ``val`` or ``test`` queries, one item per query (:meth:`collate` batches them)."""
        generator = torch.Generator().manual_seed(derive_seed(seed, EVAL_STREAMS[stage]))
        return list(self.sample_queries(size, generator))

    def collate(self, rows: Sequence[Any]) -> Any:
        """A batch of queries from items of :meth:`eval_rows`."""
        return torch.stack(list(rows))

    def sample(self, policy: Any, queries: Any, generator: torch.Generator | None = None,
               greedy: bool = False) -> tuple[Any, Rollout]:
        """One response per query from ``policy`` (argmax tokens when ``greedy``): the queries the responses
        answer, and the rollout. A task of episodes runs them here, and returns the prompts its
        environments opened them with."""
        return queries, policy.sample(queries, generator, greedy)

    def reward(self, queries: Tensor, responses: Tensor, mask: Tensor) -> Tensor:
        """Reward ``[N]`` float of responses ``[N, T]`` (mask ``[N, T]``) to queries ``[N, ...]``."""
        raise NotImplementedError

    def rewards(self, queries: Any, rollout: Rollout) -> Rewards:
        """The reward of each response of ``rollout`` and its terms (one per reward function; none for a
        single built-in reward)."""
        return Rewards(self.reward(queries, rollout.responses, rollout.mask), {})

    def exact_match(self, queries: Tensor, responses: Tensor, mask: Tensor) -> Tensor:
        """``[N]`` bool: the response is entirely correct."""
        raise NotImplementedError

    def evaluate(self, queries: Any, rollout: Rollout) -> dict[str, Tensor]:
        """Per-response values ``[N]`` float that evaluation averages and logs as ``val/<name>``."""
        return {
            "reward": self.reward(queries, rollout.responses, rollout.mask),
            "exact_match": self.exact_match(queries, rollout.responses, rollout.mask).float(),
        }


class FixedTarget(Task):
    """The seed notebook's task: produce one fixed token sequence whatever the query.

    Queries are standard-normal state vectors (the seed's "random query states"); the reward
    is the fraction of positions equal to the target, so random play scores 1 / vocab_size.

    Args:
        target: Token ids to produce, e.g. ``[2, 5, 7, 3, 1]``. Its length is the response length.
        vocab_size: Number of token ids; every target token must be below it.
        query_dim: Features per query state; defaults to ``len(target)`` as in the seed.
    """

    def __init__(self, target: list[int], vocab_size: int = 10, query_dim: int | None = None) -> None:
        check_int("vocab_size", vocab_size, 2)
        if not target:
            fail("target", "a list of at least one token id", target)
        bad = [t for t in target if not isinstance(t, int) or not 0 <= t < vocab_size]
        if bad:
            fail("target", f"token ids, integers in [0, vocab_size={vocab_size})", bad)
        check_int("query_dim", query_dim, 1, allow_none=True)
        self.target = list(target)
        self.vocab_size = vocab_size
        self.response_len = len(target)
        self.query_dim = query_dim or len(target)
        self._target = torch.tensor(self.target)  # [T]

    def sample_queries(self, n: int, generator: torch.Generator) -> Tensor:
        return torch.randn(n, self.query_dim, generator=generator)  # [n, D]

    def _matches(self, responses: Tensor) -> Tensor:
        if self._target.device != responses.device:
            self._target = self._target.to(responses.device)
        return responses == self._target  # [N, T]

    def reward(self, queries: Tensor, responses: Tensor, mask: Tensor) -> Tensor:
        return self._matches(responses).float().mean(-1)  # [N]

    def exact_match(self, queries: Tensor, responses: Tensor, mask: Tensor) -> Tensor:
        return self._matches(responses).all(-1)  # [N]


# -- query-conditioned tasks ----------------------------------------------------------------
#: Token ids every sequence task reserves. Queries and answers never use them as symbols.
EOS = 0  # ends a response; a response's mask covers it
SEP = 1  # ends a query ("="): the answer starts after it
PLUS = 2  # separates the operands of ModularAddition ("+")
FIRST_SYMBOL = 3  # symbol s (digit, letter...) is token FIRST_SYMBOL + s
REWARDS = ("partial", "exact")


def _symbol_text(symbol: int) -> str:
    """Text of symbol s for a tokenizer: a-z, A-Z, then <s>."""
    letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return letters[symbol] if symbol < len(letters) else f"<{symbol}>"


class SequenceTask(Task):
    """A task whose answer is a token sequence computed from the query (a verifiable reward).

    The query is a row of token ids ending in ``SEP``; the correct response is
    ``target(query)`` (L tokens) followed by ``EOS``. Token ids: 0 = EOS, 1 = SEP, 2 = PLUS,
    symbols from 3; ids the task never uses (up to ``vocab_size``) are distractors the
    policy may still emit, for the large-vocabulary regime.

    Rewards, with |y| the response length (its mask, EOS included) and y* = target + EOS:
        - ``partial``: (1 / (L+1)) Σ_{t ≤ L} [y_t = y*_t]  (share of positions right)
        - ``exact``: 1 if y = y* else 0  (binary, as in verifiable-reward RL)
        - minus ``length_penalty`` · max(0, |y| − (L+1)) for every token past y*'s length.
    ``exact_match`` is the binary criterion whatever the reward.
    """

    query_dtype = torch.long
    eos_token = EOS
    target_len: int

    def __init__(
        self, num_symbols: int, vocab_size: int | None, max_new_tokens: int | None, reward: str, length_penalty: float
    ) -> None:
        needed = FIRST_SYMBOL + num_symbols
        self.vocab_size = needed if vocab_size is None else check_int("vocab_size", vocab_size, needed)
        min_len = self.target_len + 1
        self.response_len = min_len if max_new_tokens is None else check_int("max_new_tokens", max_new_tokens, min_len)
        self.reward_mode = check_choice("reward", reward, REWARDS)
        self.length_penalty = check_number("length_penalty", length_penalty, 0)

    def target(self, queries: Tensor) -> Tensor:
        """The correct answer ``[N, L]`` (without EOS) to each query ``[N, query_dim]``."""
        raise NotImplementedError

    @property
    def token_texts(self) -> list[str | None]:
        """Text of each token id, for mapping onto a tokenizer's vocabulary (None: the tokenizer's EOS)."""
        reserved = [None, "=", "+"]
        return reserved + [_symbol_text(s) for s in range(self.vocab_size - FIRST_SYMBOL)]

    def _scores(self, queries: Tensor, responses: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        target = self.target(queries)  # [N, L]
        eos = target.new_full((target.shape[0], 1), EOS)
        expected = torch.cat([target, eos], 1)  # [N, L+1]
        n = expected.shape[1]
        right = (responses[:, :n] == expected) & mask[:, :n]  # [N, L+1]
        length = mask.sum(-1)  # [N]
        exact = right.all(-1) & (length == n)  # [N]
        return right, exact, length

    def reward(self, queries: Tensor, responses: Tensor, mask: Tensor) -> Tensor:
        right, exact, length = self._scores(queries, responses, mask)
        score = right.float().mean(-1) if self.reward_mode == "partial" else exact.float()  # [N]
        excess = (length - right.shape[1]).clamp(min=0)  # [N]
        return score - self.length_penalty * excess

    def exact_match(self, queries: Tensor, responses: Tensor, mask: Tensor) -> Tensor:
        return self._scores(queries, responses, mask)[1]


class _SymbolTask(SequenceTask):
    """Queries of ``length`` random symbols then SEP; subclasses say what the answer is."""

    def __init__(
        self,
        length: int = 4,
        num_symbols: int = 8,
        vocab_size: int | None = None,
        max_new_tokens: int | None = None,
        reward: str = "partial",
        length_penalty: float = 0.0,
    ) -> None:
        self.length = check_int("length", length, 1)
        self.num_symbols = check_int("num_symbols", num_symbols, 2)
        self.target_len = length
        self.query_dim = length + 1
        super().__init__(num_symbols, vocab_size, max_new_tokens, reward, length_penalty)

    def sample_queries(self, n: int, generator: torch.Generator) -> Tensor:
        symbols = torch.randint(FIRST_SYMBOL, FIRST_SYMBOL + self.num_symbols, (n, self.length), generator=generator)
        return torch.cat([symbols, torch.full((n, 1), SEP)], 1)  # [n, length + 1]


class Copy(_SymbolTask):
    """Repeat the query: ``a b c =`` → ``a b c EOS``.

    Args:
        length: Symbols per query (L).
        num_symbols: Distinct symbols queries draw from (ids 3 .. 3 + num_symbols − 1).
        vocab_size: Token ids the policy chooses from; default 3 + num_symbols. Larger
            values add distractor ids that never appear in a query (e.g. 4096).
        max_new_tokens: Response length bound T; default L + 1 (the answer and EOS).
        reward: ``partial`` (share of positions right) or ``exact`` (binary).
        length_penalty: Reward subtracted per response token past L + 1 (>= 0).
    """

    def target(self, queries: Tensor) -> Tensor:
        return queries[:, : self.length]


class Reverse(_SymbolTask):
    """Reverse the query: ``a b c =`` → ``c b a EOS``. Arguments as :class:`Copy`."""

    def target(self, queries: Tensor) -> Tensor:
        return queries[:, : self.length].flip(-1)


class Sort(_SymbolTask):
    """Sort the query's symbols ascending: ``c a b =`` → ``a b c EOS``. Arguments as :class:`Copy`."""

    def target(self, queries: Tensor) -> Tensor:
        return queries[:, : self.length].sort(-1).values


class ModularAddition(SequenceTask):
    """(a + b) mod m in decimal digits: ``0 7 + 0 5 =`` → ``1 2 EOS`` (num_digits=2).

    Operands a, b are uniform in [0, m), written most significant digit first with
    ``num_digits`` digits (leading zeros); so is the answer. Digit d is token 3 + d.

    Args:
        num_digits: Digits per number, in [1, 9].
        modulus: m, in [2, 10**num_digits]; default 10**num_digits (the carry out is dropped).
        vocab_size: Token ids the policy chooses from; default 13 (3 reserved + 10 digits).
        max_new_tokens: Response length bound T; default num_digits + 1.
        reward: ``partial`` (share of digits right) or ``exact`` (binary).
        length_penalty: Reward subtracted per response token past num_digits + 1 (>= 0).
    """

    def __init__(
        self,
        num_digits: int = 2,
        modulus: int | None = None,
        vocab_size: int | None = None,
        max_new_tokens: int | None = None,
        reward: str = "partial",
        length_penalty: float = 0.0,
    ) -> None:
        self.num_digits = check_int("num_digits", num_digits, 1, 9)
        self.modulus = 10**num_digits if modulus is None else check_int("modulus", modulus, 2, 10**num_digits)
        self.target_len = num_digits
        self.query_dim = 2 * num_digits + 2
        self._places = 10 ** torch.arange(num_digits - 1, -1, -1)  # [D]: 10^(D-1) .. 1
        super().__init__(10, vocab_size, max_new_tokens, reward, length_penalty)

    @property
    def token_texts(self) -> list[str | None]:
        texts = super().token_texts
        texts[FIRST_SYMBOL : FIRST_SYMBOL + 10] = [str(d) for d in range(10)]
        return texts

    def _digits(self, numbers: Tensor) -> Tensor:  # [N] -> [N, D] tokens
        return FIRST_SYMBOL + numbers.unsqueeze(-1) // self._places.to(numbers.device) % 10

    def _number(self, tokens: Tensor) -> Tensor:  # [N, D] tokens -> [N]
        return ((tokens - FIRST_SYMBOL) * self._places.to(tokens.device)).sum(-1)

    def sample_queries(self, n: int, generator: torch.Generator) -> Tensor:
        a, b = torch.randint(0, self.modulus, (2, n), generator=generator)
        sep = torch.full((n, 1), SEP)
        return torch.cat([self._digits(a), torch.full((n, 1), PLUS), self._digits(b), sep], 1)  # [n, 2D + 2]

    def target(self, queries: Tensor) -> Tensor:
        d = self.num_digits
        a, b = self._number(queries[:, :d]), self._number(queries[:, d + 1 : 2 * d + 1])
        return self._digits((a + b) % self.modulus)
