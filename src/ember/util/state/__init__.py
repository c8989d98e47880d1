"""Ray's state API: what the cluster's tasks, actors, objects, nodes, jobs and workers are doing.

    from ember.util.state import list_tasks, get_task, summarize_tasks
    list_tasks(filters=[("state", "=", "RUNNING")])
"""

from ember.util.state.api import (
    get_actor,
    get_job,
    get_node,
    get_objects,
    get_placement_group,
    get_task,
    get_worker,
    list_actors,
    list_jobs,
    list_nodes,
    list_objects,
    list_placement_groups,
    list_tasks,
    list_workers,
    summarize_actors,
    summarize_objects,
    summarize_tasks,
)
from ember.util.state.common import (
    ActorState,
    JobState,
    NodeState,
    ObjectState,
    PlacementGroupState,
    TaskState,
    WorkerState,
)
from ember.util.state.logs import get_log, list_logs

__all__ = [
    "ActorState", "JobState", "NodeState", "ObjectState", "PlacementGroupState", "TaskState", "WorkerState",
    "get_actor", "get_job", "get_log", "get_node", "get_objects", "get_placement_group", "get_task", "get_worker",
    "list_actors", "list_jobs", "list_logs", "list_nodes", "list_objects", "list_placement_groups", "list_tasks",
    "list_workers", "summarize_actors", "summarize_objects", "summarize_tasks",
]
