"""``ember.get_runtime_context()``: where and as what this code runs.

Matches Ray's ``RuntimeContext``: ``get_*_id()`` methods return hex strings, the
``*_id`` properties return id objects (``JobID``, ``NodeID``, ``TaskID``, ``ActorID``),
and the task/actor ones are for workers only (a driver asking for them gets an
``AssertionError``, as in Ray).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from ember._private import ids, runtime

if TYPE_CHECKING:
    from ember.protocol.core_worker import ActorCreationPush
    from ember.runtime_env import RuntimeEnv

#: A placement-group resource name: ``CPU_group_<index>_<pg hex>`` or ``CPU_group_<pg hex>``.
_PG_RESOURCE = re.compile(r"^(.+)_group_(?:\d+_)?[0-9a-f]+$")


class RuntimeContext:
    def __init__(self, worker: Any) -> None:
        self._worker = worker

    # ------------------------------------------------------------------ ids
    def get_job_id(self) -> str:
        value: bytes = self._worker.current_job_id
        return value.hex()

    def get_node_id(self) -> str:
        value: bytes = self._worker.node_id
        return value.hex()

    def get_worker_id(self) -> str:
        value: bytes = self._worker.worker_id
        return value.hex()

    def get_task_id(self) -> str | None:
        task_id = self._worker.current_task_id
        return task_id.hex() if task_id else None

    def get_actor_id(self) -> str | None:
        actor_id = self._worker.actor_id
        return actor_id.hex() if actor_id else None

    def get_actor_name(self) -> str | None:
        spec = self._actor_spec()
        name: str | None = spec.get("name") if spec is not None else None
        return name

    def get_task_name(self) -> str | None:
        name: str | None = self._worker.current_task_name
        return name

    def get_placement_group_id(self) -> str | None:
        pg = getattr(self._worker, "current_placement_group", None)
        return pg.hex() if pg else None

    @property
    def job_id(self) -> ids.JobID:
        return ids.JobID(self._worker.current_job_id)

    @property
    def node_id(self) -> ids.NodeID:
        return ids.NodeID(self._worker.node_id)

    @property
    def task_id(self) -> ids.TaskID | None:
        self._require_worker("task_id")
        task_id = self._worker.current_task_id
        return ids.TaskID(task_id) if task_id else None

    @property
    def actor_id(self) -> ids.ActorID | None:
        self._require_worker("actor_id")
        actor_id = self._worker.actor_id
        return ids.ActorID(actor_id) if actor_id else None

    @property
    def namespace(self) -> str | None:
        namespace: str | None = self._worker.namespace
        return namespace

    def get_namespace(self) -> str | None:
        namespace: str | None = self._worker.namespace
        return namespace

    @property
    def gcs_address(self) -> str:
        address: str = self._worker.gcs_address
        return address

    @property
    def runtime_env(self) -> RuntimeEnv:
        """The runtime env this process runs in (a driver: its job's), local folders as their cluster URIs."""
        from ember.runtime_env import RuntimeEnv

        return RuntimeEnv(_validate=False, **self._worker.renv.parent)

    def get_runtime_env_string(self) -> str:
        return self.runtime_env.serialize()

    # --------------------------------------------------------------- actors
    @property
    def current_actor(self) -> Any:
        """The handle of the actor this code runs in (RuntimeError outside an actor)."""
        spec = self._actor_spec()
        if spec is None:
            raise RuntimeError("This method is only available in an actor.")
        from ember.api.actor import ActorHandle

        return ActorHandle(spec["actor_id"], spec.get("meta") or {})

    @property
    def was_current_actor_reconstructed(self) -> bool:
        """Whether this actor has been restarted (this is not its first incarnation)."""
        spec = self._actor_spec()
        if spec is None:
            raise AssertionError("This method shouldn't be called inside Ray tasks.")
        return int(spec.get("incarnation") or 1) > 1

    # ------------------------------------------------------------ resources
    def get_assigned_resources(self) -> dict[str, float]:
        """The resources the current task or actor holds, with the names it asked for
        (a placement group's renamed resources are given back their plain names)."""
        self._require_worker("get_assigned_resources")
        out: dict[str, float] = {}
        for name, amount in (self._worker.assigned_resources or {}).items():
            match = _PG_RESOURCE.match(name)
            plain = match.group(1) if match else name
            if plain == "bundle" or not amount:
                continue
            out[plain] = float(amount)
        return out

    def get_resource_ids(self) -> dict[str, list[str]]:
        return self.get_accelerator_ids()

    def get_accelerator_ids(self) -> dict[str, list[str]]:
        return {"GPU": [str(i) for i in self._worker.gpu_ids]}

    # ---------------------------------------------------------- cancellation
    def is_canceled(self) -> bool:
        """Whether ``ember.cancel`` was called on the current task (workers only)."""
        executor = getattr(self._worker, "executor", None)
        if executor is None:
            raise RuntimeError(
                f"This method is only available when the process is a worker. Current mode: {self._worker.mode}"
            )
        if executor.actor is not None and executor.actor.mode == "async":
            raise RuntimeError("This method is not supported in an async actor.")
        task_id = self._worker.current_task_id
        return task_id is not None and executor.was_cancelled(task_id)

    @property
    def worker(self) -> Any:
        return self._worker

    def get(self) -> dict[str, Any]:
        """Ray's dictionary: job_id, node_id, namespace; in a worker also task_id and actor_id when set."""
        context: dict[str, Any] = {"job_id": self.job_id, "node_id": self.node_id, "namespace": self.namespace}
        if getattr(self._worker, "executor", None) is not None:
            if self.task_id is not None:
                context["task_id"] = self.task_id
            if self.actor_id is not None:
                context["actor_id"] = self.actor_id
        return context

    # -------------------------------------------------------------- helpers
    def _require_worker(self, what: str) -> None:
        if getattr(self._worker, "executor", None) is None:
            raise AssertionError(
                f"{what} is only available when the process is a worker. Current mode: {self._worker.mode}"
            )

    def _actor_spec(self) -> ActorCreationPush | None:
        spec: ActorCreationPush | None = getattr(self._worker, "actor_spec", None)
        return spec


def get_runtime_context() -> RuntimeContext:
    return RuntimeContext(runtime.core_worker())
