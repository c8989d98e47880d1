"""One JSON document shared by every open page, rebuilt at most once per interval.

A view polls its document every second or two. However many pages are open, the
document is built once per ``ttl`` (concurrent requests wait for the same build), and
a page that already has the current version (``If-None-Match`` equal to the ETag) gets
``304 Not Modified`` with no body. So an open page costs the cluster one build per
interval at most, and two pages cost the same as one.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

from aiohttp import web

Builder = Callable[[], Awaitable[Any]]


class SharedDocument:
    def __init__(self, build: Builder, ttl: float) -> None:
        self._build = build
        self._ttl = ttl
        self._lock = asyncio.Lock()
        self._built_at = -1e9
        self.body = b""
        self.etag = ""

    def _fresh(self) -> bool:
        return time.monotonic() - self._built_at < self._ttl

    async def current(self) -> tuple[bytes, str]:
        if not self._fresh():
            async with self._lock:
                if not self._fresh():
                    document = await self._build()
                    self.body = json.dumps(document, separators=(",", ":"), default=str).encode()
                    self.etag = '"' + hashlib.blake2b(self.body, digest_size=12).hexdigest() + '"'
                    self._built_at = time.monotonic()
        return self.body, self.etag

    async def respond(self, request: web.Request) -> web.Response:
        body, etag = await self.current()
        return conditional_json(request, body, etag)


def conditional_json(request: web.Request, body: bytes, etag: str) -> web.Response:
    """``304`` when the client already has ``etag``, else the JSON body with its ETag."""
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if etag and etag in (tag.strip() for tag in request.headers.get("If-None-Match", "").split(",")):
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, content_type="application/json", headers=headers)


class DocumentCache:
    """Shared documents keyed by their parameters (a job id, a window), newest ``capacity`` kept."""

    def __init__(self, capacity: int, ttl: float) -> None:
        self._capacity = capacity
        self._ttl = ttl
        self._documents: OrderedDict[Hashable, SharedDocument] = OrderedDict()

    def get(self, key: Hashable, build: Builder) -> SharedDocument:
        document = self._documents.get(key)
        if document is None:
            document = self._documents[key] = SharedDocument(build, self._ttl)
            while len(self._documents) > self._capacity:
                self._documents.popitem(last=False)
        else:
            self._documents.move_to_end(key)
        return document
