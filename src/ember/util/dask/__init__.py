"""``ember.util.dask``: Dask graphs run as Ember tasks (Ray's "Dask on Ray").

    import dask
    from ember.util.dask import enable_dask_on_ray, ray_dask_get

    dask_array.sum().compute(scheduler=ray_dask_get)
    enable_dask_on_ray()            # every .compute() from now on

Needs Dask: ``pip install 'ember[dask]'``.
"""

from ember.util.dask.scheduler import (
    disable_dask_on_ray,
    enable_dask_on_ray,
    ray_dask_get,
    ray_dask_get_sync,
)

__all__ = ["disable_dask_on_ray", "enable_dask_on_ray", "ray_dask_get", "ray_dask_get_sync"]
