"""``ember.util.concurrent.futures``: a ``concurrent.futures.Executor`` whose work runs as Ember tasks."""

from ember.util.concurrent.futures.ray_executor import EmberExecutor, RayExecutor

__all__ = ["EmberExecutor", "RayExecutor"]
