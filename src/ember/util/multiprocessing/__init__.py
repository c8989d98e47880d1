"""``ember.util.multiprocessing``: the standard library's ``multiprocessing.Pool`` on the cluster.

As Ray's ``ray.util.multiprocessing``: ``Pool`` plus the standard library's
``TimeoutError`` (raised by ``AsyncResult.get(timeout)``) and ``JoinableQueue``.
"""

from multiprocessing import JoinableQueue, TimeoutError

from ember.util.multiprocessing.pool import AsyncResult, IMapIterator, Pool

__all__ = ["AsyncResult", "IMapIterator", "JoinableQueue", "Pool", "TimeoutError"]
