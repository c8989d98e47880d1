"""Constants that programs and libraries written for Ray read from ``ray_constants``.

Values are Ember's where Ember has the setting (e.g. the inline object limit), Ray's
defaults otherwise. ``env_integer``/``env_bool``/``env_float`` read an environment
variable with a default, as Ray's helpers do.
"""

from __future__ import annotations

import os


def env_integer(key: str, default: int) -> int:
    value = os.environ.get(key)
    return int(value) if value not in (None, "") else default


def env_float(key: str, default: float) -> float:
    value = os.environ.get(key)
    return float(value) if value not in (None, "") else default


def env_bool(key: str, default: bool) -> bool:
    value = os.environ.get(key)
    if value in (None, ""):
        return default
    return value.lower() in ("true", "1")


def env_set_by_user(key: str) -> bool:
    return key in os.environ


ID_SIZE = 28
#: Every node has the custom resource ``node:<ip>`` (1.0).
NODE_ID_PREFIX = "node:"
HEAD_NODE_RESOURCE_NAME = "node:__internal_head__"

DEFAULT_PORT = 6379
DEFAULT_DASHBOARD_IP = "127.0.0.1"
DEFAULT_DASHBOARD_PORT = 8265
DEFAULT_METRIC_EXPORT_PORT = 0
DEFAULT_CLIENT_PORT = 10001

RAY_ADDRESS_ENVIRONMENT_VARIABLE = "RAY_ADDRESS"
RAY_NAMESPACE_ENVIRONMENT_VARIABLE = "RAY_NAMESPACE"
RAY_RUNTIME_ENV_ENVIRONMENT_VARIABLE = "RAY_RUNTIME_ENV"
RAY_JOB_CONFIG_JSON_ENV_VAR = "RAY_JOB_CONFIG_JSON_ENV_VAR"
RESOURCES_ENVIRONMENT_VARIABLE = "RAY_OVERRIDE_RESOURCES"
NOSET_CUDA_VISIBLE_DEVICES_ENV_VAR = "RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"

#: Values smaller than this travel inline with task replies (Ember's ``max_direct_call_object_size``).
MAX_DIRECT_CALL_OBJECT_SIZE = 100 * 1024
DEFAULT_OBJECT_STORE_MEMORY_PROPORTION = 0.3
DEFAULT_OBJECT_STORE_MAX_MEMORY_BYTES = 200 * 10**9
OBJECT_STORE_MINIMUM_MEMORY_BYTES = 75 * 1024 * 1024
MAX_RESOURCE_QUANTITY = 100e12
MEMORY_RESOURCE_UNIT_BYTES = 1
RESOURCE_CONSTRAINT_PREFIX = "accelerator_type:"

#: Actors and tasks: defaults of their options.
DEFAULT_ACTOR_MAX_CONCURRENCY_ASYNC = 1000
DEFAULT_TASK_MAX_RETRIES = 3
DEFAULT_MAX_CONCURRENCY_THREADED_ACTOR = 1
DEFAULT_ACTOR_CREATION_CPU_SIMPLE = 1
DEFAULT_ACTOR_METHOD_CPU_SIMPLE = 1
DEFAULT_ACTOR_CREATION_CPU_SPECIFIED = 0
DEFAULT_ACTOR_METHOD_CPU_SPECIFIED = 0

#: Names of the internal KV namespaces (as Ray's).
KV_NAMESPACE_DASHBOARD = b"dashboard"
KV_NAMESPACE_SESSION = b"session"
KV_NAMESPACE_TRACING = b"tracing"
KV_NAMESPACE_PDB = b"ray_pdb"
KV_NAMESPACE_HEALTHCHECK = b"healthcheck"
KV_NAMESPACE_JOB = b"job"
KV_NAMESPACE_CLUSTER = b"cluster"
KV_HEAD_NODE_ID_KEY = b"head_node_id"
KV_NAMESPACE_FUNCTION_TABLE = b"fun"

#: Log and session layout.
LOGGER_FORMAT = "%(asctime)s\t%(levelname)s %(filename)s:%(lineno)s -- %(message)s"
LOGGER_LEVEL = "info"
LOGGER_LEVEL_CHOICES = ["debug", "info", "warning", "error", "critical"]
LOG_PREFIX_ACTOR_NAME = ":actor_name:"
LOG_PREFIX_TASK_NAME = ":task_name:"
LOG_PREFIX_JOB_ID = ":job_id:"
SESSION_LATEST = "session_latest"
PROCESS_TYPE_RAYLET = "raylet"
PROCESS_TYPE_GCS_SERVER = "gcs_server"
PROCESS_TYPE_WORKER = "worker"
PROCESS_TYPE_DASHBOARD = "dashboard"

#: Timeouts (seconds) that Ray's tests and libraries read.
DEFAULT_RUNTIME_ENV_TIMEOUT_SECONDS = 600
GCS_SERVER_REQUEST_TIMEOUT_SECONDS = env_integer("RAY_GCS_SERVER_REQUEST_TIMEOUT_SECONDS", 60)
RAY_GCS_RPC_TIMEOUT_S = GCS_SERVER_REQUEST_TIMEOUT_SECONDS
CALLER_MEMORY_USAGE_PER_OBJECT_REF = 3000

# Ray's generic helpers for reading settings are part of this module's public face.
__all__ = [name for name in dir() if name.isupper() or name.startswith("env_")]
