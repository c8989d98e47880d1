"""Checking a ``runtime_env`` and bringing it to one canonical form.

``validate(env)`` runs where the user gives the env (``init``, ``@remote``,
``.options``): it raises ``RuntimeEnvValueError`` (a ``ValueError`` that is
also a ``TypeError``, as Ray raises ``TypeError`` for wrong types) naming the
key, and returns a plain dict: ``pip``/``uv`` as ``{"packages": [...], ...}``
(a requirements file is read here, on the driver, as Ray does), ``py_modules``
given as modules turned into their folders, local paths made absolute.

``merge(parent, child)`` is Ray's inheritance rule: ``env_vars`` merge per
variable (the child wins), every other key of the child replaces the parent's.

No I/O beyond looking at local paths; nothing here talks to the cluster.
"""

from __future__ import annotations

import copy
import os
import types
from typing import Any

from ember.exceptions import RuntimeEnvValueError

#: Keys Ember implements.
SUPPORTED_KEYS = ("working_dir", "py_modules", "excludes", "env_vars", "pip", "uv", "config", "py_executable",
                  "worker_process_setup_hook")
#: Keys Ray knows that Ember does not implement: refused with a clear message, not ignored.
UNSUPPORTED_KEYS = (
    "conda", "container", "image_uri", "java_jars", "nsight", "mpi", "rocprof_sys", "_inject_current_ray",
)
#: Ray fills these itself; harmless, dropped.
IGNORED_KEYS = ("_ray_commit", "_ray_release")

#: Ray's default for ``config.setup_timeout_seconds``.
DEFAULT_SETUP_TIMEOUT_S = 600


def _fail(key: str, message: str) -> RuntimeEnvValueError:
    return RuntimeEnvValueError(f"runtime_env[{key!r}] {message}")


def _is_uri(path: str) -> bool:
    return "://" in path


def _str_list(key: str, value: Any) -> list[str]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise _fail(key, f"must be a list of strings, got {value!r}")
    return list(value)


def _local_path(key: str, path: str, kinds: tuple[str, ...]) -> str:
    """An absolute local path that exists and is a folder or a file ending in one of ``kinds``."""
    full = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(full):
        return full
    if os.path.isfile(full) and full.endswith(kinds):
        return full
    what = " or ".join(("an existing folder",) + tuple(f"a {k} file" for k in kinds))
    if not os.path.exists(full):
        raise _fail(key, f"names {path!r}, which does not exist (it must be {what}, or a remote URI).")
    raise _fail(key, f"names {path!r}, which is not {what}.")


def _validate_working_dir(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _fail("working_dir", f"must be a non-empty string (a local folder, a .zip file or a URI), got {value!r}")
    if _is_uri(value):
        if not value.endswith(".zip"):
            raise _fail("working_dir", f"URI {value!r} must name a .zip file.")
        return value
    return _local_path("working_dir", value, (".zip",))


def _validate_py_modules(value: Any) -> list[str]:
    if not isinstance(value, (list, tuple)):
        raise _fail("py_modules", f"must be a list of folders, .whl/.zip files, URIs or modules, got {value!r}")
    out = []
    for item in value:
        if isinstance(item, types.ModuleType):
            files = list(getattr(item, "__path__", []) or [])
            if not files and getattr(item, "__file__", None):
                raise _fail("py_modules", f"holds the module {item.__name__!r}, which is a single file: only packages (folders) can be shipped.")
            if not files:
                raise _fail("py_modules", f"holds the module {item.__name__!r}, which has no folder on disk.")
            out.append(os.path.abspath(files[0]))
        elif isinstance(item, str) and item:
            if _is_uri(item):
                if not item.endswith((".zip", ".whl")):
                    raise _fail("py_modules", f"URI {item!r} must name a .zip or .whl file.")
                out.append(item)
            else:
                out.append(_local_path("py_modules", item, (".zip", ".whl")))
        else:
            raise _fail("py_modules", f"entries must be strings or modules, got {item!r}")
    return out


def _read_requirements(key: str, path: str) -> list[str]:
    try:
        with open(os.path.expanduser(path)) as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise _fail(key, f"names the requirements file {path!r}, which cannot be read: {exc.strerror}.") from None
    out = []
    for line in lines:
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def _validate_packages(key: str, value: Any) -> dict[str, Any]:
    """``pip`` / ``uv``: a list, a requirements file, or a dict with ``packages``."""
    options_key = "pip_install_options" if key == "pip" else "uv_pip_install_options"
    allowed = {"packages", options_key} | ({"pip_check", "pip_version"} if key == "pip" else {"uv_check", "uv_version"})
    if isinstance(value, str):
        return {"packages": _read_requirements(key, value)}
    if isinstance(value, (list, tuple)):
        return {"packages": _str_list(key, value)}
    if not isinstance(value, dict):
        raise _fail(key, f"must be a list of requirements, a requirements file path or a dict with 'packages', got {value!r}")
    unknown = set(value) - allowed
    if unknown:
        raise _fail(key, f"has unknown field(s) {sorted(unknown)}; valid ones: {sorted(allowed)}")
    if "packages" not in value:
        raise _fail(key, "needs a 'packages' field (a list of requirements or a requirements file path).")
    packages = value["packages"]
    out: dict[str, Any] = {
        "packages": _read_requirements(key, packages) if isinstance(packages, str) else _str_list(f"{key}.packages", packages)
    }
    if options_key in value:
        out[options_key] = _str_list(f"{key}.{options_key}", value[options_key])
    for flag in ("pip_check", "uv_check"):
        if flag in value:
            if not isinstance(value[flag], bool):
                raise _fail(key, f"field {flag!r} must be a bool, got {value[flag]!r}")
            out[flag] = value[flag]
    for version in ("pip_version", "uv_version"):
        if version in value:
            raise _fail(key, f"field {version!r} is not supported by Ember: the node's own installer is used "
                             "(uv when installed, else the interpreter's pip).")
    return out


def _validate_config(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail("config", f"must be a dict (or RuntimeEnvConfig), got {value!r}")
    unknown = set(value) - {"setup_timeout_seconds", "eager_install"}
    if unknown:
        raise _fail("config", f"has unknown or unsupported field(s) {sorted(unknown)}; valid ones: eager_install, setup_timeout_seconds")
    out = dict(value)
    timeout = out.get("setup_timeout_seconds", DEFAULT_SETUP_TIMEOUT_S)
    if isinstance(timeout, bool) or not isinstance(timeout, int) or (timeout <= 0 and timeout != -1):
        raise _fail("config", f"field 'setup_timeout_seconds' must be an integer > 0 (or -1: no limit), got {timeout!r}")
    if "eager_install" in out and not isinstance(out["eager_install"], bool):
        raise _fail("config", f"field 'eager_install' must be a bool, got {out['eager_install']!r}")
    return out


def validate(env: Any) -> dict[str, Any]:
    """Check ``env`` and return its canonical form (a new dict; ``None`` gives ``{}``).

    Raises:
        RuntimeEnvValueError: (a ValueError and a TypeError) naming the bad key.
    """
    if env is None:
        return {}
    if not isinstance(env, dict):
        raise RuntimeEnvValueError(f"runtime_env must be a dict (or ember.runtime_env.RuntimeEnv), got {type(env).__name__}")
    out: dict[str, Any] = {}
    for key, value in env.items():
        if not isinstance(key, str):
            raise RuntimeEnvValueError(f"runtime_env keys must be strings, got {key!r}")
        if key in IGNORED_KEYS:
            continue
        if key in UNSUPPORTED_KEYS:
            raise _fail(key, "is not supported by Ember; use 'pip' or 'uv' for packages and 'env_vars' for settings.")
        if key not in SUPPORTED_KEYS:
            raise RuntimeEnvValueError(
                f"runtime_env has an unknown key {key!r}; valid keys: {', '.join(sorted(SUPPORTED_KEYS))}"
            )
        if value is None:
            continue
        if key == "working_dir":
            out[key] = _validate_working_dir(value)
        elif key == "py_modules":
            out[key] = _validate_py_modules(value)
        elif key == "excludes":
            out[key] = _str_list(key, value)
        elif key == "env_vars":
            if not isinstance(value, dict):
                raise _fail(key, f"must be a dict of str to str, got {type(value).__name__}")
            for name, setting in value.items():
                if not isinstance(name, str) or not isinstance(setting, str):
                    raise _fail(key, f"must be a dict of str to str, but {name!r}: {setting!r} is not (use str(value)).")
            out[key] = dict(value)
        elif key in ("pip", "uv"):
            out[key] = _validate_packages(key, value)
        elif key == "config":
            out[key] = _validate_config(value)
        elif key == "worker_process_setup_hook":
            # A string is 'module.function', or a callable already exported (a wire env handed on).
            if not (callable(value) or (isinstance(value, str) and ("." in value.strip(".") or value.startswith("ember-hook://")))):
                raise _fail(key, f"must be a callable or a 'module.function' string, got {value!r}")
            out[key] = value
        elif key == "py_executable":
            if not isinstance(value, str) or not value:
                raise _fail(key, f"must be a non-empty string (a Python interpreter), got {value!r}")
            out[key] = value
    if "pip" in out and "uv" in out:
        raise RuntimeEnvValueError("runtime_env cannot have both 'pip' and 'uv': choose one installer.")
    if ("pip" in out or "uv" in out) and "py_executable" in out:
        raise RuntimeEnvValueError("runtime_env cannot have 'py_executable' together with 'pip' or 'uv' (they choose the interpreter).")
    return out


def merge(parent: dict[str, Any] | None, child: dict[str, Any] | None, override: bool = True) -> dict[str, Any] | None:
    """Ray's inheritance rule: ``env_vars`` merged per variable, other keys replaced by the child's.

    With ``override=False`` (a job's env against ``init(runtime_env=)``) any key or
    variable present in both is a conflict: returns ``None``.
    """
    parent = copy.deepcopy(parent or {})
    child = copy.deepcopy(child or {})
    parent_vars = parent.pop("env_vars", {})
    child_vars = child.pop("env_vars", {})
    if not override and (set(parent) & set(child) or set(parent_vars) & set(child_vars)):
        return None
    parent.update(child)
    parent_vars.update(child_vars)
    if parent_vars:
        parent["env_vars"] = parent_vars
    return parent
