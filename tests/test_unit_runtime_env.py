"""Runtime environments without a cluster: validation, merging, packaging, unpacking, storage, cleanup."""

from __future__ import annotations

import io
import json
import os
import stat
import time
import zipfile
from typing import Any

import pytest

from ember.exceptions import RuntimeEnvValueError
from ember.runtime_env import RuntimeEnv, RuntimeEnvConfig, local_files, packaging, virtualenvs
from ember.runtime_env.package_store import PackageStore, upload_local_paths
from ember.runtime_env.packaging import PackageError
from ember.runtime_env.resolve import JOB_ENV_VAR, env_key, job_env
from ember.runtime_env.validation import merge, validate


# ============================================================================ validation
@pytest.mark.parametrize("env, key", [
    ({"bad_key": 1}, "bad_key"),
    ({"env_vars": {"X": 1}}, "env_vars"),
    ({"env_vars": "X=1"}, "env_vars"),
    ({"pip": 3}, "pip"),
    ({"pip": {"pakages": ["x"]}}, "pip"),
    ({"uv": {"packages": "x", "uv_check": "yes"}}, "uv"),
    ({"working_dir": 3}, "working_dir"),
    ({"working_dir": "/no/such/folder/anywhere"}, "working_dir"),
    ({"working_dir": "s3://bucket/code"}, "working_dir"),
    ({"py_modules": "not-a-list"}, "py_modules"),
    ({"py_modules": ["/no/such/module"]}, "py_modules"),
    ({"excludes": "*.txt"}, "excludes"),
    ({"config": {"setup_timeout_seconds": "10"}}, "config"),
    ({"config": {"setup_timeout_seconds": 0}}, "config"),
    ({"conda": "env.yml"}, "conda"),
    ({"pip": {"packages": ["x"], "pip_version": "==22.0"}}, "pip"),
])
def test_malformed_env_names_the_key(env: dict[str, Any], key: str) -> None:
    with pytest.raises(ValueError, match=repr(key)):
        validate(env)
    # Ray raises TypeError for some of these: both spellings catch it.
    with pytest.raises(TypeError):
        validate(env)


def test_pip_and_uv_together_refused() -> None:
    with pytest.raises(RuntimeEnvValueError, match="both 'pip' and 'uv'"):
        validate({"pip": ["a"], "uv": ["b"]})


def test_canonical_forms(tmp_path: Any) -> None:
    req = tmp_path / "requirements.txt"
    req.write_text("# comment\nrequests==2.0  # pinned\n\nsix\n")
    (tmp_path / "wd").mkdir()
    env = validate({"pip": str(req), "working_dir": str(tmp_path / "wd"), "env_vars": {"A": "1"}, "_ray_commit": "x"})
    assert env == {"pip": {"packages": ["requests==2.0", "six"]}, "working_dir": str(tmp_path / "wd"), "env_vars": {"A": "1"}}
    assert validate({"uv": ["a", "b"]}) == {"uv": {"packages": ["a", "b"]}}
    assert validate(None) == {}
    import email  # a package given as a module becomes its folder

    assert validate({"py_modules": [email]})["py_modules"] == [os.path.dirname(email.__file__)]


def test_a_wire_env_validates_unchanged(tmp_path: Any) -> None:
    # A job's driver gets its env in wire form (EMBER_JOB_RUNTIME_ENV) and validates it again.
    wire = {
        "working_dir": "gcs://_ember_pkg_abc.zip", "py_modules": ["gcs://_ember_pkg_def.whl"],
        "pip": {"packages": ["x"], "pip_install_options": ["--no-index"]}, "env_vars": {"A": "1"},
        "config": {"setup_timeout_seconds": 30}, "worker_process_setup_hook": "ember-hook://0123abcd",
    }
    assert validate(wire) == wire


def test_merge_is_rays_rule() -> None:
    parent = {"env_vars": {"A": "1", "B": "1"}, "working_dir": "gcs://p.zip", "pip": {"packages": ["x"]}}
    child = {"env_vars": {"B": "2", "C": "2"}, "pip": {"packages": ["y"]}}
    assert merge(parent, child) == {
        "env_vars": {"A": "1", "B": "2", "C": "2"}, "working_dir": "gcs://p.zip", "pip": {"packages": ["y"]},
    }
    assert parent["env_vars"] == {"A": "1", "B": "1"}  # inputs untouched
    assert merge(parent, child, override=False) is None  # same key twice
    assert merge({"env_vars": {"A": "1"}}, {"env_vars": {"B": "2"}}, override=False) == {"env_vars": {"A": "1", "B": "2"}}


def test_job_env_from_the_submission(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(JOB_ENV_VAR, json.dumps({"env_vars": {"JOB": "1"}, "pip": ["x"]}))
    assert job_env({"env_vars": {"DRIVER": "2"}}) == {"env_vars": {"JOB": "1", "DRIVER": "2"}, "pip": {"packages": ["x"]}}
    with pytest.raises(ValueError, match="EMBER_OVERRIDE_JOB_RUNTIME_ENV"):
        job_env({"env_vars": {"JOB": "2"}})
    monkeypatch.setenv("RAY_OVERRIDE_JOB_RUNTIME_ENV", "1")
    assert job_env({"env_vars": {"JOB": "2"}})["env_vars"] == {"JOB": "2"}
    monkeypatch.setenv(JOB_ENV_VAR, json.dumps({"bogus": 1}))
    with pytest.raises(ValueError, match="bogus"):
        job_env(None)


def test_env_key_pools_by_content_not_config() -> None:
    assert env_key({}) == ""
    a = env_key({"env_vars": {"A": "1"}})
    assert a and a == env_key({"env_vars": {"A": "1"}, "config": {"setup_timeout_seconds": 5}})
    assert a != env_key({"env_vars": {"A": "2"}})


def test_runtime_env_class() -> None:
    env = RuntimeEnv(env_vars={"A": "1"}, pip=["x"], config=RuntimeEnvConfig(setup_timeout_seconds=30))
    assert isinstance(env, dict) and env.env_vars() == {"A": "1"} and env.has_pip() and not env.has_working_dir()
    assert RuntimeEnv.deserialize(env.serialize()) == env
    with pytest.raises(ValueError, match="env_vars"):
        RuntimeEnv(env_vars={"A": 1})  # type: ignore[dict-item]


# ============================================================================ packaging
def _tree(root: Any, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_zip_honours_excludes_and_gitignore(tmp_path: Any) -> None:
    _tree(tmp_path, {
        "main.py": "x", "data/big.bin": "x", "logs/a.log": "x", "keep.log": "x",
        ".gitignore": "*.log\n", "sub/.gitignore": "secret.txt\n", "sub/secret.txt": "x", "sub/ok.txt": "x",
        "other/secret.txt": "x",
    })
    data = packaging.zip_directory(str(tmp_path), ["data/", "/other/secret.txt"])
    names = sorted(zipfile.ZipFile(io.BytesIO(data)).namelist())
    assert names == [".gitignore", "main.py", "sub/.gitignore", "sub/ok.txt"]
    # Deterministic: the same files give the same bytes, hence the same URI.
    assert packaging.package_uri(data) == packaging.package_uri(packaging.zip_directory(str(tmp_path), ["data/", "/other/secret.txt"]))
    inner = packaging.zip_directory(str(tmp_path / "sub"), include_folder_name=True)
    assert sorted(zipfile.ZipFile(io.BytesIO(inner)).namelist()) == ["sub/.gitignore", "sub/ok.txt"]


def test_zip_size_limit(tmp_path: Any) -> None:
    (tmp_path / "blob.bin").write_bytes(os.urandom(64 * 1024))
    with pytest.raises(PackageError, match=r"larger than the limit.*blob\.bin.*excludes"):
        packaging.zip_directory(str(tmp_path), max_bytes=16 * 1024)


def _crafted_zip(path: Any, entries: list[tuple[str, bytes, int]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data, mode in entries:
            info = zipfile.ZipInfo(name)
            info.external_attr = mode << 16
            zf.writestr(info, data)
    return buffer.getvalue()


@pytest.mark.parametrize("entry, why", [
    (("../escaped.txt", b"x", stat.S_IFREG | 0o644), "escapes"),
    (("ok/../../escaped.txt", b"x", stat.S_IFREG | 0o644), "escapes"),
    (("/tmp/absolute.txt", b"x", stat.S_IFREG | 0o644), "absolute"),
    (("link", b"../../outside", stat.S_IFLNK | 0o777), "link"),
    (("link", b"/etc/passwd", stat.S_IFLNK | 0o777), "link"),
])
def test_zip_slip_refused(tmp_path: Any, entry: tuple[str, bytes, int], why: str) -> None:
    data = _crafted_zip(tmp_path, [("fine.txt", b"x", stat.S_IFREG | 0o644), entry])
    dest = tmp_path / "out" / "pkg"
    with pytest.raises(PackageError, match=why):
        packaging.unpack(data, str(dest))
    assert not dest.exists()
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "out" / "escaped.txt").exists()
    assert os.listdir(tmp_path / "out") == []  # the half-written copy is gone too


def test_unpack_keeps_inside_links_and_strips_one_top_folder(tmp_path: Any) -> None:
    data = _crafted_zip(tmp_path, [
        ("top/a.txt", b"A", stat.S_IFREG | 0o644), ("top/run.sh", b"#!/bin/sh\n", stat.S_IFREG | 0o755),
        ("top/alias", b"a.txt", stat.S_IFLNK | 0o777),
    ])
    packaging.unpack(data, str(tmp_path / "p"), strip_top_folder=True)
    assert (tmp_path / "p" / "alias").read_text() == "A"
    assert os.access(tmp_path / "p" / "run.sh", os.X_OK)
    packaging.unpack(data, str(tmp_path / "q"))
    assert (tmp_path / "q" / "top" / "a.txt").read_text() == "A"


# ============================================================================ storage
class FakeKV:
    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.puts = 0

    def __call__(self, method: str, p: dict[str, Any]) -> Any:
        assert p["ns"] == "runtime_env"
        if method == "kv_put":
            self.puts += 1
            assert len(p["value"]) <= 1024
            self.data[p["key"]] = p["value"]
            return True
        return self.data.get(p["key"])


def test_store_chunks_and_uploads_once(tmp_path: Any) -> None:
    kv = FakeKV()
    store = PackageStore(kv, chunk_bytes=1024)
    _tree(tmp_path / "wd", {"a.py": "A = 1\n"})
    (tmp_path / "wd" / "noise.bin").write_bytes(os.urandom(5000))
    env = upload_local_paths({"working_dir": str(tmp_path / "wd"), "excludes": ["nothing"]}, store)
    uri = env["working_dir"]
    assert uri.startswith("gcs://_ember_pkg_") and "excludes" not in env
    assert kv.puts >= 6  # several chunks and the manifest
    puts = kv.puts
    assert upload_local_paths({"working_dir": str(tmp_path / "wd")}, store)["working_dir"] == uri
    assert kv.puts == puts  # content-addressed: not sent again
    folder = local_files.ensure_package(uri, store.get, str(tmp_path / "node"))
    assert (tmp_path / "node" / "packages").is_dir() and open(os.path.join(folder, "a.py")).read() == "A = 1\n"
    del kv.data[f"{uri}#1".encode()]
    with pytest.raises(PackageError, match="incomplete"):
        store.get(uri)


def test_unused_resources_are_collected(tmp_path: Any) -> None:
    root = str(tmp_path)
    data = packaging.zip_directory(str(_make_dir(tmp_path / "src")))
    uri = packaging.package_uri(data)
    used = local_files.ensure_package(uri, lambda u: data, root)
    held = local_files.hold_shared(used)
    later = time.time() + 3600
    assert local_files.collect_unused(root, ttl_s=60, now=later) == []  # held by a daemon
    os.close(held)
    assert local_files.collect_unused(root, ttl_s=60) == []  # used just now
    assert local_files.collect_unused(root, ttl_s=60, now=later) == [used]
    assert not os.path.exists(used)


def _make_dir(path: Any) -> Any:
    path.mkdir()
    (path / "m.py").write_text("")
    return path


def test_installer_timeout_is_enforced(tmp_path: Any) -> None:
    started = time.monotonic()
    with pytest.raises(virtualenvs.InstallError, match="setup timeout"):
        virtualenvs._run(["sleep", "30"], str(tmp_path / "log"), time.monotonic() + 0.3, dict(os.environ))
    assert time.monotonic() - started < 10


def test_a_daemon_using_a_resource_does_not_block_another_building_it(tmp_path: Any) -> None:
    import threading

    root = str(tmp_path)
    data = packaging.zip_directory(str(_make_dir(tmp_path / "src")))
    uri = packaging.package_uri(data)
    dest = os.path.join(root, "packages", packaging.package_name(uri))
    os.makedirs(os.path.dirname(dest))
    held = local_files.hold_shared(dest)  # another daemon has workers in an env that uses it
    try:
        done: list[str] = []
        builder = threading.Thread(target=lambda: done.append(local_files.ensure_package(uri, lambda u: data, root)), daemon=True)
        builder.start()
        builder.join(20)
        assert done == [dest], "building waited for the other daemon's use of the resource"
        # While it is held, it is never collected, however old.
        assert local_files.collect_unused(root, ttl_s=0, now=time.time() + 3600) == []
    finally:
        os.close(held)


def test_package_collection_keeps_what_running_jobs_and_live_actors_use() -> None:
    import enum
    from types import SimpleNamespace

    from ember.gcs import package_gc
    from ember.gcs.storage import InMemoryStorage

    class State(enum.Enum):
        ALIVE = "ALIVE"
        DEAD = "DEAD"

    storage = InMemoryStorage()
    now = time.time()

    def store(uri: str, created: float) -> None:
        storage.put(package_gc.PACKAGES, uri.encode(), json.dumps({"size": 2, "chunks": 2, "created": created}).encode())
        for index in range(2):
            storage.put(package_gc.PACKAGES, f"{uri}#{index}".encode(), b"x")

    for name in ("running", "finished", "actor", "dead_actor", "fresh"):
        store(f"gcs://_ember_pkg_{name}.zip", now - (10 if name == "fresh" else 3600))
    storage.put(package_gc.PINS, f"{b'R'.hex()}:gcs://_ember_pkg_running.zip".encode(), b"1")
    storage.put(package_gc.PINS, f"{b'F'.hex()}:gcs://_ember_pkg_finished.zip".encode(), b"1")
    actors = {
        b"a": SimpleNamespace(state=State.ALIVE, spec={"renv": ["k", {"py_modules": ["gcs://_ember_pkg_actor.zip"]}]}),
        b"d": SimpleNamespace(state=State.DEAD, spec={"renv": ["k", {"working_dir": "gcs://_ember_pkg_dead_actor.zip"}]}),
    }
    gcs = SimpleNamespace(storage=storage, jobs={b"R": {"status": "RUNNING"}, b"F": {"status": "SUCCEEDED"}},
                          actor_manager=SimpleNamespace(actors=actors))
    deleted = package_gc.collect(gcs, now=now)  # type: ignore[arg-type]
    assert sorted(deleted) == ["gcs://_ember_pkg_dead_actor.zip", "gcs://_ember_pkg_finished.zip"]
    left = {k.decode() for k in storage.keys(package_gc.PACKAGES)}
    assert "gcs://_ember_pkg_finished.zip#0" not in left and "gcs://_ember_pkg_running.zip#1" in left
    assert [k.decode().split(":", 1)[0] for k in storage.keys(package_gc.PINS)] == [b"R".hex()]  # finished job's pin gone
