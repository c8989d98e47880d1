"""Every error Ember raises, in one tree (Ray's public names are kept because
user code catches them by name)::

    RayError                              root of everything Ember raises
    ├── RayTaskError                      a task raised; also an instance of the cause
    ├── RayActorError                     an actor could not run a call
    │   └── ActorDiedError                ... because it is dead for good
    │   └── ActorUnavailableError         ... because it is restarting / unreachable
    ├── WorkerCrashedError                the worker running a task died
    ├── TaskCancelledError                ember.cancel() ended the task
    ├── GetTimeoutError                   get(timeout=) expired (also a TimeoutError)
    ├── ObjectLostError                   a value is gone
    │   ├── OwnerDiedError                ... because its owner died
    │   ├── ObjectFreedError              ... because it was freed
    │   └── ObjectReconstructionFailedError
    ├── ObjectStoreFullError              no room in the shared-memory store
    ├── OutOfMemoryError                  the memory monitor killed the task
    ├── NodeDiedError                     a node went away
    ├── TaskUnschedulableError            no node can ever run the task
    ├── ActorUnschedulableError           no node can ever host the actor
    ├── RuntimeEnvSetupError              a runtime_env could not be built
    ├── JobSubmissionError                a job API request failed (also a RuntimeError, as in Ray)
    │   ├── JobServerUnreachableError     ... no HTTP server answered (also a ConnectionError)
    │   └── JobAuthenticationError        ... the server refused our token (also a PermissionError)
    └── RaySystemError                    Ember itself failed
        ├── InvariantViolation            a sans-I/O core's validate() found its state inconsistent
        └── RpcError                      internal: transport and protocol errors
            ├── ConnectionLost            the peer went away
            ├── AuthenticationError       bad or missing cluster token
            ├── FrameError                a malformed or oversized frame
            └── ProtocolError             a message that does not match its declared type

Bad input is a plain ``ValueError``/``TypeError`` as in Ray; a malformed
``runtime_env`` raises ``RuntimeEnvValueError``, which is both.

Lower-layer errors are translated to these in exactly one place per layer,
with ``raise ... from exc`` so the original cause is kept.
"""

from __future__ import annotations

import enum
from typing import Any


class RayError(Exception):
    """The root of every error Ember raises."""

    def __reduce__(self) -> Any:
        # Rebuilt from state, not by calling __init__ with ``args``: subclasses'
        # __init__ take other arguments (task_id, object_ref_hex...) than the
        # message that ends up in ``args``.
        return (_rebuild_error, (type(self), self.args, self.__dict__ or None))


def _rebuild_error(cls: type[RayError], args: tuple[Any, ...], state: dict[str, Any] | None) -> RayError:
    err = cls.__new__(cls, *args)
    err.args = args
    if state:
        err.__dict__.update(state)
    return err


EmberError = RayError


class RaySystemError(RayError):
    """Ember itself failed (not the user's code)."""


class InvariantViolation(RaySystemError):
    """A sans-I/O core's ``validate()`` found its state inconsistent (a bug in Ember, never user error)."""


class RpcError(RaySystemError):
    """Internal: a transport or protocol failure."""


class ConnectionLost(RpcError):
    """The peer closed the connection or could not be reached."""


class AuthenticationError(RpcError):
    """The peer did not present this cluster's token."""


class FrameError(RpcError):
    """A frame was malformed, or larger than the configured limit."""


class ProtocolError(RpcError):
    """A message did not match the type its method declares (``ember.protocol``)."""


class ErrorCode(enum.IntEnum):
    """Why a call failed, as it crosses the wire in an ERROR frame (see ``ERROR_TABLE``)."""

    INTERNAL = 1  # the handler raised something unexpected (a bug: the peer logged it)
    BAD_REQUEST = 2  # the request was wrong (a ValueError, TypeError or LookupError)
    NO_SUCH_METHOD = 3
    CANCELLED = 4  # the handler was cancelled (its daemon is stopping)
    FRAME_TOO_LARGE = 5  # the reply would exceed the frame limit
    OBJECT_STORE_FULL = 6
    TASK_UNSCHEDULABLE = 7  # no node can ever satisfy the request
    RUNTIME_ENV_SETUP_FAILED = 8  # a lease's runtime env could not be built on the node
    ACTOR_UNSCHEDULABLE = 9  # a node cannot start another actor process (a real limit was reached)
    PROTOCOL_ERROR = 10  # the request's payload does not match its method's declared type

    @classmethod
    def from_wire(cls, raw: Any) -> ErrorCode:
        """The code a peer sent; anything unknown or malformed counts as INTERNAL."""
        try:
            return cls(raw)
        except ValueError:
            return cls.INTERNAL


class RemoteError(RpcError):
    """The peer answered a call with an error (code + human message)."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message

    def __reduce__(self) -> Any:
        return (RemoteError, (self.code, self.message))

    def to_exception(self) -> BaseException:
        """The user-facing error this wire error stands for (itself if it has none)."""
        for exc_type, code in ERROR_TABLE:
            if code is self.code and exc_type is not RpcError:
                return exc_type(self.message)
        return self


class RayTaskError(RayError):
    """A task (or actor method) raised an exception.

    ``get`` raises an instance of a class that derives from both this and the
    original exception's class, so ``except ValueError`` still catches a
    ``ValueError`` raised remotely.
    """

    def __init__(
        self,
        function_name: str,
        traceback_str: str,
        cause: BaseException | None,
        pid: int | None = None,
        ip: str | None = None,
        node_id: str | None = None,
    ) -> None:
        self.function_name = function_name
        self.traceback_str = traceback_str
        self.cause = cause
        self.pid = pid
        self.ip = ip
        self.node_id = node_id
        # Not super(): in the dual class (RayTaskError + the cause's class) that would be the
        # cause class's __init__, which may take other arguments.
        Exception.__init__(self, self._message())

    def _message(self) -> str:
        where = f"{self.function_name}() (pid={self.pid}, ip={self.ip}"
        if self.node_id:
            where += f", node={self.node_id[:12]}"
        where += ")"
        cause_name = type(self.cause).__name__ if self.cause is not None else "Exception"
        return f"{cause_name} raised in {where}\n{self.traceback_str.rstrip()}"

    def __str__(self) -> str:
        return self._message()

    def __reduce__(self) -> Any:
        return (
            _rebuild_task_error,
            (self.function_name, self.traceback_str, self.cause, self.pid, self.ip, self.node_id),
        )

    def as_instanceof_cause(self) -> RayTaskError:
        """This error re-made as an instance of ``RayTaskError`` *and* the cause's class."""
        cause = self.cause
        while isinstance(cause, RayTaskError):  # a nested task's error: use the original cause
            cause = cause.cause
        if cause is None:
            return self
        cause_cls = type(cause)
        if not isinstance(cause, Exception):
            return self
        try:
            cls = _dual_class(cause_cls)
            err = cls.__new__(cls)
            RayTaskError.__init__(
                err, self.function_name, self.traceback_str, cause, self.pid, self.ip, self.node_id
            )
            # Let attribute access of the cause work (e.g. err.errno, err.response).
            for key, value in getattr(cause, "__dict__", {}).items():
                err.__dict__.setdefault(key, value)
            err.args = (self._message(),)
            return err
        except TypeError:  # e.g. a cause class with an incompatible layout
            return self


_dual_classes: dict[type, type] = {}


def _dual_class(cause_cls: type) -> type[RayTaskError]:
    cls = _dual_classes.get(cause_cls)
    if cls is None:
        name = f"RayTaskError({cause_cls.__name__})"

        def _str(self: RayTaskError) -> str:
            return RayTaskError._message(self)

        cls = type(name, (RayTaskError, cause_cls), {"__str__": _str, "__module__": __name__})
        _dual_classes[cause_cls] = cls
    return cls


def _rebuild_task_error(*args: Any) -> RayTaskError:
    return RayTaskError(*args)


class RayActorError(RayError):
    """An actor could not run a method call (it died or is unreachable)."""

    def __init__(self, message: str = "The actor died unexpectedly before finishing this task.", actor_id: str | None = None) -> None:
        super().__init__(message)
        self.actor_id = actor_id
        self.error_msg = message


class ActorDiedError(RayActorError):
    """The actor is dead for good; the message says why."""


class ActorUnavailableError(RayActorError):
    """The actor is temporarily unreachable (for example restarting)."""


class WorkerCrashedError(RayError):
    """The worker process running the task died before it finished."""

    def __init__(self, message: str = "The worker died unexpectedly while executing this task.") -> None:
        super().__init__(message)


class TaskCancelledError(RayError):
    """The task was cancelled with ``ember.cancel``."""

    def __init__(self, task_id: str | None = None, message: str | None = None) -> None:
        self.task_id = task_id
        super().__init__(message or f"Task {task_id} was cancelled.")


class GetTimeoutError(RayError, TimeoutError):
    """``get`` or ``wait`` ran out of time; also a built-in ``TimeoutError``."""


class ObjectLostError(RayError):
    """The value behind an ObjectRef is gone and cannot be recovered."""

    def __init__(self, object_ref_hex: str = "", message: str | None = None) -> None:
        self.object_ref_hex = object_ref_hex
        super().__init__(message or f"Object {object_ref_hex} is lost and cannot be recovered.")


class OwnerDiedError(ObjectLostError):
    """The process that owned the value died, so nobody can tell where it is."""


class ObjectFreedError(ObjectLostError):
    """The value was freed explicitly."""


class ObjectReconstructionFailedError(ObjectLostError):
    """The value was lost and re-running its task failed or was not allowed."""


class ObjectReconstructionFailedMaxAttemptsExceededError(ObjectReconstructionFailedError):
    pass


class ObjectReconstructionFailedLineageEvictedError(ObjectReconstructionFailedError):
    pass


class ObjectFetchTimedOutError(ObjectLostError):
    pass


class ObjectStoreFullError(RayError):
    """The shared-memory object store has no room for a value."""


class OutOfMemoryError(RayError):
    """The node ran low on memory and the memory monitor ended the task."""


class NodeDiedError(RayError):
    """The node that ran a task or held a value died."""


class TaskUnschedulableError(RayError):
    """No node in the cluster can ever satisfy the task's requirements."""


class ActorUnschedulableError(RayError):
    """No node in the cluster can ever host the actor."""


class RuntimeEnvSetupError(RayError):
    """A runtime environment could not be set up."""


class RuntimeEnvValueError(ValueError, TypeError):
    """A malformed ``runtime_env`` (names the key). Ray raises ``TypeError`` for wrong
    types and ``ValueError`` for wrong values; this is both, so either ``except`` works."""


class LocalRayletDiedError(RaySystemError):
    """This process lost its connection to its node daemon."""


class PendingCallsLimitExceeded(RayError):
    pass


class AsyncioActorExit(RayError):
    pass


class CrossLanguageError(RayError):
    pass


class ObjectRefStreamEndOfStreamError(RayError):
    pass


class ReferenceCountingAssertionError(ObjectLostError):
    pass


class PlasmaObjectNotAvailable(RayError):
    pass


class JobSubmissionError(RayError, RuntimeError):
    """A job API request failed; ``status`` is the HTTP status (0 when none came back)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (type(self), (str(self), self.status))


class JobServerUnreachableError(JobSubmissionError, ConnectionError):
    """No job server answered at the address (not running, wrong address or port)."""


class JobAuthenticationError(JobSubmissionError, PermissionError):
    """The job server refused the request: missing or wrong cluster token."""


__all__ = [name for name, value in globals().items() if isinstance(value, type) and issubclass(value, BaseException)]


#: The one table between exceptions and wire codes, both ways: a handler's exception is
#: sent as the code of the first row it is an instance of (else INTERNAL), and a received
#: code becomes the first row's exception type (``RemoteError.to_exception``).
ERROR_TABLE: tuple[tuple[type[BaseException], ErrorCode], ...] = (
    (ObjectStoreFullError, ErrorCode.OBJECT_STORE_FULL),
    (TaskUnschedulableError, ErrorCode.TASK_UNSCHEDULABLE),
    (ActorUnschedulableError, ErrorCode.ACTOR_UNSCHEDULABLE),
    (RuntimeEnvSetupError, ErrorCode.RUNTIME_ENV_SETUP_FAILED),
    (FrameError, ErrorCode.FRAME_TOO_LARGE),
    (ProtocolError, ErrorCode.PROTOCOL_ERROR),
    (ValueError, ErrorCode.BAD_REQUEST),
    (TypeError, ErrorCode.BAD_REQUEST),
    (LookupError, ErrorCode.BAD_REQUEST),
)


def error_code_of(exc: BaseException) -> ErrorCode:
    """The wire code for a handler's exception."""
    for exc_type, code in ERROR_TABLE:
        if isinstance(exc, exc_type):
            return code
    return ErrorCode.INTERNAL


class AutoscalerConfigError(RayError, ValueError):
    """A cluster YAML (``ember up``, ``--autoscaling-config``) that cannot be used; says where and why."""


class NodeProviderError(RayError):
    """A node provider could not create or end a node (the autoscaler retries with backoff)."""


class RayStateApiException(RayError):
    """A state-API query failed, or (with ``raise_on_missing_output``) its output is incomplete."""
