"""Fixed-point resource arithmetic (no processes)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ember._private import resources as res


def test_fractions_do_not_drift():
    total = res.to_fixed({"CPU": 1.0})
    available = dict(total)
    tenth = res.to_fixed({"CPU": 0.1})
    for _ in range(10):
        res.subtract(available, tenth)
    assert available["CPU"] == 0
    for _ in range(10):
        res.add(available, tenth)
    assert available == total
    assert res.to_fixed({"x": 0.1})["x"] + res.to_fixed({"x": 0.2})["x"] == res.to_fixed({"x": 0.3})["x"]


def test_granularity_is_one_ten_thousandth():
    assert res.to_fixed({"CPU": 0.0001}) == {"CPU": 1}
    assert res.to_fixed({"CPU": 1}) == {"CPU": res.UNIT}
    assert res.to_float({"CPU": 5000}) == {"CPU": 0.5}


def test_zero_amounts_are_dropped_and_negatives_rejected():
    assert res.to_fixed({"CPU": 0, "GPU": 0.0, "mem": 1}) == {"mem": res.UNIT}
    with pytest.raises(ValueError, match="'CPU' must not be negative"):
        res.to_fixed({"CPU": -1})


def test_fits():
    available = res.to_fixed({"CPU": 1.5, "GPU": 1})
    assert res.fits(res.to_fixed({"CPU": 1.5}), available)
    assert res.fits(res.to_fixed({"CPU": 0.5, "GPU": 1}), available)
    assert res.fits({}, available)
    assert not res.fits(res.to_fixed({"CPU": 1.5001}), available)
    assert not res.fits(res.to_fixed({"custom": 1}), available)


def test_describe():
    assert res.describe(res.to_fixed({"GPU": 0.5, "CPU": 2})) == "{CPU: 2, GPU: 0.5}"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=10_000).map(lambda n: n / 10_000), min_size=1, max_size=30))
def test_subtracting_then_adding_back_restores_exactly(amounts):
    available = res.to_fixed({"CPU": 1000})
    start = dict(available)
    requests = [res.to_fixed({"CPU": a}) for a in amounts]
    for r in requests:
        assert res.fits(r, available)
        res.subtract(available, r)
    assert available["CPU"] == start["CPU"] - sum(r["CPU"] for r in requests)
    for r in reversed(requests):
        res.add(available, r)
    assert available == start
