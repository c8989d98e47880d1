"""Worker leases for ``Raylet``: requests, grants, returns, blocked workers, spillback decisions.

A request is decided with the placement policy (grant here, spill back, or
fail as unschedulable), queued until its resources and an idle worker are
free, and granted in arrival order. A worker blocked in ``get`` gives its
CPU back while it waits.

A mixin: the state it uses (pending requests, leases, worker pool, resources,
cluster view) is created by ``Raylet.__init__``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

from ember._private import ids
from ember._private import resources as res
from ember._private.config import config
from ember.raylet import scheduling_policy as policy
from ember.raylet import worker_limits
from ember.raylet.leases import Lease, LeaseRequest
from ember.raylet.worker_pool import WorkerHandle, WorkerState
from ember.rpc import Connection


class LeaseService:
    """Lease requests and grants (mixed into ``Raylet``)."""

    # ================================================================ RPC: leases
    def rpc_request_lease(self, conn: Connection, p: dict[str, Any]) -> asyncio.Future[Any]:
        # A resent request (its reply was lost) gets the same answer, not a second lease.
        seen: dict[Any, asyncio.Future[Any]] = conn.state.setdefault("lease_requests", {})
        request_id = p.get("request_id")
        if request_id is not None and request_id in seen:
            return seen[request_id]
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if request_id is not None:
            seen[request_id] = fut
            if len(seen) > 10000:
                seen.pop(next(iter(seen)))
        try:
            request = res.to_fixed(p.get("resources") or {})
        except (TypeError, ValueError) as exc:
            raise ValueError(f"bad resource request: {exc}") from exc
        if p.get("renv") is not None:
            _check_renv(p["renv"])
        req = LeaseRequest(p.get("request_id"), conn, request, fut, p)
        hold = p.get("hold")
        req.hold = res.to_fixed(hold) if hold is not None else request
        if not p.get("spilled"):
            prefer = p.get("prefer")
            target = self.view.get(prefer) if prefer and prefer != self.node_id and not p.get("strategy") else None
            if target is not None and target.alive and res.fits(request, target.available):
                # The task's large arguments live there: run it next to them.
                fut.set_result({"spillback": {"node_id": target.node_id, "address": target.address}})
                return fut
            decision = policy.decide(request, p.get("strategy"), self.node_id, self._local_view(), self.policy_cfg, self.policy_state)
            if decision.kind == policy.SPILLBACK and decision.node_id is not None:
                fut.set_result({"spillback": {"node_id": decision.node_id, "address": self.view[decision.node_id].address}})
                return fut
            if decision.kind == policy.UNSCHEDULABLE:
                from ember.exceptions import TaskUnschedulableError

                err = TaskUnschedulableError(decision.reason)
                err.expected = True  # type: ignore[attr-defined]
                raise err
        self.pending.append(req)
        self._schedule()
        return fut

    def rpc_prepare_runtime_env(self, conn: Connection, p: Any) -> None:
        """Build a runtime env ahead of its first lease (a job's env, ``eager_install``)."""
        _check_renv(p)
        if self.renv_agent.context(p[0], p[1]) is not None:
            self.renv_agent.touch(p[0])

    def rpc_cancel_lease_request(self, conn: Connection, p: dict[str, Any]) -> None:
        for req in list(self.pending):
            if req.conn is conn and req.request_id == p["request_id"]:
                self.pending.remove(req)
                if not req.future.done():
                    req.future.set_result({"cancelled": True})

    def rpc_return_lease(self, conn: Connection, p: dict[str, Any]) -> None:
        lease = self.leases.get(p["lease_id"])
        if lease is None or lease.holder is not conn:
            return
        if p.get("kill"):
            self.pool.kill(lease.worker)
        self._release_lease(lease)
        if lease.worker.state is WorkerState.LEASED:
            self.pool.push_idle(lease.worker)
        self._schedule()

    def _release_lease(self, lease: Lease) -> None:
        if self.leases.pop(lease.lease_id, None) is None:
            return
        give_back = dict(lease.resources)
        self.gpus.release(lease.gpu_ids, lease.resources.get("GPU", 0))
        if lease.blocked:
            give_back.pop("CPU", None)  # already given back while blocked
        res.add(self.available, give_back)
        self.report_now()

    def rpc_notify_blocked(self, conn: Connection, p: Any) -> None:
        lease = self._lease_of(conn)
        if lease is not None and not lease.blocked:
            lease.blocked = True
            res.add(self.available, lease.cpu)
            self.report_now()
            self._schedule()

    def rpc_notify_unblocked(self, conn: Connection, p: Any) -> None:
        lease = self._lease_of(conn)
        if lease is not None and lease.blocked:
            lease.blocked = False
            res.subtract(self.available, lease.cpu)
            self.report_now()

    def _num_blocked(self) -> int:
        return sum(1 for lease in self.leases.values() if lease.blocked)

    def _lease_of(self, conn: Connection) -> Lease | None:
        worker: WorkerHandle | None = conn.state.get("worker")
        if worker is None or worker.lease_id is None:
            return None
        return self.leases.get(worker.lease_id)

    def _schedule(self) -> None:
        """Grant every pending request that fits, in arrival order."""
        if not self.pending:
            return
        #: Requests waiting for a worker, per runtime env ("" is the default env).
        waiting_for_worker: dict[str, list[LeaseRequest]] = {}
        still_pending: deque[LeaseRequest] = deque()
        blocked_on_resources = False
        failures = self.renv_agent.take_failures()
        while self.pending:
            req = self.pending.popleft()
            if req.future.done():
                continue
            env_key, env = req.payload.get("renv") or ("", None)
            if env_key:
                if env_key in failures:
                    self._fail_runtime_env(req, failures[env_key])
                    continue
                if self.renv_agent.context(env_key, env) is None:
                    still_pending.append(req)  # its env is being built on this node
                    continue
            if not res.fits(req.resources, self.total):
                # Warned after the next cluster view, unless another node can take it by then.
                still_pending.append(req)
                continue
            if not res.fits(req.resources, self.available):
                blocked_on_resources = True
                still_pending.append(req)
                continue
            max_actors = config().max_actor_workers
            if req.for_actor and 0 < max_actors <= self.pool.num_dedicated():
                reason = worker_limits.max_actors_reason(self.pool.num_dedicated(), max_actors)
                self._refuse_actors([req], reason, queued=False)
                continue
            worker = self.pool.pop_idle(env_key)
            if worker is None:
                waiting_for_worker.setdefault(env_key, []).append(req)
                still_pending.append(req)
                continue
            self._grant(req, worker)
        self.pending = still_pending
        for env_key, waiting in waiting_for_worker.items():
            if self.stopping:
                break
            self._start_workers_for(env_key, waiting)
        if blocked_on_resources:
            for holder in {id(l.holder): l.holder for l in self.leases.values()}.values():
                if holder is not self.gcs:
                    holder.notify("release_idle_leases", None)

    def _start_workers_for(self, env_key: str, waiting: list[LeaseRequest]) -> None:
        """Start workers of runtime env ``env_key`` for requests that found none idle.

        Actors first and without the task-worker cap, within the node's real
        limits: the actors beyond them fail now with the reason (never a silent
        wait). Then tasks, up to ``max_workers`` (a full pool makes room by
        ending an idle worker of another env).
        """
        actors = [req for req in waiting if req.for_actor]
        remaining = len(waiting)
        starting = self.pool.num_starting(env_key)
        wanted = len(actors) - starting
        if wanted > 0:
            room = self._actor_worker_room(wanted)
            if room.count < wanted:
                self._refuse_actors(actors[len(actors) - (wanted - room.count):], room.reason)
                remaining -= wanted - room.count
            for _ in range(room.count):
                if not self.pool.launch_ready():
                    return  # one registers (or the fork server gets ready) soon: _schedule runs again then
                if not self._start_env_worker(env_key):
                    return
                starting += 1
        while remaining > starting and self.pool.launch_ready():
            if not self.pool.can_start(self._num_blocked()) and not self.pool.evict_idle(env_key):
                break
            if not self._start_env_worker(env_key):
                return
            starting += 1

    def _start_env_worker(self, env_key: str) -> bool:
        """Start a worker of ``env_key``; False (the env failed) when its interpreter cannot run."""
        try:
            self._start_worker(env_key)
        except OSError as exc:
            if not env_key:
                raise
            self.renv_agent.report_failure(env_key, f"could not start a worker in it: {exc}")
            asyncio.get_running_loop().call_soon(self._schedule)
            return False
        return True

    def _actor_worker_room(self, wanted: int) -> worker_limits.Room:
        from ember.raylet import memory_monitor

        cfg = config()
        threshold = cfg.memory_usage_threshold
        return worker_limits.actor_worker_room(
            wanted,
            actor_workers=self.pool.num_dedicated(),
            max_actor_workers=cfg.max_actor_workers,
            fds_open=worker_limits.open_fds(),
            fd_limit=self.fd_limit,
            memory_fraction=memory_monitor.read_memory().fraction if threshold < 1.0 else 0.0,
            memory_threshold=threshold,
        )

    def _refuse_actors(self, requests: list[LeaseRequest], reason: str, queued: bool = True) -> None:
        from ember.exceptions import ActorUnschedulableError

        for req in requests:
            if queued:
                self.pending.remove(req)
            if not req.future.done():
                err = ActorUnschedulableError(
                    f"Node {self.node_id.hex()[:12]} ({self.opts.node_ip}) cannot start another actor process: {reason}"
                )
                err.expected = True  # type: ignore[attr-defined]
                req.future.set_exception(err)

    def _grant(self, req: LeaseRequest, worker: WorkerHandle) -> None:
        lease_id = ids.random_unique_id()
        worker.transition(WorkerState.LEASED, f"lease {lease_id.hex()[:12]}")
        worker.lease_id = lease_id
        worker.dedicated = req.for_actor
        self.log_monitor.wake(worker.out_path)
        self.log_monitor.wake(worker.err_path)
        res.subtract(self.available, req.hold)
        self.report_now()
        lease = Lease(lease_id, worker, req.hold, req.conn)
        lease.gpu_ids = self.gpus.allocate(req.hold.get("GPU", 0))
        lease.retriable = bool(req.payload.get("retriable", True))
        lease.granted_at = time.monotonic()
        self.leases[lease_id] = lease
        # Keep a worker warm so the next lease (often an actor) does not wait for a process start.
        if not worker.env_key and not self.pool.idle and not self.pool.num_starting() and self.pool.can_start(self._num_blocked()) and not self.stopping:
            self._start_worker()
        req.future.set_result({
            "lease_id": lease_id,
            "worker_id": worker.worker_id,
            "address": worker.address,
            "node_id": self.node_id,
            "pid": worker.pid,
            "gpu_ids": lease.gpu_ids,
        })

    def fail_envs_whose_workers_crash(self, limit: int = 3) -> None:
        """An env whose workers keep exiting before they register (a broken interpreter or
        package) fails its requests with the last worker's error output, instead of looping."""
        for env_key, err_paths in list(self.pool.failed_starts.items()):
            if len(err_paths) < limit:
                continue
            del self.pool.failed_starts[env_key]
            try:
                with open(err_paths[-1], errors="replace") as f:
                    tail = "\n".join(f.read().splitlines()[-20:])
            except OSError:
                tail = "(no output)"
            self.renv_agent.report_failure(
                env_key, f"{len(err_paths)} workers exited before they could start in it; the last one wrote:\n{tail}")
            self._schedule()

    def _fail_runtime_env(self, req: LeaseRequest, message: str) -> None:
        from ember.exceptions import RuntimeEnvSetupError

        err = RuntimeEnvSetupError(f"Failed to set up runtime environment on node {self.node_id.hex()[:12]}: {message}")
        err.expected = True  # type: ignore[attr-defined]
        req.future.set_exception(err)

    def _warn_infeasible(self, req: LeaseRequest) -> None:
        if req.warned_infeasible:
            return
        if any("_group_" in name for name in req.resources):
            return  # waiting for a placement group to be placed is normal; the control service reports groups that cannot be
        req.warned_infeasible = True
        shape = res.describe(req.resources)
        shapes = "; ".join(sorted(res.describe(n.total) for n in self._local_view().values() if n.alive))
        message = (
            f"No node in this cluster can ever satisfy the resource request {shape}. "
            f"The nodes have: {shapes}. It will wait until a node that can run it joins. "
            "Lower the request (num_cpus=, num_gpus=, resources=), or add a node with enough resources."
        )
        req.conn.notify("infeasible", {"request_id": req.request_id, "message": message})


def _check_renv(renv: Any) -> None:
    """A request's ``renv`` must be [key, env dict] (checked before it reaches scheduling)."""
    if not (isinstance(renv, (list, tuple)) and len(renv) == 2 and isinstance(renv[0], str) and renv[0]
            and isinstance(renv[1], dict)):
        raise ValueError(f"bad runtime env in the request: {renv!r:.200}")
