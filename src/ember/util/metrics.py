"""Application metrics with Ray's API: ``Counter``, ``Gauge``, ``Histogram``.

Usable from the driver, any task or any actor. A record is validated where it
is made (bad names, missing or unknown tag keys, bad values raise at once),
aggregated in this process and sent to the node daemon in batches off the
hot path (``ember.core.metrics_recorder``). Each node daemon serves every
process's metrics in Prometheus text on its metrics port as ``ray_<name>``
(counters as ``ray_<name>_total``), labelled with the tags plus ``Component``,
``NodeAddress``, ``SessionName``, ``Version`` and ``WorkerId`` as Ray does.

Differences from Ray, chosen to lose no data silently: an invalid metric name
raises ``ValueError`` (Ray warns and discards the metric), a tag key not in
``tag_keys`` raises ``ValueError`` on a record too (Ray checks it only in
``set_default_tags``), and a tag key must be a valid Prometheus label name.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

from ember.core import metrics_recorder as recorder

_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
#: (name, tag_keys) already validated in this process.
_VALID: set[tuple[str, Any]] = set()


def _check_name(name: Any) -> str:
    if not isinstance(name, str):
        raise TypeError(f"Metric name must be str, got {type(name)}.")
    if not name:
        raise ValueError("Empty name is not allowed. Please provide a metric name.")
    if not _NAME_RE.match(name):
        raise ValueError(
            f"Invalid metric name: {name!r}. Metric names can only contain letters, numbers, "
            "_ and :, and cannot start with a number."
        )
    if ":" in name:
        warnings.warn(
            f"Metric name {name} contains a : character, which Ray no longer allows.",
            FutureWarning, stacklevel=3,
        )
    return name


def _check_value(value: Any) -> float:
    if not isinstance(value, (int, float)):
        raise TypeError(f"value must be int or float, got {type(value)}.")
    return float(value)


class Metric:
    """The common part of ``Counter``, ``Gauge`` and ``Histogram``."""

    _kind = ""

    def __init__(self, name: str, description: str = "", tag_keys: tuple[str, ...] | None = None) -> None:
        self._name = name
        self._description = description
        self._default_tags: dict[str, str] = {}
        self._tag_keys: tuple[str, ...] = tag_keys or tuple()
        key = (name, self._tag_keys)
        if type(name) is not str or type(self._tag_keys) is not tuple or key not in _VALID:
            # Checked once per process: tasks often create their metrics on every call.
            _check_name(name)
            self._check_tag_keys()
            _VALID.add(key)
        self._tag_key_set = frozenset(self._tag_keys)

    def _check_tag_keys(self) -> None:
        if not isinstance(self._tag_keys, tuple):
            raise TypeError(f"tag_keys should be a tuple type, got: {type(self._tag_keys)}")
        for key in self._tag_keys:
            if not isinstance(key, str):
                raise TypeError(f"Tag keys must be str, got {type(key)}.")
            if not _LABEL_RE.match(key) or key.startswith("__"):
                raise ValueError(
                    f"Invalid tag key {key!r}: tag keys are Prometheus label names (letters, "
                    "numbers and _, not starting with a number or __)."
                )
        if len(set(self._tag_keys)) != len(self._tag_keys):
            raise ValueError(f"Duplicate tag keys in {self._tag_keys}.")

    def _register(self, boundaries: tuple[float, ...] = ()) -> None:
        self._definition = recorder.get_recorder().define(
            recorder.MetricDefinition(self._kind, self._name, self._description, self._tag_keys, boundaries)
        )

    def set_default_tags(self, default_tags: dict[str, str]) -> Metric:
        """Tags used by every record unless the record gives them; returns this metric."""
        for key, val in default_tags.items():
            if key not in self._tag_keys:
                raise ValueError(f"Unrecognized tag key {key}.")
            if not isinstance(val, str):
                raise TypeError(f"Tag values must be str, got {type(val)}.")
        self._default_tags = dict(default_tags)
        return self

    def _tag_values(self, tags: dict[str, str] | None) -> tuple[str, ...]:
        """The record's tag values in ``tag_keys`` order (tags given win over default tags)."""
        if not tags:
            final = self._default_tags
        else:
            known = self._tag_key_set
            for key, val in tags.items():
                if type(val) is not str and not isinstance(val, str):
                    raise TypeError(f"Tag values must be str, got {type(val)}.")
                if key not in known:
                    raise ValueError(
                        f"Unrecognized tag key {key} for metric {self._name} (tag_keys: {self._tag_keys})."
                    )
            final = {**self._default_tags, **tags} if self._default_tags else tags
        try:
            return tuple([final[key] for key in self._tag_keys])
        except KeyError:
            missing = [key for key in self._tag_keys if key not in final]
            raise ValueError(f"Missing value for tag key(s): {','.join(missing)}.") from None

    @property
    def info(self) -> dict[str, Any]:
        """The metric's name, description, tag keys and default tags."""
        return {
            "name": self._name,
            "description": self._description,
            "tag_keys": self._tag_keys,
            "default_tags": self._default_tags,
        }


class _UnboundedMetric(Metric):
    """A metric defined by its name, description and tag keys alone (counters, gauges)."""

    def __init__(self, name: str, description: str = "", tag_keys: tuple[str, ...] | None = None) -> None:
        super().__init__(name, description, tag_keys)
        self._register()

    def __reduce__(self) -> Any:
        return self.__class__, (self._name, self._description, self._tag_keys)


class Counter(_UnboundedMetric):
    """A cumulative count that only goes up (Prometheus counter ``ray_<name>_total``)."""

    _kind = recorder.COUNTER

    def inc(self, value: int | float = 1.0, tags: dict[str, str] | None = None) -> None:
        """Add ``value`` (> 0, default 1) to the counter."""
        if type(value) is not float:
            value = _check_value(value)
        if value <= 0:
            raise ValueError(f"value must be >0, got {value}")
        recorder.get_recorder().record(self._definition, self._tag_values(tags), value)


class Gauge(_UnboundedMetric):
    """The last value set (Prometheus gauge ``ray_<name>``)."""

    _kind = recorder.GAUGE

    def set(self, value: int | float | None, tags: dict[str, str] | None = None) -> None:
        """Set the gauge to ``value`` (``None`` does nothing)."""
        if value is None:
            return
        recorder.get_recorder().record(self._definition, self._tag_values(tags), _check_value(value))


class Histogram(Metric):
    """Counts of observed values in buckets (Prometheus histogram ``ray_<name>``)."""

    _kind = recorder.HISTOGRAM

    def __init__(
        self,
        name: str,
        description: str = "",
        boundaries: list[float] | None = None,
        tag_keys: tuple[str, ...] | None = None,
    ) -> None:
        super().__init__(name, description, tag_keys)
        if boundaries is None or len(boundaries) == 0:
            raise ValueError(
                "boundaries argument should be provided when using the Histogram class. "
                'e.g., Histogram("name", boundaries=[1.0, 2.0])'
            )
        for i, boundary in enumerate(boundaries):
            if not isinstance(boundary, (int, float)):
                raise TypeError(f"Invalid `boundaries` argument at index {i}, {boundaries}: not a number.")
            if boundary <= 0:
                raise ValueError(
                    f"Invalid `boundaries` argument at index {i}, {boundaries}. "
                    "Use positive values for the arguments."
                )
        if "le" in self._tag_keys:
            raise ValueError("A histogram cannot have a tag key named 'le' (Prometheus uses it for buckets).")
        self.boundaries = boundaries
        self._register(tuple(sorted({float(b) for b in boundaries})))

    def __reduce__(self) -> Any:
        return Histogram, (self._name, self._description, self.boundaries, self._tag_keys)

    def observe(self, value: int | float, tags: dict[str, str] | None = None) -> None:
        """Count ``value`` in its bucket."""
        recorder.get_recorder().record(self._definition, self._tag_values(tags), _check_value(value))

    @property
    def info(self) -> dict[str, Any]:
        info = super().info
        info["boundaries"] = self.boundaries
        return info


__all__ = ["Counter", "Gauge", "Histogram"]
