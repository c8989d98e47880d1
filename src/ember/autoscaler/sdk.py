"""``request_resources``: ask the autoscaler for capacity ahead of demand (Ray's ``ray.autoscaler.sdk``)."""

from __future__ import annotations

from typing import Any

from ember._private import runtime
from ember.gcs.autoscaler_state import check_bundles


def request_resources(num_cpus: int | None = None, bundles: list[dict[str, float]] | None = None) -> None:
    """Keep the cluster able to hold ``num_cpus`` one-CPU bundles plus ``bundles`` at once.

    The autoscaler launches what is missing right away (not limited by ``upscaling_speed``)
    and does not remove nodes that hold the requested capacity, even idle ones. Each call
    replaces the previous request; ``request_resources(num_cpus=0)`` clears it. Needs a
    connected driver (``ember.init``).
    """
    if num_cpus is not None and (isinstance(num_cpus, bool) or not isinstance(num_cpus, int) or num_cpus < 0):
        raise TypeError(f"num_cpus must be a whole number >= 0, got {num_cpus!r}")
    if bundles is not None and not isinstance(bundles, list):
        raise TypeError(f"bundles must be a list of resource dicts, got {type(bundles).__name__}")
    wanted: list[dict[str, Any]] = [{"CPU": 1}] * (num_cpus or 0) + list(bundles or [])
    check_bundles(wanted)  # a bad bundle is a ValueError here, before anything is sent
    runtime.core_worker().gcs_call("request_resources", {"bundles": wanted})
