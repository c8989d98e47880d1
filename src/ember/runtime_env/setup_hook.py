"""``worker_process_setup_hook``: code every worker of an env runs before its first task.

The hook is a callable or a ``"module.function"`` string. A callable is pickled
by value once by the submitting process and stored in the control service's KV
(namespace ``runtime_env_hooks``, keyed by the hash of its bytes); the wire env
names it ``ember-hook://<hash>``, so node daemons pass it on without unpickling
it. The worker runs the hook before it registers with its node daemon: a hook
that raises ends the worker, and the env fails with the traceback
(``RuntimeEnvSetupError``) once its workers keep dying that way.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable
from typing import Any

NAMESPACE = "runtime_env_hooks"
SCHEME = "ember-hook://"


def export_hook(hook: Any, gcs_call: Callable[[str, Any], Any]) -> str:
    """The wire form of a hook: a string stays; a callable is stored once and named by its hash."""
    if isinstance(hook, str):
        return hook
    data = _dumps_by_value(hook)
    digest = hashlib.sha1(data).hexdigest()
    gcs_call("kv_put", {"ns": NAMESPACE, "key": digest.encode(), "value": data, "overwrite": False})
    return SCHEME + digest


def _dumps_by_value(hook: Any) -> bytes:
    """Pickle ``hook`` with its own module's code by value: a worker runs it before it knows the
    driver's import path, so a function from the user's module must not be a mere reference
    (installed and standard-library modules stay references)."""
    import sys
    import sysconfig

    import cloudpickle

    module = sys.modules.get(getattr(hook, "__module__", "") or "")
    path = getattr(module, "__file__", None) or ""
    installed = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    by_value = (
        module is not None and path and module.__name__ != "__main__"
        and not any(path.startswith(p) for p in installed)
        and module.__name__ not in cloudpickle.list_registry_pickle_by_value()
    )
    if by_value:
        cloudpickle.register_pickle_by_value(module)
    try:
        return bytes(cloudpickle.dumps(hook))
    finally:
        if by_value:
            cloudpickle.unregister_pickle_by_value(module)


def run_hook(spec: str, gcs_call: Callable[[str, Any], Any]) -> None:
    """Run the hook named by ``spec`` in this process (exceptions propagate: the worker must not start)."""
    if spec.startswith(SCHEME):
        data = gcs_call("kv_get", {"ns": NAMESPACE, "key": spec[len(SCHEME):].encode()})
        if data is None:
            raise RuntimeError(f"the worker_process_setup_hook {spec} is not stored in this cluster")
        import pickle

        hook = pickle.loads(bytes(data))
    else:
        module_name, _, attr = spec.rpartition(".")
        if not module_name:
            raise ValueError(f"worker_process_setup_hook {spec!r} must be 'module.function'")
        hook = getattr(importlib.import_module(module_name), attr)
    hook()
