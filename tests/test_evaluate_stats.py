"""Bootstrap intervals and paired comparisons: coverage in seeded simulations, pairing, significance."""

from __future__ import annotations

import math

import numpy as np

from components.evaluate.stats import Measure, interval, paired_difference, scored
from components.report import intervals_apart


def test_the_95_interval_covers_the_true_pass_rate_in_at_least_90_percent_of_simulations() -> None:
    rng = np.random.default_rng(7)
    for rate, problems in ((0.1, 164), (0.35, 100), (0.6, 60)):
        covered = 0
        for seed in range(200):
            outcomes = rng.random(problems) < rate
            measure = Measure.mean("pass_at_1", [str(i) for i in range(problems)], outcomes.astype(float))
            low, high = interval(measure, 500, 0.95, seed)
            covered += low <= rate <= high
        assert covered / 200 >= 0.90, (rate, covered)


def test_bits_per_byte_is_a_ratio_of_sums_with_its_interval_around_it() -> None:
    nats, nbytes = [2.0, 8.0, 30.0], [10, 10, 40]
    measure = Measure.bits_per_byte("val.bpb", ["a", "b", "c"], nats, nbytes)
    assert math.isclose(measure.value, 40 / 60 / math.log(2))
    scores = scored(measure, 300, 0.95, 0)
    assert (
        scores["val.bpb.ci_low"] <= scores["val.bpb"] <= scores["val.bpb.ci_high"]
        and scores["val.bpb.n"] == 3
    )


def test_a_consistent_small_improvement_is_significant_only_when_paired() -> None:
    # Documents differ a lot in difficulty; the second model is 2% better on every one of them.
    rng = np.random.default_rng(0)
    ids, nbytes = [str(i) for i in range(120)], rng.integers(200, 2000, 120)
    nats = nbytes * rng.uniform(0.5, 2.5, 120)
    before = Measure.bits_per_byte("val.bpb", ids, nats, nbytes)
    after = Measure.bits_per_byte("val.bpb", ids, nats * 0.98, nbytes)
    compared = paired_difference(before, after, 1000, 0.95, 1)
    assert compared["significant"] and compared["verdict"] == "better" and compared["ci_high"] < 0
    separate = (interval(before, 1000, 0.95, 1), interval(after, 1000, 0.95, 2))
    assert not intervals_apart(*separate)  # their own intervals overlap: only pairing sees the difference


def test_noise_alone_is_within_the_interval() -> None:
    rng = np.random.default_rng(3)
    ids = [str(i) for i in range(150)]
    first = Measure.mean("pass_at_1", ids, (rng.random(150) < 0.3).astype(float))
    second = Measure.mean("pass_at_1", ids, (rng.random(150) < 0.3).astype(float))
    assert not paired_difference(first, second, 1000, 0.95, 0)["significant"]
