"""benchmarks/training/heldout_loss.py: the paired comparison that decides a release."""

from __future__ import annotations

import numpy as np
import pytest

@pytest.fixture(scope="module")
def heldout(benchmark_script):
    return benchmark_script("training/heldout_loss.py")


def test_paired_difference_of_a_uniform_gain_is_exact(heldout):
    other = np.linspace(100, 900, 50)
    d = heldout.paired_difference(other - 3.0, other)
    assert d["mean"] == pytest.approx(-3.0) and d["low"] == pytest.approx(-3.0) and d["high"] == pytest.approx(-3.0)
    assert d["share_better"] == 1.0


def test_paired_difference_sees_a_small_gain_under_large_spread_between_documents(heldout):
    # documents differ by hundreds of nats, the runs by 2 +- 1: the unpaired spread would hide it
    rng = np.random.default_rng(0)
    other = rng.uniform(50, 1500, 400)
    candidate = other - 2.0 + rng.normal(0, 1, 400)
    d = heldout.paired_difference(candidate, other)
    assert d["high"] < 0 and d["low"] < d["mean"] < d["high"]
    assert 0.9 < d["share_better"] <= 1.0


def test_paired_difference_of_noise_straddles_zero(heldout):
    rng = np.random.default_rng(1)
    other = rng.uniform(50, 1500, 400)
    d = heldout.paired_difference(other + rng.normal(0, 5, 400), other)
    assert d["low"] < 0 < d["high"]
