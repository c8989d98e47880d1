"""Ray's ``ray.dag``: lazy task graphs built with ``.bind()`` and run with ``.execute()``."""

from ember.api.dag import (
    ClassMethodNode,
    ClassNode,
    DAGNode,
    FunctionNode,
    InputAttributeNode,
    InputNode,
    MultiOutputNode,
)

__all__ = [
    "ClassMethodNode", "ClassNode", "DAGNode", "FunctionNode", "InputAttributeNode", "InputNode", "MultiOutputNode",
]
