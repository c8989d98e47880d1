"""A tiny HTTP client for tests of the head's HTTP server (stdlib only; redirects not followed)."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirect)


def http(url: str, path: str, *, token: str | None = None, method: str = "GET",
         headers: dict[str, str] | None = None, body: bytes | None = None, timeout: float = 10.0) -> Reply:
    """``method url+path``; ``token`` goes in ``Authorization: Bearer``. Never raises on HTTP errors."""
    all_headers = dict(headers or {})
    if token is not None:
        all_headers["Authorization"] = f"Bearer {token}"
    base = url if url.startswith("http") else f"http://{url}"
    request = urllib.request.Request(base + path, method=method, headers=all_headers, data=body)
    try:
        with _opener.open(request, timeout=timeout) as resp:
            return Reply(resp.status, resp.read(), dict(resp.headers.items()))
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, exc.read(), dict(exc.headers.items()))


def session_token(session_dir: str) -> str:
    with open(os.path.join(session_dir, "token")) as f:
        return f.read().strip()
