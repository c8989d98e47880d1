"""Resource arithmetic in fixed point, so that 0.1 + 0.2 never drifts.

Amounts are stored as integers in units of 1/10000 (Ray's granularity);
public dictionaries use floats.
"""

from __future__ import annotations

from collections.abc import Mapping

UNIT = 10_000

Resources = dict[str, int]


def to_fixed(amounts: Mapping[str, float]) -> Resources:
    out: Resources = {}
    for name, value in amounts.items():
        fixed = round(float(value) * UNIT)
        if fixed < 0:
            raise ValueError(f"resource {name!r} must not be negative (got {value})")
        if fixed:
            out[name] = fixed
    return out


def to_float(amounts: Mapping[str, int]) -> dict[str, float]:
    return {name: value / UNIT for name, value in amounts.items()}


def fits(request: Resources, available: Resources) -> bool:
    for name, amount in request.items():
        if available.get(name, 0) < amount:
            return False
    return True


def subtract(available: Resources, request: Resources) -> None:
    for name, amount in request.items():
        available[name] = available.get(name, 0) - amount


def add(available: Resources, request: Resources) -> None:
    for name, amount in request.items():
        available[name] = available.get(name, 0) + amount


def describe(amounts: Mapping[str, int]) -> str:
    return "{" + ", ".join(f"{k}: {v / UNIT:g}" for k, v in sorted(amounts.items())) + "}"
