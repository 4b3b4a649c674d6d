"""Pure statistics of a study: 95% intervals over seeds, smoothing, one run's summary, plot bands."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

#: Two-sided 95% Student-t quantiles t_{0.975, df} for df = 1..30.
T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
    2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)
Z975 = 1.959964


def t_quantile(df: int) -> float:
    """t_{0.975, df}: table up to 30, Cornish-Fisher expansion beyond (error < 1e-3)."""
    if df <= len(T975):
        return T975[df - 1]
    z = Z975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """Mean and 95% confidence half-width t_{0.975, n−1} · sd / √n of the finite values (NaN where undefined)."""
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return math.nan, math.nan
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan
    return mean, t_quantile(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def trailing_mean(values: Sequence[float], window: int) -> list[float]:
    """s_k = mean(values[k−window+1 .. k]), over fewer values at the start."""
    return [statistics.fmean(values[max(0, k - window + 1) : k + 1]) for k in range(len(values))]


@dataclass
class RunSummary:
    """What one run's logged reward and entropy say (see :mod:`sapo_lightning.compare`)."""

    steps_to_threshold: float  # NaN: never reached
    final: float
    best: float
    collapse_step: float  # NaN: no collapse
    final_entropy: float
    reported: dict[str, float] = field(default_factory=dict)  # tag -> its last logged value (NaN: never logged)

    @property
    def collapsed(self) -> bool:
        return math.isfinite(self.collapse_step)


def summarise_run(
    steps: Sequence[int], reward: Sequence[float], entropy: Sequence[float], threshold: float, margin: float,
    window: int,
) -> RunSummary:
    """Summary of one run from its logged reward (and entropy) series."""
    if not reward:
        return RunSummary(math.nan, math.nan, math.nan, math.nan, math.nan)
    s = trailing_mean(reward, window)
    running_best = [max(s[: k + 1]) for k in range(len(s))]
    reached = next((steps[k] for k, v in enumerate(s) if v >= threshold), math.nan)
    collapse = math.nan
    for k in reversed(range(len(s))):  # walk back while the run stays below its running best
        if s[k] < running_best[k] - margin:
            collapse = steps[k]
        else:
            break
    final_entropy = trailing_mean(entropy, window)[-1] if entropy else math.nan
    return RunSummary(reached, s[-1], max(s), collapse, final_entropy)


def final_values(scalars: Mapping[str, tuple[Sequence[int], Sequence[float]]], tags: Iterable[str]) -> dict[str, float]:
    """The last logged value of each tag; NaN for a tag the run never logged."""
    return {tag: scalars[tag][1][-1] if tag in scalars and scalars[tag][1] else math.nan for tag in tags}


def seed_band(
    curves: Sequence[tuple[Sequence[int], Sequence[float]]],
) -> tuple[list[int], list[float], list[float], list[float]]:
    """Mean and 95% band over seeds at the steps every curve logged: (steps, mean, low, high).

    The band is mean ± t_{0.975, n−1} · sd / √n clipped to the seeds' [min, max] at that
    step, so it never leaves the range the values took (a reward in [0, 1], an entropy >= 0).
    With one seed, or where the values agree, it is the mean line itself.
    """
    if not curves:
        return [], [], [], []
    steps = sorted(set.intersection(*(set(s) for s, _ in curves)))
    at = [dict(zip(s, v)) for s, v in curves]
    means, lows, highs = [], [], []
    for t in steps:
        values = [a[t] for a in at if math.isfinite(a[t])]
        mean, half = mean_ci(values)
        half = half if math.isfinite(half) else 0.0
        means.append(mean)
        lows.append(max(mean - half, min(values)) if values else math.nan)
        highs.append(min(mean + half, max(values)) if values else math.nan)
    return steps, means, lows, highs
