"""``ember.util.dask``: Dask graphs computed by Ember tasks give Dask's own results."""

from __future__ import annotations

import os

import dask
import dask.array as da
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

from ember.util.dask import disable_dask_on_ray, enable_dask_on_ray, ray_dask_get, ray_dask_get_sync


def pid_of(_):
    return os.getpid()


def divide(a, b):
    return a / b


def test_array_reduction_matches_dasks_scheduler(ember_shared):
    x = da.arange(60_000, chunks=6_000).reshape(600, 100)
    expr = (x ** 2 - x).sum(axis=0) / (x.std() + 1)
    np.testing.assert_array_equal(expr.compute(scheduler=ray_dask_get), expr.compute(scheduler="sync"))
    assert float(x.mean().compute(scheduler=ray_dask_get_sync)) == float(x.mean().compute(scheduler="threads"))


def test_dataframe_groupby_matches_dasks_scheduler(ember_shared):
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"k": rng.integers(0, 9, 2_000), "v": rng.random(2_000), "w": np.arange(2_000)})
    ddf = dd.from_pandas(df, npartitions=5)
    query = ddf[ddf.w % 3 != 0].groupby("k").agg({"v": ["sum", "mean", "count"], "w": "max"})
    with enable_dask_on_ray():
        assert dask.config.get("scheduler") is ray_dask_get
        ours = query.compute()
    assert dask.config.get("scheduler", None) is not ray_dask_get  # the with block ended it
    pd.testing.assert_frame_equal(ours, query.compute(scheduler="sync"))
    enable_dask_on_ray()
    try:
        assert dask.config.get("scheduler") is ray_dask_get
    finally:
        disable_dask_on_ray()
    assert dask.config.get("scheduler", None) is None


def test_tasks_run_in_cluster_processes_and_errors_keep_their_type(ember_shared):
    pids = dask.compute(*[dask.delayed(pid_of)(i) for i in range(4)], scheduler=ray_dask_get)
    assert os.getpid() not in pids
    with pytest.raises(ZeroDivisionError) as info:
        dask.delayed(divide)(1, 0).compute(scheduler=ray_dask_get)
    assert type(info.value) is ZeroDivisionError
