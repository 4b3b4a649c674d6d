"""Seeds derived from integer keys, so every stream is a pure function of (seed, rank, index, stream)."""

from __future__ import annotations

_MASK = (1 << 63) - 1
QUERY_STREAM, ROLLOUT_STREAM, VALIDATION_STREAM, TEST_STREAM, REFILL_STREAM = 0, 1, 2, 3, 4
EVAL_STREAMS = {"val": VALIDATION_STREAM, "test": TEST_STREAM}


def derive_seed(*keys: int) -> int:
    """Mix integer keys (seed, rank, step, stream...) into one 63-bit seed (splitmix64)."""
    x = 0x9E3779B97F4A7C15
    for key in keys:
        x = (x ^ (key & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x = (x ^ (x >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 29
    return x & _MASK
