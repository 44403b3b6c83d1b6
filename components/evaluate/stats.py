"""Scores with seeded bootstrap intervals, and paired comparisons of two models on the same items.

A score is a ratio of sums over items (problems, held-out documents, completed lines): pass@k is the mean
of per-problem values (denominators 1), bits per byte is the sum of nats over the sum of bytes (times
1/ln 2), so a long document weighs as its bytes. The interval is the percentile bootstrap over items
(``resamples`` draws of n items with replacement, seeded). Two models scored on the same items are
compared on the *paired* bootstrap of their difference (the same draws for both): a difference is
marked significant when that interval excludes 0. Models measured on different runs (ablation arms,
whose per-item values are not at hand) are compared by their intervals: a difference counts only when
the intervals do not overlap (docs/evaluation.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

LN2 = math.log(2)


@dataclass(frozen=True)
class Measure:
    """One score over items: per-item numerators and denominators, and how to read it."""

    name: str
    item_ids: tuple[str, ...]
    numerators: np.ndarray
    denominators: np.ndarray
    #: Multiplies the ratio (1/ln 2 turns nats per byte into bits per byte).
    scale: float = 1.0
    higher_is_better: bool = True
    extra: dict[str, float] = field(default_factory=dict)

    @classmethod
    def mean(
        cls, name: str, item_ids: Sequence[str], values: Sequence[float], higher: bool = True
    ) -> Measure:
        """The mean of per-item ``values`` (e.g. pass@k per problem)."""
        return cls(name, tuple(item_ids), np.asarray(values, float), np.ones(len(values)), 1.0, higher)

    @classmethod
    def bits_per_byte(
        cls, name: str, item_ids: Sequence[str], nats: Sequence[float], nbytes: Sequence[int]
    ) -> Measure:
        """Bits per byte over items with their summed nats and their bytes (lower is better)."""
        return cls(name, tuple(item_ids), np.asarray(nats, float), np.asarray(nbytes, float), 1 / LN2, False)

    @property
    def value(self) -> float:
        """The score over all items."""
        return float(self.numerators.sum() / self.denominators.sum() * self.scale)

    def resampled(self, draws: np.ndarray) -> np.ndarray:
        """The score of each bootstrap draw (a row of item indices)."""
        return self.numerators[draws].sum(axis=1) / self.denominators[draws].sum(axis=1) * self.scale


def bootstrap_draws(items: int, resamples: int, seed: int) -> np.ndarray:
    """``resamples`` rows of ``items`` indices drawn with replacement (seeded)."""
    return np.random.default_rng(seed).integers(0, items, size=(resamples, items))


def percentile_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """The central ``confidence`` interval of ``values``."""
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def interval(measure: Measure, resamples: int, confidence: float, seed: int) -> tuple[float, float]:
    """The percentile bootstrap interval of ``measure`` over its items."""
    if len(measure.item_ids) < 2:
        return measure.value, measure.value
    return percentile_interval(
        measure.resampled(bootstrap_draws(len(measure.item_ids), resamples, seed)), confidence
    )


def scored(measure: Measure, resamples: int, confidence: float, seed: int) -> dict[str, float]:
    """``{name: value, name.ci_low, name.ci_high, name.n}``: the flat keys of ``reports/eval.json``."""
    low, high = interval(measure, resamples, confidence, seed)
    return {
        measure.name: measure.value,
        f"{measure.name}.ci_low": low,
        f"{measure.name}.ci_high": high,
        f"{measure.name}.n": float(len(measure.item_ids)),
        **{f"{measure.name}.{key}": value for key, value in measure.extra.items()},
    }


def paired_difference(
    before: Measure, after: Measure, resamples: int, confidence: float, seed: int
) -> dict[str, float | bool | str]:
    """``after - before`` on the same items, its paired bootstrap interval, and whether it is significant
    (the interval excludes 0) and an improvement. ValueError when the items differ."""
    if before.item_ids != after.item_ids:
        raise ValueError(f"{before.name}: the two models were scored on different items")
    difference = after.value - before.value
    low = high = difference
    if len(before.item_ids) >= 2:
        draws = bootstrap_draws(len(before.item_ids), resamples, seed)
        low, high = percentile_interval(after.resampled(draws) - before.resampled(draws), confidence)
    significant = low > 0 or high < 0
    better = difference > 0 if before.higher_is_better else difference < 0
    verdict = ("better" if better else "worse") if significant else "within the interval"
    return {
        "difference": difference,
        "ci_low": low,
        "ci_high": high,
        "significant": significant,
        "verdict": verdict,
    }
