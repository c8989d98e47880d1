"""``ember.util.joblib``: joblib's ``Parallel`` (and so scikit-learn's ``n_jobs``) on the cluster.

    from ember.util.joblib import register_ray
    register_ray()
    with joblib.parallel_backend("ray"):
        GridSearchCV(...).fit(X, y)

As Ray's ``ray.util.joblib``. Needs joblib: ``pip install 'ember[joblib]'``.
"""

from __future__ import annotations


def register_ray() -> None:
    """Register the ``"ray"`` joblib backend (also under the name ``"ember"``)."""
    try:
        from joblib.parallel import register_parallel_backend
    except ImportError as exc:
        raise ImportError(
            "ember.util.joblib needs joblib: pip install 'ember[joblib]' (or pip install joblib)"
        ) from exc
    from ember.util.joblib.ray_backend import RayBackend

    register_parallel_backend("ray", RayBackend)
    register_parallel_backend("ember", RayBackend)


__all__ = ["register_ray"]
