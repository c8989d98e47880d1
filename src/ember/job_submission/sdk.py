"""``JobSubmissionClient``: Ray's job SDK over the head's HTTP job API.

Synchronous calls use the standard library (``urllib``); ``tail_job_logs`` needs
aiohttp (a WebSocket). The cluster token goes in ``Authorization: Bearer``: from
``headers=``, else ``EMBER_CLUSTER_TOKEN``, else this user's record of the heads it
started on this machine (``ember start``). Failures raise ``JobSubmissionError``
(a ``RuntimeError``, as Ray's SDK raises), ``JobServerUnreachableError`` (also a
``ConnectionError``) or ``JobAuthenticationError`` (also a ``PermissionError``).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

from ember.exceptions import JobAuthenticationError, JobServerUnreachableError, JobSubmissionError
from ember.jobs.common import JobDetails, JobStatus, JobSubmitRequest

#: Where Ray's (and Ember's) job API listens by default.
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
#: Seconds a request may take before the client gives up.
REQUEST_TIMEOUT_S = 30.0


def resolve_address(address: str | None) -> str:
    """The job server's URL: ``address``, else ``EMBER_ADDRESS``/``RAY_ADDRESS`` when they are
    http(s) URLs, else the HTTP server of the head ``ember start`` started last on this
    machine, else ``http://127.0.0.1:8265``; ``host:port`` means ``http://host:port``."""
    if not address:
        for name in ("EMBER_ADDRESS", "RAY_ADDRESS"):
            value = os.environ.get(name, "")
            if value.startswith(("http://", "https://")):
                address = value
                break
        else:
            from ember._private import session

            address = session.local_dashboard_url() or DEFAULT_ADDRESS
    if "://" not in address:
        address = "http://" + address
    scheme = address.split("://", 1)[0]
    if scheme not in ("http", "https"):
        raise ValueError(
            f"The job server address must be an http(s) URL such as {DEFAULT_ADDRESS}, got {address!r} "
            "(the control service's HOST:PORT is for ember.init, not for the job API)."
        )
    return address.rstrip("/")


def find_token(address: str) -> str | None:
    """The cluster token for the job server at ``address``: ``EMBER_CLUSTER_TOKEN``, else the
    token of a head this user started on this machine whose HTTP server is at ``address``."""
    token = os.environ.get("EMBER_CLUSTER_TOKEN")
    if token:
        return token
    from ember._private import session

    return session.discover_token_for_http(urllib.parse.urlsplit(address).netloc)


class JobSubmissionClient:
    """Submit jobs to a cluster and follow them (Ray's ``JobSubmissionClient``).

    Args:
        address: the head's HTTP address (default: ``EMBER_ADDRESS``/``RAY_ADDRESS`` if they
            are http(s) URLs, else ``http://127.0.0.1:8265``).
        headers: extra HTTP headers; ``{"Authorization": "Bearer <token>"}`` overrides the
            token found on this machine.
        metadata: default metadata attached to every submitted job.
        cookies, verify, create_cluster_if_needed: accepted for Ray compatibility.
    """

    def __init__(self, address: str | None = None, create_cluster_if_needed: bool = False,
                 cookies: dict[str, Any] | None = None, metadata: dict[str, Any] | None = None,
                 headers: dict[str, Any] | None = None, verify: str | bool | None = True) -> None:
        self._address = resolve_address(address)
        self._headers = {str(k): str(v) for k, v in (headers or {}).items()}
        if not any(k.lower() == "authorization" for k in self._headers):
            token = find_token(self._address)
            if token:
                self._headers["Authorization"] = f"Bearer {token}"
        if cookies:
            self._headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
        self._default_metadata = {str(k): str(v) for k, v in (metadata or {}).items()}
        self._verify = verify
        self._check_connection()

    @property
    def address(self) -> str:
        return self._address

    # ------------------------------------------------------------------ HTTP
    def _request(self, method: str, path: str, body: Any = None, raw: bytes | None = None) -> Any:
        data = raw
        headers = dict(self._headers)
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        elif raw is not None:
            headers["Content-Type"] = "application/octet-stream"
        request = urllib.request.Request(self._address + path, data=data, method=method, headers=headers)
        context = None
        if self._address.startswith("https://") and self._verify is False:
            import ssl

            context = ssl._create_unverified_context()
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S, context=context) as response:
                text = response.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            self._raise_for(exc.code, exc.read().decode(errors="replace"))
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise JobServerUnreachableError(
                f"Could not reach the job server at {self._address}: {reason}. Is the cluster running "
                "(`ember start --head`), and is this the address of its HTTP server?"
            ) from None
        if not text:
            return None
        try:
            return json.loads(text)
        except ValueError:
            return text

    def _raise_for(self, status: int, text: str) -> None:
        if status in (401, 403):
            raise JobAuthenticationError(
                f"The job server at {self._address} refused the request (HTTP {status}: {text.strip()}). "
                "Give the cluster token: set EMBER_CLUSTER_TOKEN, or pass "
                "headers={'Authorization': 'Bearer <token>'}.", status)
        raise JobSubmissionError(f"Request failed with status code {status}: {text.strip()}", status)

    def _check_connection(self) -> None:
        try:
            self._request("GET", "/api/version")
        except JobSubmissionError as exc:
            if exc.status != 404:  # a server without the version route still serves jobs
                raise

    # ------------------------------------------------------------------ jobs
    def submit_job(self, *, entrypoint: str, job_id: str | None = None, runtime_env: dict[str, Any] | None = None,
                   metadata: dict[str, str] | None = None, submission_id: str | None = None,
                   entrypoint_num_cpus: float | None = None, entrypoint_num_gpus: float | None = None,
                   entrypoint_memory: int | None = None, entrypoint_resources: dict[str, float] | None = None,
                   entrypoint_label_selector: dict[str, str] | None = None) -> str:
        """Submit ``entrypoint`` (a shell command); returns the submission id."""
        if job_id is not None and submission_id is not None:
            raise ValueError("give submission_id only (job_id is its deprecated name)")
        request = JobSubmitRequest(
            entrypoint=entrypoint, submission_id=submission_id or job_id,
            runtime_env=self._prepare_runtime_env(runtime_env),
            metadata={**self._default_metadata, **(metadata or {})},
            entrypoint_num_cpus=entrypoint_num_cpus, entrypoint_num_gpus=entrypoint_num_gpus,
            entrypoint_memory=entrypoint_memory, entrypoint_resources=entrypoint_resources,
        )
        request.validate()
        body = {k: v for k, v in vars(request).items() if v is not None and k != "job_id"}
        return str(self._request("POST", "/api/jobs/", body)["submission_id"])

    def _prepare_runtime_env(self, runtime_env: dict[str, Any] | None) -> dict[str, Any] | None:
        """Validate the runtime_env here (a bad one fails before anything is sent, with a
        ``ValueError`` naming the key) and upload local ``working_dir`` / ``py_modules``
        folders to the cluster (``PUT /api/packages/gcs/...``, once per content), as Ray's
        SDK does: the job then refers to them by URI, from any node."""
        if runtime_env is None:
            return None
        from ember.runtime_env.package_store import upload_local_paths
        from ember.runtime_env.validation import validate

        return upload_local_paths(validate(runtime_env), _HttpPackageStore(self))  # type: ignore[arg-type]

    def stop_job(self, job_id: str) -> bool:
        """Ask the job to stop (any state); False if it had already ended."""
        return bool(self._request("POST", f"/api/jobs/{_quote(job_id)}/stop")["stopped"])

    def delete_job(self, job_id: str) -> bool:
        """Delete a finished job's record and logs."""
        return bool(self._request("DELETE", f"/api/jobs/{_quote(job_id)}")["deleted"])

    def get_job_info(self, job_id: str) -> JobDetails:
        return JobDetails.from_json(self._request("GET", f"/api/jobs/{_quote(job_id)}"))

    def list_jobs(self) -> list[JobDetails]:
        return [JobDetails.from_json(item) for item in self._request("GET", "/api/jobs/")]

    def get_job_status(self, job_id: str) -> JobStatus:
        return self.get_job_info(job_id).status

    def get_job_logs(self, job_id: str) -> str:
        return str(self._request("GET", f"/api/jobs/{_quote(job_id)}/logs")["logs"])

    async def tail_job_logs(self, job_id: str) -> AsyncIterator[str]:
        """The job's output as it is written, until the job ends (needs aiohttp)."""
        import aiohttp

        url = self._address.replace("http", "ws", 1) + f"/api/jobs/{_quote(job_id)}/logs/tail"
        ssl: Any = self._verify is not False  # True: verify certificates (the default)
        try:
            async with aiohttp.ClientSession(headers=self._headers) as session:
                async with session.ws_connect(url, ssl=ssl, timeout=aiohttp.ClientWSTimeout(ws_close=10)) as ws:
                    async for message in ws:
                        if message.type == aiohttp.WSMsgType.TEXT:
                            yield message.data
                        elif message.type == aiohttp.WSMsgType.ERROR:
                            raise JobSubmissionError(f"the log stream of job {job_id} failed: {ws.exception()}")
        except aiohttp.WSServerHandshakeError as exc:
            self._raise_for(exc.status, exc.message)
        except aiohttp.ClientConnectionError as exc:
            raise JobServerUnreachableError(f"Could not reach the job server at {self._address}: {exc}") from None

    def get_version(self) -> str:
        return str(self._request("GET", "/api/version").get("version"))


def _quote(job_id: str) -> str:
    if not isinstance(job_id, str) or not job_id:
        raise ValueError(f"a job id must be a non-empty string, got {job_id!r}")
    return urllib.parse.quote(job_id, safe="")


class _HttpPackageStore:
    """The package store as the job API offers it (what ``upload_local_paths`` needs: ``put``)."""

    def __init__(self, client: JobSubmissionClient) -> None:
        self._client = client

    def put(self, uri: str, data: bytes) -> None:
        protocol, name = uri.split("://", 1)
        path = f"/api/packages/{protocol}/{urllib.parse.quote(name, safe='')}"
        try:
            self._client._request("GET", path)
            return  # already there: content-addressed, so the same bytes
        except JobSubmissionError as exc:
            if exc.status != 404:
                raise
        self._client._request("PUT", path, raw=data)
