"""``ember.get_runtime_context()``: where and as what this code runs."""

from __future__ import annotations

from typing import Any

from ember._private import runtime


class RuntimeContext:
    def __init__(self, worker: Any) -> None:
        self._worker = worker

    def get_job_id(self) -> str:
        return self._worker.current_job_id.hex()

    def get_node_id(self) -> str:
        return self._worker.node_id.hex()

    def get_worker_id(self) -> str:
        return self._worker.worker_id.hex()

    def get_task_id(self) -> str | None:
        task_id = self._worker.current_task_id
        return task_id.hex() if task_id else None

    def get_actor_id(self) -> str | None:
        actor_id = self._worker.actor_id
        return actor_id.hex() if actor_id else None

    def get_actor_name(self) -> str | None:
        return None

    def get_task_name(self) -> str | None:
        return self._worker.current_task_name

    @property
    def namespace(self) -> str | None:
        return self._worker.namespace

    def get_namespace(self) -> str | None:
        return self._worker.namespace

    @property
    def gcs_address(self) -> str:
        return self._worker.gcs_address

    @property
    def was_current_actor_reconstructed(self) -> bool:
        return False

    def get_assigned_resources(self) -> dict[str, float]:
        return {}

    @property
    def worker(self) -> Any:
        return self._worker

    def get(self) -> dict[str, Any]:
        return {
            "job_id": self.get_job_id(),
            "node_id": self.get_node_id(),
            "task_id": self.get_task_id(),
            "namespace": self.namespace,
        }


def get_runtime_context() -> RuntimeContext:
    return RuntimeContext(runtime.core_worker())
