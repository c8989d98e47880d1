"""Config.from_env and serialization of errors (no processes)."""

from __future__ import annotations

import dataclasses
import pickle
import threading

import pytest

from ember._private import serialization
from ember._private.config import Config, config, reset_config
from ember.exceptions import RaySystemError, RayTaskError


def test_defaults_without_environment():
    cfg = Config.from_env({})
    assert cfg == Config()
    assert cfg.max_direct_call_object_size == 100 * 1024
    assert cfg.max_hello_bytes == 4096


def test_overrides_are_parsed_with_the_field_type():
    cfg = Config.from_env({
        "EMBER_rpc_timeout_s": "1.5",
        "EMBER_max_tasks_in_flight_per_worker": "2",
        "EMBER_handshake_timeout_s": "3",
    })
    assert cfg.rpc_timeout_s == 1.5 and isinstance(cfg.rpc_timeout_s, float)
    assert cfg.max_tasks_in_flight_per_worker == 2 and isinstance(cfg.max_tasks_in_flight_per_worker, int)
    assert cfg.handshake_timeout_s == 3.0


def test_every_field_can_be_overridden():
    for field in dataclasses.fields(Config):
        kind = type(field.default)
        raw = "1" if kind in (int, float, bool) else "x"
        cfg = Config.from_env({f"EMBER_{field.name}": raw})
        expected = True if kind is bool else kind(raw)
        assert getattr(cfg, field.name) == expected, field.name
        assert type(getattr(cfg, field.name)) is kind, field.name


def test_bad_values_name_the_variable():
    with pytest.raises(ValueError, match="EMBER_max_frame_bytes='lots' is not a valid int"):
        Config.from_env({"EMBER_max_frame_bytes": "lots"})
    with pytest.raises(ValueError, match="EMBER_rpc_timeout_s"):
        Config.from_env({"EMBER_rpc_timeout_s": "soon"})
    with pytest.raises(ValueError, match="EMBER_max_tasks_in_flight_per_worker"):
        Config.from_env({"EMBER_max_tasks_in_flight_per_worker": "1.5"})


def test_unrelated_variables_are_ignored():
    cfg = Config.from_env({"EMBER_not_a_field": "1", "rpc_timeout_s": "9", "PATH": "/bin"})
    assert cfg == Config()


def test_process_config_reads_os_environ_once(monkeypatch):
    monkeypatch.setenv("EMBER_rpc_timeout_s", "7.0")
    reset_config()
    try:
        assert config().rpc_timeout_s == 7.0
        monkeypatch.setenv("EMBER_rpc_timeout_s", "8.0")
        assert config().rpc_timeout_s == 7.0  # cached
        reset_config()
        assert config().rpc_timeout_s == 8.0
    finally:
        monkeypatch.delenv("EMBER_rpc_timeout_s")
        reset_config()


# ----------------------------------------------------------------------------- error serialization
class TwoArgError(Exception):
    def __init__(self, code, detail):
        super().__init__(f"{code}: {detail}")
        self.code = code


def _round_trip(error):
    obj = serialization.serialize_error(error)
    assert obj.flags == serialization.FLAG_ERROR
    return pickle.loads(obj.data, buffers=obj.buffers)


def test_error_whose_init_takes_other_arguments_round_trips():
    out = _round_trip(TwoArgError(3, "detail"))
    assert type(out) is TwoArgError and out.code == 3 and str(out) == "3: detail"
    task_error = RayTaskError("f", "tb", TwoArgError(4, "x"), 1, "ip", "node")
    rebuilt = _round_trip(task_error).as_instanceof_cause()
    assert isinstance(rebuilt, TwoArgError) and isinstance(rebuilt, RayTaskError)
    assert rebuilt.code == 4


def test_unpicklable_error_falls_back_without_raising():
    err = RuntimeError("has a lock")
    err.lock = threading.Lock()
    out = _round_trip(err)
    assert isinstance(out, RaySystemError) and "has a lock" in str(out)
    wrapped = _round_trip(RayTaskError("g", "Traceback: boom", err, 2, "ip", "node"))
    assert isinstance(wrapped, RayTaskError)
    assert wrapped.function_name == "g" and "Traceback: boom" in str(wrapped)


def test_nested_task_error_keeps_the_original_class():
    inner = RayTaskError("inner", "tb1", KeyError("k"), 1, "ip", "n")
    outer = RayTaskError("outer", "tb2", inner.as_instanceof_cause(), 2, "ip", "n")
    rebuilt = _round_trip(outer).as_instanceof_cause()
    assert isinstance(rebuilt, KeyError)
    assert rebuilt.function_name == "outer"


# ----------------------------------------------------------------------------- every Ember error pickles faithfully
def _ember_error_classes():
    from ember import exceptions

    return [getattr(exceptions, n) for n in sorted(exceptions.__all__)
            if issubclass(getattr(exceptions, n), exceptions.RayError)]


@pytest.mark.parametrize("cls", _ember_error_classes(), ids=lambda c: c.__name__)
def test_ember_errors_survive_pickling_unchanged(cls):
    from ember.exceptions import RemoteError

    if cls is RayTaskError:
        error = RayTaskError("fn", "Traceback ...", ValueError("v"), 12, "127.0.0.1", "ab" * 16)
    elif cls is RemoteError:
        from ember.exceptions import ErrorCode

        error = RemoteError(ErrorCode.BAD_REQUEST, "message")
    else:
        try:
            error = cls("a message")
        except TypeError:
            error = cls()
    out = pickle.loads(pickle.dumps(error))
    assert type(out) is cls
    assert str(out) == str(error)
    assert out.args == error.args
    assert out.__dict__.keys() == error.__dict__.keys()


def test_cancelled_and_lost_errors_keep_their_message():
    from ember.exceptions import ObjectLostError, OwnerDiedError, TaskCancelledError

    assert str(pickle.loads(pickle.dumps(TaskCancelledError("ab12")))) == "Task ab12 was cancelled."
    lost = pickle.loads(pickle.dumps(OwnerDiedError("ff00", "The owner died.")))
    assert str(lost) == "The owner died." and lost.object_ref_hex == "ff00"
    assert str(pickle.loads(pickle.dumps(ObjectLostError("ee")))) == "Object ee is lost and cannot be recovered."
