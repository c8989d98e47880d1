"""Worker leases as an RPC service: the async shell around the lease table.

A request is decided with the placement policy (grant here, spill back, or
fail as unschedulable); one decided here goes into the lease table
(``lease_table.py``), which grants in arrival order when resources and an idle
worker are free. This module answers the holders, starts workers for requests
that found none idle (within the node's limits), moves waiting requests to
other nodes that can run them now, and warns about requests no node can run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from ember._private import resources as res
from ember._private.config import config
from ember.exceptions import TaskUnschedulableError
from ember.protocol import raylet as msg
from ember.raylet import scheduling_policy as policy
from ember.raylet import worker_limits
from ember.raylet.cluster_view import ClusterView
from ember.raylet.control_link import ControlServiceLink
from ember.raylet.demand import fits_any
from ember.raylet.lease_table import (
    Abandoned,
    Action,
    Cancelled,
    Grant,
    KillWorker,
    LeaseTable,
    NeedWorkers,
    Reject,
    ReleaseIdleLeases,
    ResourcesChanged,
    SpillBack,
    expected,
)
from ember.raylet.leases import Holder, LeaseRequest
from ember.raylet.node import NodeContext
from ember.raylet.runtime_env_agent import RuntimeEnvAgent
from ember.raylet.worker_service import WorkerService
from ember.rpc import Connection

#: Request ids remembered per connection, to answer a resent request with its first answer.
SEEN_REQUESTS_PER_CONNECTION = 10000


class AgentEnvironments:
    """The runtime-env agent as the lease table asks it: is an env built here, which failed."""

    def __init__(self, agent: RuntimeEnvAgent) -> None:
        self.agent = agent

    def take_failures(self) -> dict[str, str]:
        return self.agent.take_failures()

    def ready(self, env_key: str, env: dict[str, Any] | None) -> bool:
        return self.agent.context(env_key, env or {}) is not None


class LeaseService:
    def __init__(
        self,
        node: NodeContext,
        table: LeaseTable,
        workers: WorkerService,
        view: ClusterView,
        renv_agent: RuntimeEnvAgent,
        link: ControlServiceLink,
        report_now: Callable[[], None],
        fd_limit: int,
    ) -> None:
        self.node = node
        self.table = table
        self.workers = workers
        self.view = view
        self.renv_agent = renv_agent
        self.link = link
        self._report_now = report_now
        #: Each worker costs this daemon descriptors; actors are limited by them, not by max_workers.
        self.fd_limit = fd_limit
        self._envs = AgentEnvironments(renv_agent)
        #: The reply each queued request is answered through.
        self._replies: dict[LeaseRequest, asyncio.Future[msg.LeaseReply]] = {}
        #: Shapes of the node types an autoscaler can launch (None: no autoscaler); a request that
        #: fits one of them is waiting for a node, not infeasible.
        self.launchable: list[res.Resources] | None = None

    # ================================================================ RPC: leases
    def rpc_request_lease(self, conn: Connection, p: msg.RequestLease) -> asyncio.Future[msg.LeaseReply]:
        # A resent request (its reply was lost) gets the same answer, not a second lease.
        seen: dict[Any, asyncio.Future[msg.LeaseReply]] = conn.state.setdefault("lease_requests", {})
        request_id = p.request_id
        if request_id in seen:
            return seen[request_id]
        fut: asyncio.Future[msg.LeaseReply] = asyncio.get_running_loop().create_future()
        seen[request_id] = fut
        if len(seen) > SEEN_REQUESTS_PER_CONNECTION:
            seen.pop(next(iter(seen)))
        try:
            request = res.to_fixed(p.resources)
            held = res.to_fixed(p.hold) if p.hold is not None else request
        except (TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"bad resource request: {exc}") from exc
        if p.renv is not None:
            check_renv(p.renv)
        if not p.spilled:
            answer = self._decide_elsewhere(request, p)
            if answer is not None:
                fut.set_result(answer)
                return fut
        req = LeaseRequest(request_id, conn, request, p, held)
        self._replies[req] = fut
        self.table.submit(req)
        self.schedule()
        return fut

    def _decide_elsewhere(self, request: res.Resources, p: msg.RequestLease) -> msg.LeaseReply | None:
        """The answer for a request that should not wait here (a spillback), or None; raises if it cannot run."""
        prefer = p.prefer
        target = self.view.nodes.get(prefer) if prefer and prefer != self.node.node_id and not p.strategy else None
        if target is not None and target.alive and res.fits(request, target.available):
            # The task's large arguments live there: run it next to them.
            return {"spillback": {"node_id": target.node_id, "address": list(target.address)}}
        decision = self.view.decide(request, p.strategy, self._local_view())
        if decision.kind == policy.SPILLBACK and decision.node_id is not None:
            return {"spillback": {"node_id": decision.node_id, "address": list(self.view.nodes[decision.node_id].address)}}
        if decision.kind == policy.UNSCHEDULABLE:
            raise expected(TaskUnschedulableError(decision.reason))
        return None

    def rpc_prepare_runtime_env(self, conn: Connection, p: msg.RuntimeEnvRequest) -> None:
        """Build a runtime env ahead of its first lease (a job's env, ``eager_install``)."""
        check_renv((p.key, p.env))
        if self.renv_agent.context(p.key, p.env) is not None:
            self.renv_agent.touch(p.key)

    def rpc_cancel_lease_request(self, conn: Connection, p: msg.LeaseRequestId) -> None:
        self.apply(self.table.cancel(conn, p.request_id))

    def rpc_return_lease(self, conn: Connection, p: msg.ReturnLease) -> None:
        self.apply(self.table.return_lease(p.lease_id, conn, p.kill))
        self.schedule()

    def rpc_notify_blocked(self, conn: Connection, p: None) -> None:
        worker = conn.state.get("worker")
        if worker is not None and self.apply(self.table.set_blocked(worker, True)):
            self.schedule()

    def rpc_notify_unblocked(self, conn: Connection, p: None) -> None:
        worker = conn.state.get("worker")
        if worker is not None:
            self.apply(self.table.set_blocked(worker, False))

    # ================================================================ RPC: bundles
    def rpc_prepare_bundle(self, conn: Connection, p: msg.PrepareBundle) -> bool:
        self.table.prepare_bundle(p.pg_id, p.index, p.resources)
        return True

    def rpc_cancel_bundle(self, conn: Connection, p: msg.Bundle) -> bool:
        self.table.cancel_bundle(p.pg_id, p.index)
        self.schedule()
        return True

    def rpc_commit_bundle(self, conn: Connection, p: msg.Bundle) -> bool:
        self.apply(self.table.commit_bundle(p.pg_id, p.index))
        self.schedule()
        return True

    def rpc_remove_bundle(self, conn: Connection, p: msg.Bundle) -> bool:
        self.apply(self.table.remove_bundle(p.pg_id, p.index))
        self.schedule()
        return True

    # ================================================================ events from other components
    def holder_gone(self, conn: Connection) -> None:
        self.apply(self.table.holder_gone(conn))

    def rejoined(self, old: Connection, new: Connection, release: set[bytes]) -> None:
        """The control service restarted: its leases move to the new connection, or end if it says so."""
        self.apply(self.table.rebind_holder(old, new, release))
        self._report_now()
        self.schedule()

    def leases_held_by(self, holder: Connection) -> list[list[bytes]]:
        return [[lease.lease_id, lease.worker.worker_id] for lease in self.table.leases.values() if lease.holder is holder]

    # ================================================================ scheduling
    def schedule(self) -> None:
        """Grant every queued request that fits, in arrival order."""
        if self.table.queue:
            self.apply(self.table.schedule(self._envs))

    def apply(self, actions: list[Action]) -> list[Action]:
        """Carry out what the lease table decided; returns the actions."""
        for action in actions:
            if isinstance(action, Grant):
                self._granted(action)
            elif isinstance(action, ResourcesChanged):
                self._report_now()
            elif isinstance(action, KillWorker):
                self.workers.kill(action.worker, action.reason)
            elif isinstance(action, NeedWorkers):
                if not self.node.stopping:
                    self._start_workers_for(action.env_key, action.requests)
            elif isinstance(action, SpillBack):
                self._answer(action)
                self._report_now()  # the request left this node's demand: say so before the autoscaler counts it twice
            elif isinstance(action, ReleaseIdleLeases):
                for holder in action.holders:
                    if not self.link.is_control_service(holder):
                        holder.notify("release_idle_leases", None)
            else:
                self._answer(action)
        return actions

    def _answer(self, action: Reject | Cancelled | Abandoned | SpillBack) -> None:
        fut = self._replies.pop(action.request, None)
        if fut is None or fut.done():
            return
        if isinstance(action, Reject):
            fut.set_exception(action.error)
        elif isinstance(action, Cancelled):
            fut.set_result({"cancelled": True})
        elif isinstance(action, Abandoned):
            fut.cancel()
        else:
            fut.set_result({"spillback": {"node_id": action.node_id, "address": list(action.address)}})

    def _granted(self, grant: Grant) -> None:
        lease, worker = grant.lease, grant.lease.worker
        fut = self._replies.pop(grant.request, None)
        if fut is None or fut.done():
            # Its caller stopped waiting while it was queued: the lease goes straight back.
            self.apply(self.table.return_lease(lease.lease_id, lease.holder))
            return
        lease.granted_at = time.monotonic()
        self.workers.log_monitor.wake(worker.out_path)
        self.workers.log_monitor.wake(worker.err_path)
        self._report_now()
        pool = self.workers.pool
        # Keep a worker warm so the next lease (often an actor) does not wait for a process start.
        if (not worker.env_key and not pool.idle and not pool.num_starting()
                and pool.can_start(self.table.num_blocked()) and not self.node.stopping):
            self.workers.start_worker()
        fut.set_result({
            "lease_id": lease.lease_id,
            "worker_id": worker.worker_id,
            "address": list(worker.address or ()),
            "node_id": self.node.node_id,
            "pid": worker.pid,
            "gpu_ids": lease.gpu_ids,
        })

    def _start_workers_for(self, env_key: str, waiting: list[LeaseRequest]) -> None:
        """Start workers of runtime env ``env_key`` for requests that found none idle.

        Actors first and without the task-worker cap, within the node's real
        limits: the actors beyond them fail now with the reason (never a silent
        wait). Then tasks, up to ``max_workers`` (a full pool makes room by
        ending an idle worker of another env).
        """
        pool = self.workers.pool
        actors = [req for req in waiting if req.for_actor]
        remaining = len(waiting)
        starting = pool.num_starting(env_key)
        wanted = len(actors) - starting
        if wanted > 0:
            room = self._actor_worker_room(wanted)
            if room.count < wanted:
                refusal = self.table.actor_refusal(room.reason)
                for req in actors[len(actors) - (wanted - room.count):]:
                    self.apply(self.table.reject(req, refusal))
                remaining -= wanted - room.count
            for _ in range(room.count):
                if not pool.launch_ready():
                    return  # one registers (or the fork server gets ready) soon: scheduling runs again then
                if not self._start_env_worker(env_key):
                    return
                starting += 1
        while remaining > starting and pool.launch_ready():
            if not pool.can_start(self.table.num_blocked()) and not pool.evict_idle(env_key):
                break
            if not self._start_env_worker(env_key):
                return
            starting += 1

    def _start_env_worker(self, env_key: str) -> bool:
        """Start a worker of ``env_key``; False (the env failed) when its interpreter cannot run."""
        try:
            self.workers.start_worker(env_key)
        except OSError as exc:
            if not env_key:
                raise
            self.renv_agent.report_failure(env_key, f"could not start a worker in it: {exc}")
            asyncio.get_running_loop().call_soon(self.schedule)
            return False
        return True

    def _actor_worker_room(self, wanted: int) -> worker_limits.Room:
        from ember.raylet import memory_monitor

        cfg = config()
        threshold = cfg.memory_usage_threshold
        return worker_limits.actor_worker_room(
            wanted,
            actor_workers=self.workers.pool.num_dedicated(),
            max_actor_workers=cfg.max_actor_workers,
            fds_open=worker_limits.open_fds(),
            fd_limit=self.fd_limit,
            memory_fraction=memory_monitor.read_memory().fraction if threshold < 1.0 else 0.0,
            memory_threshold=threshold,
        )

    # ================================================================ the cluster view
    def _local_view(self) -> dict[bytes, policy.NodeView]:
        return self.view.with_local(self.table.total, self.table.committed_available())

    def on_view(self) -> None:
        """A new cluster view: move waiting requests elsewhere, warn about those no node can run."""
        self.rebalance()
        for req in self.table.queue:
            if not res.fits(req.resources, self.table.total):
                if self.launchable is not None and fits_any(req.resources, self.launchable):
                    continue  # an autoscaler can add a node for it
                self._warn_infeasible(req)

    def rpc_set_launchable(self, conn: Connection, shapes: list[dict[str, float]] | None) -> None:
        """The control service tells which node shapes an autoscaler can add (None: no autoscaler)."""
        self.launchable = None if shapes is None else [res.to_fixed(s) for s in shapes]
        for req in self.table.queue:
            req.warned_infeasible = False  # judged again against the new shapes at the next report

    def rebalance(self) -> None:
        """Send waiting requests to other nodes that can run them now."""
        if len(self.view.nodes) < 2:
            self.schedule()
            return
        view = self._local_view()
        for req in list(self.table.queue):
            # Spilled requests too: the node that sent one here decided on a stale view
            # (reports lag), so it may wait here while a CPU is free elsewhere.
            if res.fits(req.resources, self.table.available):
                continue
            decision = self.view.decide(req.resources, req.payload.strategy, view)
            if decision.kind == policy.SPILLBACK and decision.node_id is not None:
                self.apply(self.table.spill_back(req, decision.node_id, view[decision.node_id].address))
        self.schedule()

    def _warn_infeasible(self, req: LeaseRequest) -> None:
        if req.warned_infeasible:
            return
        if any("_group_" in name for name in req.resources):
            return  # waiting for a placement group to be placed is normal; the control service reports groups that cannot be
        req.warned_infeasible = True
        shape = res.describe(req.resources)
        shapes = "; ".join(sorted(res.describe(n.total) for n in self._local_view().values() if n.alive))
        launchable = self.launchable
        scaler = "" if launchable is None else (
            " nor any node type the autoscaler can add ("
            + ("; ".join(sorted(res.describe(s) for s in launchable)) or "none") + ")")
        message = (
            f"No node in this cluster{scaler} can ever satisfy the resource request {shape}. "
            f"The nodes have: {shapes}. It will wait until a node that can run it joins. "
            "Lower the request (num_cpus=, num_gpus=, resources=), or add a node with enough resources."
        )
        holder: Holder = req.holder
        holder.notify("infeasible", {"request_id": req.request_id, "message": message})


def check_renv(renv: Any) -> None:
    """A request's ``renv`` must be [key, env dict] (checked before it reaches scheduling)."""
    if not (isinstance(renv, (list, tuple)) and len(renv) == 2 and isinstance(renv[0], str) and renv[0]
            and isinstance(renv[1], dict)):
        raise ValueError(f"bad runtime env in the request: {renv!r:.200}")
