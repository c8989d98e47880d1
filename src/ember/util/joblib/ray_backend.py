"""``RayBackend``: a joblib parallel backend whose workers are an ``ember.util.multiprocessing.Pool``.

joblib hands the backend batches of calls (``AutoBatchingMixin`` sizes them from
their measured duration) and a callback per batch; the pool runs each batch as one
actor call and completes it on its result thread. ``n_jobs=-1`` means the cluster's
CPUs (not this machine's), so a cluster of several nodes is used whole.
"""

from __future__ import annotations

from typing import Any

from joblib._parallel_backends import AutoBatchingMixin, PoolManagerMixin
from joblib.parallel import ParallelBackendBase

import ember
from ember.util.multiprocessing import Pool


class RayBackend(PoolManagerMixin, AutoBatchingMixin, ParallelBackendBase):  # type: ignore[misc]  # joblib ships no types
    """joblib's backend API over ``ember.util.multiprocessing.Pool``.

    Args (through ``joblib.parallel_backend("ray", ...)``):
        ray_remote_args: options of the pool's actors (``num_cpus``, ``resources``, ...).
    """

    _pool: Pool | None = None
    supports_retrieve_callback = True
    supports_return_generator = False
    supports_timeout = True

    def __init__(self, nesting_level: int | None = None, inner_max_num_threads: int | None = None,
                 ray_remote_args: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self.ray_remote_args = ray_remote_args
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads, **kwargs)

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            return 1
        if n_jobs < 0:
            if not ember.is_initialized():
                ember.init()
            cpus = int(ember.cluster_resources().get("CPU", 1))
            return max(cpus + 1 + n_jobs, 1)
        return n_jobs

    def configure(self, n_jobs: int = 1, parallel: Any = None, prefer: str | None = None,
                  require: str | None = None, **kwargs: Any) -> int:
        n_jobs = self.effective_n_jobs(n_jobs)
        self.parallel = parallel
        self._pool = Pool(processes=n_jobs, ray_remote_args=self.ray_remote_args)
        return n_jobs

    def terminate(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool = None
