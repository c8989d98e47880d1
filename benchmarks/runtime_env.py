"""Runtime-environment timings on a local cluster (offline: a wheel built here).

    PYTHONPATH=src python3 benchmarks/runtime_env.py

Prints: the first task of a pip env (virtualenv built, with uv when installed),
a second driver's first task in the same env (reused virtualenv, new worker),
a failing install reported as RuntimeEnvSetupError, the same pip env built with
venv + pip (no uv), and task throughput in the default env and in an env_vars env.
"""

from __future__ import annotations

import base64
import hashlib
import os
import sys
import tempfile
import time
import zipfile

import ember
from ember._private.config import reset_config
from ember.cluster_utils import Cluster
from ember.exceptions import RuntimeEnvSetupError


def build_wheel(folder: str, name: str) -> None:
    files = {
        f"{name}/__init__.py": b"VALUE = 1\n",
        f"{name}-1.0.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n".encode(),
        f"{name}-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: bench\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = [f"{p},sha256={base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b'=').decode()},{len(d)}" for p, d in files.items()]
    files[f"{name}-1.0.dist-info/RECORD"] = ("\n".join([*record, f"{name}-1.0.dist-info/RECORD,,"]) + "\n").encode()
    with zipfile.ZipFile(os.path.join(folder, f"{name}-1.0-py3-none-any.whl"), "w") as zf:
        for path, data in files.items():
            zf.writestr(path, data)


@ember.remote
def use(module: str) -> int:
    import importlib

    return int(importlib.import_module(module).VALUE)


@ember.remote
def noop() -> None:
    return None


def timed(fn: object) -> float:
    started = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - started


def pip_env(wheels: str, package: str) -> dict[str, object]:
    return {"pip": {"packages": [package], "pip_install_options": ["--no-index", "--find-links", wheels]}}


def run(use_uv: bool, wheels: str, package: str) -> None:
    os.environ["EMBER_runtime_env_use_uv"] = "1" if use_uv else "0"
    reset_config()
    cluster = Cluster(initialize_head=True, shutdown_at_exit=False, head_node_args={"num_cpus": 2})
    try:
        env = pip_env(wheels, package)
        label = "uv" if use_uv else "venv + pip"
        cluster.connect()
        print(f"pip env, first task ({label}, virtualenv built): {timed(lambda: ember.get(use.options(runtime_env=env).remote(package))):.2f}s")
        ember.shutdown()
        cluster.connect()
        again = {**env, "env_vars": {"SECOND": "1"}}
        print(f"pip env, second driver's first task ({label}, reused, new worker): "
              f"{timed(lambda: ember.get(use.options(runtime_env=again).remote(package))):.2f}s")
        if use_uv:
            bad = pip_env(wheels, "ember_no_such_package")
            started = time.perf_counter()
            try:
                ember.get(noop.options(runtime_env=bad).remote())
            except RuntimeEnvSetupError:
                print(f"bad package reported as RuntimeEnvSetupError after {time.perf_counter() - started:.2f}s")
            for name, fn in (("default env", noop), ("env_vars env", noop.options(runtime_env={"env_vars": {"A": "1"}}))):
                ember.get([fn.remote() for _ in range(500)])
                seconds = timed(lambda f=fn: ember.get([f.remote() for _ in range(5000)]))
                print(f"throughput, {name}: {5000 / seconds:.0f} tasks/s")
        ember.shutdown()
    finally:
        cluster.shutdown()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("EMBER_TMPDIR", os.path.join(tmp, "sessions"))
        build_wheel(tmp, "ember_bench_pkg_uv")
        build_wheel(tmp, "ember_bench_pkg_pip")
        run(True, tmp, "ember_bench_pkg_uv")
        run(False, tmp, "ember_bench_pkg_pip")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
