"""The garbage collector's young-generation threshold in Ember's processes and a connected driver."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

import ember
from ember._private.collector import raise_young_threshold, restore_threshold


@pytest.fixture
def thresholds() -> Iterator[None]:
    before = gc.get_threshold()
    try:
        yield
    finally:
        gc.set_threshold(*before)


def test_raised_then_restored(thresholds, ember_env):
    ember_env(gc_young_threshold=5000)
    gc.set_threshold(700, 11, 12)
    before = raise_young_threshold()
    assert before == (700, 11, 12) and gc.get_threshold() == (5000, 11, 12)
    restore_threshold(before)
    assert gc.get_threshold() == (700, 11, 12)


@pytest.mark.parametrize("program, setting", [((0, 10, 10), 5000), ((700, 10, 10), 0), ((9000, 10, 10), 5000)])
def test_left_alone_when_off_or_already_higher(thresholds, ember_env, program, setting):
    ember_env(gc_young_threshold=setting)
    gc.set_threshold(*program)
    assert raise_young_threshold() is None and gc.get_threshold() == program


def test_a_change_the_program_made_meanwhile_is_kept(thresholds, ember_env):
    ember_env(gc_young_threshold=5000)
    gc.set_threshold(700, 10, 10)
    before = raise_young_threshold()
    gc.set_threshold(100, 10, 10)
    restore_threshold(before)
    assert gc.get_threshold() == (100, 10, 10)


@ember.remote
def _worker_threshold() -> int:
    return gc.get_threshold()[0]


def test_workers_and_the_connected_driver_use_it(thresholds, ember_start):
    from ember._private.config import config

    gc.set_threshold(700, 10, 10)
    ember_start()
    wanted = config().gc_young_threshold
    assert gc.get_threshold()[0] == wanted
    assert ember.get(_worker_threshold.remote()) == wanted
    ember.shutdown()
    assert gc.get_threshold() == (700, 10, 10)
