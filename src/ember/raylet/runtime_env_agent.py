"""The node daemon's runtime-env agent: builds environments off the event loop.

A lease request may carry ``renv = [key, env]`` (the env's wire form and the
hash that pools workers by env). Before a worker of that env can start, the
env must exist on this node: ``context(key, env)`` returns its
``ProcessContext`` when ready, and otherwise starts one setup for the key
(however many requests wait for it) in a thread of its own pool — unpacking
zips and running installers never block the loop — and returns None. When a
setup ends, ``on_change`` runs (the daemon schedules again); a failure is kept
until the next scheduling pass takes it (``take_failures``), which fails the
waiting requests with ``RuntimeEnvSetupError``; the next request tries again.

Package downloads go through the daemon's control-service connection, called
from the setup thread via the loop (``run_coroutine_threadsafe``). The daemon
holds a shared lock on every resource of a ready env; an env without workers
for ``runtime_env_unused_ttl_s`` is released, and unused resources of the
machine are removed (``local_files.collect_unused``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from ember._private.background import BackgroundTasks
from ember._private.config import config
from ember.exceptions import ConnectionLost
from ember.runtime_env import local_files, virtualenvs
from ember.runtime_env.package_store import PackageStore
from ember.runtime_env.process_context import ProcessContext, SetupFailed, prepare

logger = logging.getLogger(__name__)


class RuntimeEnvAgent:
    def __init__(self, root: str, gcs: Callable[[], Any], on_change: Callable[[], None]) -> None:
        self.root = root
        self._gcs = gcs  # returns the daemon's current control-service connection (or None)
        self._on_change = on_change
        self._contexts: dict[str, ProcessContext] = {}
        self._envs: dict[str, dict[str, Any]] = {}
        self._next_collect = 0.0
        self._failures: dict[str, str] = {}
        self._setups: dict[str, asyncio.Task[None]] = {}
        self._held: dict[str, list[int]] = {}
        self._last_used: dict[str, float] = {}
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="ember-renv-setup")
        self._gc_task: asyncio.Task[None] | None = None
        self._background = BackgroundTasks("runtime env agent")

    # ------------------------------------------------------------ queries
    def context(self, key: str, env: dict[str, Any]) -> ProcessContext | None:
        ctx = self._contexts.get(key)
        if ctx is not None:
            self._last_used[key] = time.monotonic()
            return ctx
        if key not in self._setups and key not in self._failures:
            self._setups[key] = self._background.spawn(self._setup(key, env), f"set up runtime env {key}")
        return None

    def prepared(self, key: str) -> tuple[ProcessContext, dict[str, Any]]:
        """The context and wire env of a ready env (``context`` returned it)."""
        return self._contexts[key], self._envs[key]

    def report_failure(self, key: str, message: str) -> None:
        """Workers of a ready env cannot start: forget it; its waiting requests fail with ``message``."""
        self._contexts.pop(key, None)
        self._envs.pop(key, None)
        for fd in self._held.pop(key, []):
            os.close(fd)
        self._failures[key] = message

    def take_failures(self) -> dict[str, str]:
        failures, self._failures = self._failures, {}
        return failures

    def touch(self, key: str) -> None:
        self._last_used[key] = time.monotonic()

    # ------------------------------------------------------------ setup
    async def _setup(self, key: str, env: dict[str, Any]) -> None:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        store = PackageStore(self._bridge(loop))
        try:
            ctx = await loop.run_in_executor(self._executor, prepare, env, store, self.root)
            held = await loop.run_in_executor(self._executor, lambda: [local_files.hold_shared(p) for p in ctx.resources])
        except SetupFailed as exc:
            logger.warning("runtime env %s could not be set up: %s", key, exc)
            self._failures[key] = str(exc)
        except Exception as exc:  # a bug or an unexpected OS error: the requests fail, the daemon carries on
            logger.exception("runtime env %s setup failed unexpectedly", key)
            self._failures[key] = f"internal error while setting up the runtime env on this node: {type(exc).__name__}: {exc}"
        else:
            self._contexts[key] = ctx
            self._envs[key] = env
            self._held[key] = held
            self._last_used[key] = time.monotonic()
            logger.info("runtime env %s ready in %.2fs", key, time.monotonic() - started)
        finally:
            self._setups.pop(key, None)
        self._on_change()

    def _bridge(self, loop: asyncio.AbstractEventLoop) -> Callable[[str, Any], Any]:
        """A synchronous control-service call for the setup thread (waits out a restart)."""
        timeout = config().gcs_reconnect_timeout_s

        async def call(method: str, payload: Any) -> Any:
            deadline = loop.time() + timeout
            while True:
                conn = self._gcs()
                if conn is not None and not conn.closed:
                    try:
                        return await conn.call(method, payload)
                    except ConnectionLost:
                        pass
                if loop.time() > deadline:
                    raise SetupFailed("the control service is unreachable, so the env's packages cannot be fetched")
                await asyncio.sleep(0.2)

        def sync_call(method: str, payload: Any) -> Any:
            return asyncio.run_coroutine_threadsafe(call(method, payload), loop).result()

        return sync_call

    # ------------------------------------------------------------ collection
    def collect(self, keys_in_use: set[str]) -> None:
        """Release envs no worker used for the TTL; remove the machine's unused resources (off the loop).

        Called often (the daemon's reap loop); works every ``runtime_env_gc_period_s``.
        """
        cfg = config()
        now = time.monotonic()
        if now < self._next_collect:
            return
        self._next_collect = now + cfg.runtime_env_gc_period_s
        ttl = cfg.runtime_env_unused_ttl_s
        for key in list(self._contexts):
            if key in keys_in_use:
                self._last_used[key] = now
            elif now - self._last_used.get(key, now) > ttl:
                self._contexts.pop(key, None)
                self._envs.pop(key, None)
                for fd in self._held.pop(key, []):
                    os.close(fd)
        if self._gc_task is None or self._gc_task.done():
            self._gc_task = self._background.spawn(self._collect_files(ttl), "remove unused runtime env files")

    async def _collect_files(self, ttl: float) -> None:
        loop = asyncio.get_running_loop()
        try:
            removed = await loop.run_in_executor(self._executor, local_files.collect_unused, self.root, ttl)
        except OSError as exc:
            logger.warning("could not remove unused runtime env files in %s: %s", self.root, exc)
            return
        for path in removed:
            logger.info("removed unused runtime env resource %s", path)

    # ------------------------------------------------------------ stop
    async def stop(self) -> None:
        virtualenvs.kill_running_installs()
        await self._background.close(config().process_stop_timeout_s)
        self._executor.shutdown(wait=False, cancel_futures=True)
        for fds in self._held.values():
            for fd in fds:
                os.close(fd)
        self._held.clear()
