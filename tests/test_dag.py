"""The lazy DAG API: ``.bind()`` on functions, actor classes and methods; ``InputNode``; ``execute``."""

from __future__ import annotations

import os

import pytest

import ember
from ember.dag import ClassNode, FunctionNode, InputNode, MultiOutputNode


@ember.remote
def add(a, b):
    return a + b


@ember.remote
def pid_of(_):
    return os.getpid()


@ember.remote
class Counter:
    def __init__(self, start):
        self.value = start

    def inc(self, by):
        self.value += by
        return self.value

    def pid(self):
        return os.getpid()


def test_function_dag_with_input_items_and_attributes(ember_shared):
    with InputNode() as inp:
        dag = add.bind(add.bind(inp[0], inp[1]), inp.extra)
    assert isinstance(dag, FunctionNode)
    ref = dag.execute(1, 2, extra=10)
    assert isinstance(ref, ember.ObjectRef)
    assert ember.get(ref) == 13
    assert ember.get(dag.execute(5, 5, extra=0)) == 10  # a DAG runs again with new input

    class Point:
        x, y = 3, 4

    with InputNode() as inp:
        by_attribute = add.bind(inp.x, inp.y)
        by_key = add.bind(inp["x"], inp["y"])
    assert ember.get(by_attribute.execute(Point())) == 7  # attributes of the single argument
    assert ember.get(by_key.execute({"x": 1, "y": 2})) == 3  # items of the single argument

    with InputNode() as inp:
        plain = add.bind(inp, inp)
    assert ember.get(plain.execute(21)) == 42
    assert ember.get(add.bind(1, 2).execute()) == 3


def test_nodes_nested_in_containers_and_options(ember_shared):
    @ember.remote
    def total(values, extra):
        return sum(ember.get(values)) + extra["k"]  # refs nested in a list arrive as refs, as in Ray

    with InputNode() as inp:
        dag = total.options(num_cpus=0.5).bind([add.bind(inp, 1), add.bind(inp, 2)], {"k": inp})
    assert ember.get(dag.execute(10)) == 10 + 1 + 10 + 2 + 10
    assert dag.get_options() == {}


def test_a_shared_node_runs_once_per_execute(ember_shared):
    @ember.remote
    def token(_):
        return os.urandom(8)

    with InputNode() as inp:
        shared = token.bind(inp)
        both = MultiOutputNode([add.bind(shared, b""), add.bind(shared, b"")])
    first, second = ember.get(both.execute(0))
    assert first == second
    again, _ = ember.get(both.execute(0))
    assert again != first


def test_actor_dag_and_multi_output(ember_shared):
    with InputNode() as inp:
        counter = Counter.bind(100)
        assert isinstance(counter, ClassNode)
        dag = MultiOutputNode([counter.inc.bind(inp), counter.inc.bind(inp), add.bind(inp, 1)])
    refs = dag.execute(5)
    assert isinstance(refs, list) and all(isinstance(r, ember.ObjectRef) for r in refs)
    assert ember.get(refs) == [105, 110, 6]  # one actor per execute, calls in order
    assert ember.get(dag.execute(1)) == [101, 102, 2]  # a new actor for the next execute

    handle = Counter.options(num_cpus=0).bind(7).execute()
    assert ember.get(handle.inc.remote(1)) == 8

    existing = Counter.remote(0)
    with InputNode() as inp:
        on_handle = existing.inc.bind(inp)
        with_options = existing.inc.options(name="named-call").bind(inp)
    assert ember.get(on_handle.execute(3)) == 3
    assert ember.get(with_options.execute(4)) == 7


def test_bad_dag_input_fails_clearly(ember_shared):
    with InputNode() as inp:
        dag = add.bind(inp[2], 1)
    with pytest.raises(ValueError, match="reads input argument 2"):
        dag.execute(1)
    with InputNode() as inp:
        whole = add.bind(inp, 1)
    with pytest.raises(ValueError, match="exactly one positional argument"):
        whole.execute()
    with InputNode() as inp:
        keyed = add.bind(inp.missing, 1)
    with pytest.raises(ValueError, match="no keyword argument 'missing'"):
        keyed.execute(1, 2)
    with pytest.raises(TypeError, match="MultiOutputNode takes a list"):
        MultiOutputNode(add.bind(1, 2))
    with InputNode() as inp:
        failing = add.bind(inp, "text")
    with pytest.raises(ember.exceptions.RayTaskError, match="unsupported operand"):
        ember.get(failing.execute(1))
