"""Serialization: unpicklable arguments, custom serializers, refs nested in values."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import ember
from ember.util import deregister_serializer, register_serializer


@ember.remote
def identity(x):
    return x


@ember.remote
def describe(x):
    return type(x).__name__


class Holder:
    """Not picklable: it holds a lock."""

    def __init__(self, value):
        self.value = value
        self.lock = threading.Lock()


def test_unpicklable_positional_argument_names_position_and_function(ember_shared):
    with pytest.raises(TypeError) as info:
        describe.remote(threading.Lock())
    message = str(info.value)
    assert "argument 0 of describe()" in message
    assert "lock" in message


def test_unpicklable_second_argument_and_keyword_argument(ember_shared):
    @ember.remote
    def two(a, b=None, *, flag=None):
        return a

    with pytest.raises(TypeError, match=r"argument 1 of two\(\)"):
        two.remote(1, threading.Lock())
    with pytest.raises(TypeError, match=r"keyword argument 'flag' of two\(\)"):
        two.remote(1, flag=threading.Lock())
    # Nothing was submitted, and the cluster still works.
    assert ember.get(two.remote(5)) == 5


def test_unpicklable_put_and_return_value(ember_shared):
    with pytest.raises(TypeError, match="put"):
        ember.put(threading.Lock())

    @ember.remote
    def returns_lock():
        return threading.Lock()

    with pytest.raises(TypeError, match="return value"):
        ember.get(returns_lock.remote())


def test_unpicklable_closure_names_the_function(ember_shared):
    lock = threading.Lock()

    @ember.remote
    def uses_lock():
        return lock.locked()

    with pytest.raises(TypeError, match="uses_lock"):
        uses_lock.remote()


def test_register_serializer_for_an_unpicklable_class(ember_shared):
    with pytest.raises(TypeError):
        ember.put(Holder(1))
    register_serializer(Holder, serializer=lambda h: h.value, deserializer=lambda v: Holder(v))
    try:
        got = ember.get(ember.put(Holder({"x": 1})))
        assert isinstance(got, Holder) and got.value == {"x": 1}

        @ember.remote
        def bump(h):
            # The deserializer travelled with the value: no registration needed here.
            return type(h).__name__, h.value + 1, h.lock.locked()

        assert ember.get(bump.remote(Holder(41))) == ("Holder", 42, False)
    finally:
        deregister_serializer(Holder)
    with pytest.raises(TypeError):
        ember.put(Holder(1))


def test_register_serializer_rejects_bad_arguments():
    with pytest.raises(TypeError):
        register_serializer("not a class", serializer=str, deserializer=str)
    with pytest.raises(TypeError):
        register_serializer(Holder, serializer=None, deserializer=str)


def test_refs_nested_in_values_survive_a_round_trip(ember_shared):
    inner = ember.put("inner value")
    big = ember.put(np.arange(100_000))
    outer = ember.put({"ref": inner, "list": [big, inner]})
    value = ember.get(outer)
    assert isinstance(value["ref"], ember.ObjectRef)
    assert value["ref"] == inner
    assert ember.get(value["ref"]) == "inner value"
    np.testing.assert_array_equal(ember.get(value["list"][0]), np.arange(100_000))


def test_nested_ref_outlives_the_driver_handle(ember_shared):
    inner = ember.put("kept alive by the outer value")
    outer = ember.put([inner])
    del inner
    (ref,) = ember.get(outer)
    assert ember.get(ref) == "kept alive by the outer value"


def test_task_returns_refs_nested_in_its_value(ember_shared):
    @ember.remote
    def make_refs():
        return {"a": ember.put("from a task"), "b": [identity.remote(7)]}

    value = ember.get(make_refs.remote())
    assert ember.get(value["a"]) == "from a task"
    assert ember.get(value["b"][0]) == 7


def test_refs_passed_through_tasks_in_containers(ember_shared):
    @ember.remote
    def unwrap(container):
        return ember.get(container["refs"])

    refs = [ember.put(i) for i in range(3)] + [identity.remote(3)]
    assert ember.get(unwrap.remote({"refs": refs})) == [0, 1, 2, 3]


def test_exception_values_and_numpy_dtypes_round_trip(ember_shared):
    structured = np.zeros(4, dtype=[("a", "i4"), ("b", "f8")])
    out = ember.get(identity.remote(structured))
    assert out.dtype == structured.dtype
    err = ember.get(identity.remote(ValueError("carried, not raised")))
    assert isinstance(err, ValueError) and str(err) == "carried, not raised"


def test_functions_pickled_by_value_keep_their_file_and_line_numbers():
    from ember._private.serialization import dumps_function, loads_function

    def make():
        def inner(x):
            return 1 / x

        return inner

    fn = loads_function(dumps_function(make()))
    assert fn.__code__.co_filename == __file__
    assert fn.__code__.co_firstlineno == make().__code__.co_firstlineno
    assert fn(4) == 0.25
    with pytest.raises(ZeroDivisionError) as info:
        fn(0)
    assert info.traceback[-1].path.name == "test_serialization.py"
    assert "return 1 / x" in str(info.traceback[-1].statement)
