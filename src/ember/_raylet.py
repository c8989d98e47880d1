"""Ray's ``ray._raylet`` names that programs import (``ObjectRefGenerator``...)."""

from ember._private.ids import ActorID, JobID, NodeID, TaskID, WorkerID
from ember._private.object_ref import ObjectRef
from ember.core.generator_stream import DynamicObjectRefGenerator, ObjectRefGenerator

#: Ray's older name for the streaming generator.
StreamingObjectRefGenerator = ObjectRefGenerator

__all__ = [
    "ActorID", "DynamicObjectRefGenerator", "JobID", "NodeID", "ObjectRef", "ObjectRefGenerator",
    "StreamingObjectRefGenerator", "TaskID", "WorkerID",
]
