"""joblib's ``"ray"`` backend (``ember.util.joblib.register_ray``) and scikit-learn on it."""

from __future__ import annotations

import os

import joblib
import numpy as np
import pytest
from joblib import Parallel, delayed
from sklearn.datasets import load_iris
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.tree import DecisionTreeClassifier

import ember
from ember.util.joblib import register_ray

GRID = {"max_depth": [1, 2, 3], "min_samples_leaf": [1, 5]}


def square_and_pid(x):
    return x * x, os.getpid()


def fails_on_three(x):
    if x == 3:
        raise ArithmeticError("three")
    return x


def test_parallel_runs_on_the_cluster(ember_shared):
    register_ray()
    with joblib.parallel_backend("ray"):
        out = Parallel(n_jobs=2)(delayed(square_and_pid)(i) for i in range(50))
    assert [v for v, _ in out] == [i * i for i in range(50)]
    assert os.getpid() not in {pid for _, pid in out}
    with joblib.parallel_backend("ember", n_jobs=-1):
        assert Parallel()(delayed(abs)(-i) for i in range(5)) == [0, 1, 2, 3, 4]


def test_errors_keep_their_type(ember_shared):
    register_ray()
    with joblib.parallel_backend("ray"), pytest.raises(ArithmeticError, match="three"):
        Parallel(n_jobs=2)(delayed(fails_on_three)(i) for i in range(6))


def test_grid_search_and_cross_val_score_match_the_default_backend(ember_shared):
    X, y = load_iris(return_X_y=True)
    # joblib's default backend (n_jobs=None: in this process; loky's worker processes would
    # outlive the test, and give the same numbers).
    default = GridSearchCV(DecisionTreeClassifier(random_state=0), GRID, cv=3).fit(X, y)
    default_scores = cross_val_score(DecisionTreeClassifier(random_state=0), X, y, cv=3)
    register_ray()
    with joblib.parallel_backend("ray"):
        ours = GridSearchCV(DecisionTreeClassifier(random_state=0), GRID, cv=3, n_jobs=-1).fit(X, y)
        our_scores = cross_val_score(DecisionTreeClassifier(random_state=0), X, y, cv=3, n_jobs=-1)
    assert ours.best_params_ == default.best_params_
    assert ours.best_score_ == default.best_score_
    for key in ("mean_test_score", "std_test_score", "rank_test_score"):
        np.testing.assert_array_equal(ours.cv_results_[key], default.cv_results_[key])
    np.testing.assert_array_equal(our_scores, default_scores)


def test_cross_val_score_inside_a_task(ember_shared):
    X, y = load_iris(return_X_y=True)
    expected = cross_val_score(DecisionTreeClassifier(random_state=0), X, y, cv=3).tolist()

    @ember.remote
    def score_in_a_task():
        register_ray()
        with joblib.parallel_backend("ray"):
            return cross_val_score(DecisionTreeClassifier(random_state=0), X, y, cv=3, n_jobs=-1).tolist()

    assert ember.get(score_in_a_task.remote(), timeout=120) == expected
