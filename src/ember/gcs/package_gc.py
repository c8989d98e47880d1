"""Removing runtime-env packages nobody can use any more from the control service's KV.

Packages (``runtime_env`` namespace: a manifest per URI plus its chunks) are
pinned by the jobs that use them: a driver or worker writes
``runtime_env_pins/<job hex>:<uri>`` before it uploads or uses a package
(``PackageStore.pin``), so a package is pinned before anyone can see it
missing. When a job finishes, ``collect`` deletes every package that

* no RUNNING job pins,
* no live actor's runtime env names (detached actors outlive their job), and
* was stored more than ``runtime_env_package_grace_s`` ago (an upload through
  the jobs API comes before the job's driver exists to pin it),

and the pins of finished jobs. Nodes keep their unpacked copies until unused
(``runtime_env_unused_ttl_s``); only new nodes would need the package again.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

from ember._private.config import config

if TYPE_CHECKING:
    from ember.gcs.server import GcsServer

logger = logging.getLogger(__name__)

PACKAGES = "kv:runtime_env"
PINS = "kv:runtime_env_pins"


def _env_uris(renv: Any) -> set[str]:
    if not (isinstance(renv, (list, tuple)) and len(renv) == 2 and isinstance(renv[1], dict)):
        return set()
    env = renv[1]
    uris = [env.get("working_dir"), *(env.get("py_modules") or [])]
    return {u for u in uris if isinstance(u, str)}


def collect(gcs: GcsServer, now: float | None = None) -> list[str]:
    """Delete unpinned, unused packages and stale pins; the URIs deleted."""
    now = time.time() if now is None else now
    storage = gcs.storage
    running = {job_id.hex() for job_id, job in gcs.jobs.items() if job.get("status") == "RUNNING"}
    pinned: set[str] = set()
    for key in storage.keys(PINS):
        job_hex, _, uri = key.decode("utf-8", "replace").partition(":")
        if job_hex in running:
            pinned.add(uri)
        else:
            storage.delete(PINS, key)
    for entry in gcs.actor_manager.actors.values():
        if entry.state.value != "DEAD":
            pinned |= _env_uris(entry.spec.get("renv"))
    grace = config().runtime_env_package_grace_s
    deleted = []
    for key in storage.keys(PACKAGES):
        if b"#" in key:
            continue
        uri = key.decode("utf-8", "replace")
        if uri in pinned:
            continue
        raw = storage.get(PACKAGES, key)
        try:
            manifest = json.loads(raw or b"{}")
            created, chunks = float(manifest.get("created", 0)), int(manifest.get("chunks", 0))
        except (ValueError, TypeError):
            created, chunks = 0.0, 0
        if now - created < grace:
            continue
        storage.delete(PACKAGES, key)  # the manifest first: a package without one is absent
        for index in range(chunks):
            storage.delete(PACKAGES, f"{uri}#{index}".encode())
        deleted.append(uri)
    if deleted:
        logger.info("removed %d runtime_env package(s) no job or actor uses: %s", len(deleted), ", ".join(deleted))
    return deleted
