"""Mean and 95 % interval of a figure repeated over seeds (and over test items), and how tables print them.

A hacker trained once says little on small data: retrieval moves by several points between
seeds. Every study table therefore reports the mean over seeds with the half-width of Student's
t interval (n - 1 degrees of freedom), and checks use the interval's bounds, not the mean. Where
the test set itself is small (one photo per person), `bootstrap_interval` also resamples the test
items, so that a single seed still gets an honest error bar.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Interval:
    """The mean of some values (one per seed) and its 95 % interval [low, high]: `symmetric` for a t interval
    (printed mean ± half-width), a percentile range for a bootstrap (printed [low, high]); [mean, mean] for one seed
    when no spread is known."""

    mean: float
    low: float
    high: float
    values: tuple[float, ...]
    symmetric: bool = True

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def format(self, digits: int = 1) -> str:
        """`12.3 ± 1.4` (symmetric), `12.3 [9.0, 16.1]` (a bootstrap interval) or `12.3` (no spread known)."""
        text = f"{self.mean:.{digits}f}"
        if self.high == self.low and len(self.values) < 2:
            return text
        if self.symmetric:
            return f"{text} ± {self.half_width:.{digits}f}"
        return f"{text} [{self.low:.{digits}f}, {self.high:.{digits}f}]"

    def to_dict(self) -> dict:
        return {"mean": self.mean, "ci95": self.half_width, "low": self.low, "high": self.high, "values": list(self.values)}


def interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean and t-interval half-width of `values` (one per seed)."""
    array = np.asarray(values, dtype=float)
    if array.size == 0:
        raise ValueError("an interval needs at least one value")
    mean = float(array.mean())
    if array.size == 1:
        return Interval(mean, mean, mean, (mean,))
    half = float(stats.t.ppf(0.5 + confidence / 2, array.size - 1) * array.std(ddof=1) / np.sqrt(array.size))
    return Interval(mean, mean - half, mean + half, tuple(float(v) for v in array))


def bootstrap_interval(scores: Sequence[Sequence[float]], confidence: float = 0.95, resamples: int = 4000, seed: int = 0,
                       scale: float = 100.0) -> Interval:
    """Mean and percentile interval of a per-item score (e.g. 1 where a test face is named right), resampling both
    the seeds and the test items: `scores[s][i]` is seed s's score on item i, the same items for every seed.

    Each resample draws seeds with replacement and, independently, items with replacement (the same items for
    all drawn seeds: they are one test set), so the interval covers both the training noise and the luck of a
    small test set. `values` holds each seed's mean, times `scale` (percent by default).
    """
    array = np.asarray(scores, dtype=float)
    if array.ndim != 2 or array.size == 0:
        raise ValueError("scores must be a non-empty seeds x items table")
    n_seeds, n_items = array.shape
    rng = np.random.default_rng(seed)
    seed_draws = rng.integers(n_seeds, size=(resamples, n_seeds))
    item_draws = rng.integers(n_items, size=(resamples, n_items))
    per_seed_means = array[:, item_draws].mean(axis=2).T  # resamples x seeds
    means = np.take_along_axis(per_seed_means, seed_draws, axis=1).mean(axis=1) * scale
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    per_seed = array.mean(axis=1) * scale
    return Interval(float(per_seed.mean()), float(low), float(high), tuple(float(v) for v in per_seed), symmetric=False)


def intervals(finals: Sequence[Mapping[str, float]], metrics: Sequence[str] | None = None) -> dict[str, Interval]:
    """Per metric, the interval over several runs' final metrics (every numeric metric the runs share by default)."""
    if not finals:
        raise ValueError("no runs to summarise")
    keys = metrics or [k for k, v in finals[0].items() if isinstance(v, (int, float)) and all(k in f for f in finals)]
    return {key: interval([f[key] for f in finals]) for key in keys}


def format_cell(value: Interval | float, metric: str) -> str:
    """A table cell (a value, or an interval over seeds): ranks (MedR) without decimals, recalls with one."""
    digits = 0 if metric.endswith("MedR") else 1
    return value.format(digits) if isinstance(value, Interval) else f"{value:.{digits}f}"
