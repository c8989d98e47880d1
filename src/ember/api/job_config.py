"""``JobConfig``: a job's settings given to ``ember.init(job_config=...)`` (Ray's ``ray.job_config``)."""

from __future__ import annotations

from typing import Any

_LIFETIMES = ("detached", "non_detached")


class JobConfig:
    """What a driver's job is configured with.

    ``ray_namespace`` is the job's namespace when ``init`` is not given ``namespace=``;
    ``runtime_env`` its runtime environment when ``init`` is not given ``runtime_env=``;
    ``default_actor_lifetime`` the lifetime of actors created without ``lifetime=``;
    ``metadata`` is kept with the job. ``jvm_options`` and ``code_search_path`` are
    accepted for compatibility (Ember runs Python only).
    """

    def __init__(
        self,
        jvm_options: list[str] | None = None,
        code_search_path: list[str] | None = None,
        runtime_env: dict[str, Any] | None = None,
        _client_job: bool = False,
        metadata: dict[str, str] | None = None,
        ray_namespace: str | None = None,
        default_actor_lifetime: str = "non_detached",
        _disable_job_level_lineage_reconstruction: bool = False,
        _py_driver_sys_path: list[str] | None = None,
    ) -> None:
        if code_search_path is not None and not isinstance(code_search_path, (list, tuple)):
            raise TypeError(f"code_search_path must be a list or a tuple, got {type(code_search_path).__name__}")
        self.jvm_options = list(jvm_options or [])
        self.code_search_path = list(code_search_path or [])
        self._client_job = _client_job
        self.metadata: dict[str, str] = dict(metadata or {})
        self.set_ray_namespace(ray_namespace)
        self.set_runtime_env(runtime_env)
        self.set_default_actor_lifetime(default_actor_lifetime)
        self._disable_job_level_lineage_reconstruction = _disable_job_level_lineage_reconstruction
        self._py_driver_sys_path = list(_py_driver_sys_path or [])

    def set_metadata(self, key: str, value: str) -> None:
        self.metadata[key] = value

    def set_ray_namespace(self, ray_namespace: str | None) -> None:
        if ray_namespace is not None:
            validate_namespace(ray_namespace)
        self.ray_namespace = ray_namespace

    def set_runtime_env(self, runtime_env: dict[str, Any] | None, validate: bool = False) -> None:
        if validate and runtime_env:
            from ember.runtime_env.validation import validate as check

            check(runtime_env)
        self.runtime_env: dict[str, Any] = dict(runtime_env) if runtime_env is not None else {}

    def set_default_actor_lifetime(self, default_actor_lifetime: str) -> None:
        if default_actor_lifetime not in _LIFETIMES:
            raise ValueError(f"Default actor lifetime must be one of {list(_LIFETIMES)}, got {default_actor_lifetime!r}")
        self.default_actor_lifetime = default_actor_lifetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "ray_namespace": self.ray_namespace, "runtime_env": self.runtime_env, "metadata": self.metadata,
            "default_actor_lifetime": self.default_actor_lifetime, "code_search_path": self.code_search_path,
        }

    @classmethod
    def from_json(cls, job_config_json: dict[str, Any]) -> JobConfig:
        return cls(**job_config_json)

    def __repr__(self) -> str:
        return f"JobConfig({self.to_dict()!r})"


def validate_namespace(namespace: Any) -> None:
    """Ray's rule: a namespace is None or a non-empty string."""
    if not isinstance(namespace, str):
        raise TypeError("namespace must be None or a string.")
    if namespace == "":
        raise ValueError('"" is not a valid namespace. Pass None to not specify a namespace.')


__all__ = ["JobConfig", "validate_namespace"]
