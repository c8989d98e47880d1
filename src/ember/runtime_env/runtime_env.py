"""``RuntimeEnv`` and ``RuntimeEnvConfig``: Ray's typed spellings of a runtime_env dict."""

from __future__ import annotations

import json
from typing import Any

from ember.runtime_env.validation import DEFAULT_SETUP_TIMEOUT_S, validate


class RuntimeEnvConfig(dict):  # type: ignore[type-arg]
    """Options of the environment's setup: ``setup_timeout_seconds`` (-1: no limit), ``eager_install``."""

    def __init__(self, setup_timeout_seconds: int = DEFAULT_SETUP_TIMEOUT_S, eager_install: bool = True) -> None:
        super().__init__(setup_timeout_seconds=setup_timeout_seconds, eager_install=eager_install)
        validate({"config": dict(self)})


class RuntimeEnv(dict):  # type: ignore[type-arg]
    """A runtime environment, checked when built; usable wherever a runtime_env dict is.

    ``RuntimeEnv(working_dir=".", pip=["requests"], env_vars={"A": "1"})``
    """

    def __init__(self, *, py_modules: list[Any] | None = None, working_dir: str | None = None,
                 pip: Any = None, uv: Any = None, env_vars: dict[str, str] | None = None,
                 config: dict[str, Any] | RuntimeEnvConfig | None = None, _validate: bool = True, **kwargs: Any) -> None:
        given = {"py_modules": py_modules, "working_dir": working_dir, "pip": pip, "uv": uv,
                 "env_vars": env_vars, "config": dict(config) if config is not None else None, **kwargs}
        given = {k: v for k, v in given.items() if v is not None}
        super().__init__(validate(given) if _validate else given)

    # Ray's accessors
    def working_dir(self) -> str:
        return str(self.get("working_dir", ""))

    def py_modules(self) -> list[str]:
        return list(self.get("py_modules", []))

    def env_vars(self) -> dict[str, str]:
        return dict(self.get("env_vars", {}))

    def has_working_dir(self) -> bool:
        return "working_dir" in self

    def has_pip(self) -> bool:
        return "pip" in self

    def has_uv(self) -> bool:
        return "uv" in self

    def pip_config(self) -> dict[str, Any]:
        return dict(self.get("pip", {}))

    def uv_config(self) -> dict[str, Any]:
        return dict(self.get("uv", {}))

    def to_dict(self) -> dict[str, Any]:
        return dict(self)

    def serialize(self) -> str:
        return json.dumps(self, sort_keys=True)

    @classmethod
    def deserialize(cls, serialized: str) -> RuntimeEnv:
        return cls(_validate=False, **json.loads(serialized))
