"""Transport: length-delimited msgpack frames over asyncio, authenticated by
the cluster token. Nothing here unpickles; values travel as opaque bytes."""

from ember.rpc.connection import Connection, connect, start_server
from ember.rpc.loop_thread import EventLoopThread

__all__ = ["Connection", "EventLoopThread", "connect", "start_server"]
