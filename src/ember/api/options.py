"""Validation of ``@remote(...)`` and ``.options(...)`` keywords.

Every option is checked when it is given, with an error that names the
option, the bad value and what is allowed.
"""

from __future__ import annotations

import numbers
from typing import Any

from ember._private.placement_policy import BUNDLE_RESOURCE

TASK_DEFAULTS: dict[str, Any] = {
    "num_returns": 1,
    "num_cpus": 1,
    "num_gpus": 0,
    "memory": 0,
    "resources": None,
    "name": None,
    "max_retries": 3,
    "retry_exceptions": False,
    "scheduling_strategy": None,
    "runtime_env": None,
    "placement_group": None,
    "placement_group_bundle_index": -1,
    "placement_group_capture_child_tasks": None,
    "accelerator_type": None,
    "object_store_memory": None,
    "_metadata": None,
    "label_selector": None,
    "enable_task_events": True,
    "_generator_backpressure_num_objects": None,
}


def _number(name: str, value: Any, minimum: float = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value < minimum:
        raise ValueError(f"The option {name}= must be a number >= {minimum:g}, got {value!r}.")


def _check_runtime_env(value: Any) -> None:
    """A malformed runtime_env raises here, naming the key (not later, on a node)."""
    from ember.runtime_env.validation import validate

    validate(value)


def validate_task_options(options: dict[str, Any]) -> dict[str, Any]:
    for key, value in options.items():
        if key not in TASK_DEFAULTS:
            valid = ", ".join(sorted(k for k in TASK_DEFAULTS if not k.startswith("_")))
            raise ValueError(f"Invalid option keyword {key!r} for remote functions. Valid ones are: {valid}.")
        if key == "num_returns":
            check_num_returns(value)
        elif key == "_generator_backpressure_num_objects" and value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or value == 0 or value < -1:
                raise ValueError(
                    f"The option _generator_backpressure_num_objects= must be a positive integer (or -1: no limit), got {value!r}."
                )
        elif key in ("num_cpus", "num_gpus", "memory") and value is not None:
            _number(key, value)
        elif key == "resources" and value is not None:
            if not isinstance(value, dict):
                raise TypeError(f"The option resources= must be a dict, got {type(value).__name__}.")
            for rname, amount in value.items():
                if rname in ("CPU", "GPU"):
                    raise ValueError(f"Use num_{rname.lower()}s= instead of resources={{'{rname}': ...}}.")
                if rname == BUNDLE_RESOURCE:
                    raise ValueError(
                        f"The resource should not include `{BUNDLE_RESOURCE}`, which is reserved for placement "
                        f"groups. resources: {value}"
                    )
                _number(f"resources[{rname!r}]", amount)
        elif key == "max_retries":
            if isinstance(value, bool) or not isinstance(value, int) or value < -1:
                raise ValueError(f"The option max_retries= must be an integer >= -1 (-1: retry forever), got {value!r}.")
        elif key == "retry_exceptions":
            if not isinstance(value, bool):
                if not isinstance(value, (list, tuple)) or not all(
                    isinstance(c, type) and issubclass(c, BaseException) for c in value
                ):
                    raise TypeError("The option retry_exceptions= must be a bool or a list of exception classes.")
        elif key == "name" and value is not None and not isinstance(value, str):
            raise TypeError(f"The option name= must be a string, got {type(value).__name__}.")
        elif key == "runtime_env" and value is not None:
            _check_runtime_env(value)
        elif key == "scheduling_strategy" and value is not None:
            if isinstance(value, str) and value not in ("DEFAULT", "SPREAD"):
                raise ValueError(f"Unknown scheduling_strategy {value!r}: use 'DEFAULT', 'SPREAD' or a strategy object.")
    return options


def check_num_returns(value: Any) -> None:
    """``num_returns`` is an integer >= 0, ``"streaming"`` or ``"dynamic"`` (generators)."""
    if value in ("streaming", "dynamic"):
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"The option num_returns= must be an integer >= 0, 'streaming' or 'dynamic', got {value!r}.")


def task_resources(options: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    cpus = options.get("num_cpus")
    if cpus is None:  # as Ray: None means the default, 1 CPU for a task
        cpus = TASK_DEFAULTS["num_cpus"]
    if cpus:
        out["CPU"] = float(cpus)
    gpus = options.get("num_gpus")
    if gpus:
        out["GPU"] = float(gpus)
    memory = options.get("memory")
    if memory:
        out["memory"] = float(memory)
    for name, amount in (options.get("resources") or {}).items():
        if amount:
            out[name] = float(amount)
    return out


ACTOR_DEFAULTS: dict[str, Any] = {
    "name": None,
    "namespace": None,
    "lifetime": None,
    "get_if_exists": False,
    "num_cpus": None,
    "num_gpus": 0,
    "memory": 0,
    "resources": None,
    "max_restarts": 0,
    "max_task_retries": 0,
    "max_concurrency": None,
    "concurrency_groups": None,
    "scheduling_strategy": None,
    "runtime_env": None,
    "placement_group": None,
    "placement_group_bundle_index": -1,
    "placement_group_capture_child_tasks": None,
    "max_pending_calls": -1,
    "accelerator_type": None,
    "object_store_memory": None,
    "enable_task_events": True,
    "label_selector": None,
    "_metadata": None,
}


def validate_actor_options(options: dict[str, Any]) -> dict[str, Any]:
    for key, value in options.items():
        if key not in ACTOR_DEFAULTS:
            valid = ", ".join(sorted(k for k in ACTOR_DEFAULTS if not k.startswith("_")))
            raise ValueError(f"Invalid option keyword {key!r} for actors. Valid ones are: {valid}.")
        if key in ("num_cpus", "num_gpus", "memory") and value is not None:
            _number(key, value)
        elif key == "resources" and value is not None:
            validate_task_options({"resources": value})
        elif key in ("max_restarts", "max_task_retries"):
            if isinstance(value, bool) or not isinstance(value, int) or value < -1:
                raise ValueError(f"The option {key}= must be an integer >= -1 (-1: without limit), got {value!r}.")
        elif key == "max_concurrency" and value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"The option max_concurrency= must be an integer >= 1, got {value!r}.")
        elif key == "concurrency_groups" and value is not None:
            if not isinstance(value, dict) or not all(
                isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 1 for k, v in value.items()
            ):
                raise ValueError("The option concurrency_groups= must map group names to integers >= 1.")
        elif key == "lifetime" and value not in (None, "detached", "non_detached"):
            raise ValueError(f"The option lifetime= must be 'detached', 'non_detached' or None, got {value!r}.")
        elif key in ("name", "namespace") and value is not None:
            if not isinstance(value, str) or (key == "name" and not value):
                raise TypeError(f"The option {key}= must be a non-empty string, got {value!r}.")
        elif key == "runtime_env" and value is not None:
            _check_runtime_env(value)
        elif key == "get_if_exists" and not isinstance(value, bool):
            raise TypeError("The option get_if_exists= must be a bool.")
    if options.get("get_if_exists") and not options.get("name"):
        raise ValueError("get_if_exists=True needs name= as well.")
    return options


def actor_resources(options: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    """(resources to place the actor, resources it holds while alive), following Ray's defaults:
    an actor needs 1 CPU to be placed but holds none unless ``num_cpus`` is given."""
    hold = task_resources({**options, "num_cpus": options.get("num_cpus") or 0})
    place = dict(hold)
    if options.get("num_cpus") is None:
        place["CPU"] = 1.0
    elif options["num_cpus"]:
        place["CPU"] = hold["CPU"] = float(options["num_cpus"])
    return place, hold
