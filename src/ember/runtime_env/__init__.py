"""Runtime environments (``runtime_env``): env_vars, working_dir, py_modules, pip, uv.

Where each part runs:

* ``validation``: checks and canonicalises an env, Ray's merge rule (drivers and workers);
* ``packaging`` / ``package_store``: folders to content-addressed zips stored in
  the control service, uploaded by drivers (``upload_working_dir``);
* ``process_context`` (+ ``local_files``, ``virtualenvs``): on a node, unpack and
  build what an env needs and say how to start a worker in it (``prepare``);
* ``resolve``: a driver's or worker's effective env for a task (parent merged
  with the task's own, local paths uploaded) and its pooling key.

This package uses only ``ember._private`` and ``ember.exceptions`` (the node
daemon imports it), and keeps heavy imports (pathspec, fsspec) inside functions.
"""

from __future__ import annotations

from ember.runtime_env.runtime_env import RuntimeEnv, RuntimeEnvConfig

__all__ = ["RuntimeEnv", "RuntimeEnvConfig"]
