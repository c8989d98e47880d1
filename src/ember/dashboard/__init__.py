"""The head's HTTP server ("dashboard"): Ray's REST routes, in a process of its own.

``python -m ember.dashboard`` serves the routes of every module listed in
``server.MODULES``. Nothing here is imported by ``import ember``: aiohttp is
loaded only by the server process and by the clients that use it.
"""

#: The port Ray's dashboard listens on; a taken default port moves to the next free one.
DEFAULT_PORT = 8265
DEFAULT_HOST = "127.0.0.1"
