"""Explicit state machines: one transition table per kind of object, a short story per object.

Every stateful object of Ember (a task as its owner sees it, a worker in its node
daemon's pool, an actor in the control service, a placement group, a caller's view of
an actor) moves between the states of an enum, and only along the edges of its kind's
:class:`TransitionTable`. The table maps each legal edge ``(from, to)`` to what that
edge means; an object's :class:`History` keeps its last steps, each with the stimulus
that caused it, so an illegal move raises :class:`InvalidTransition` with the story so
far, and :func:`story` answers "what happened to this task/actor?" at any time.

Tables can carry *observers* (called after every move with the object, the edge and
the reason): metrics hook in there instead of sprinkling calls next to every
assignment. The task-event recorder reads a task's history when the task ends.

The hot path is one dict lookup, one ``time.time()`` and one list append per move.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Generic, Protocol, TypeVar

from ember.exceptions import RaySystemError

S = TypeVar("S", bound=enum.Enum)

#: One step of an object's history: (wall-clock time, from, to, reason).
Step = tuple[float, "enum.Enum | None", enum.Enum, str]


class InvalidTransition(RaySystemError):
    """A state change the object's table does not allow: a bug in Ember, never user error."""

    def __init__(self, kind: str, label: str, current: enum.Enum, new: enum.Enum, reason: str,
                 steps: Iterable[Step] = ()) -> None:
        self.kind = kind
        self.label = label
        self.current = current
        self.new = new
        self.reason = reason
        self.steps = list(steps)
        story_lines = "\n".join("  " + format_step(step) for step in self.steps) or "  (no history)"
        super().__init__(
            f"illegal {kind} transition {current.name} -> {new.name} for {label} "
            f"(reason: {reason or 'none given'}); its recent history:\n{story_lines}")

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (InvalidTransition, (self.kind, self.label, self.current, self.new, self.reason, self.steps))


class History:
    """The last ``limit`` steps of one object (a list, not a deque: most objects take a few steps)."""

    __slots__ = ("steps", "dropped")

    def __init__(self) -> None:
        self.steps: list[Step] = []
        #: Steps forgotten because the history was full (the oldest go first).
        self.dropped = 0

    def add(self, step: Step, limit: int) -> None:
        steps = self.steps
        steps.append(step)
        if len(steps) > limit:
            del steps[0]
            self.dropped += 1


class Stateful(Protocol[S]):
    """What a table needs of an object: its current state, its history and a label."""

    state: S
    history: History

    @property
    def label(self) -> str: ...


Observer = Callable[[object, "S | None", S, str], None]


class TransitionTable(Generic[S]):
    """The legal moves of one kind of object, what each means, and who watches them.

    ``edges`` maps ``(from, to)`` to a short description of that move (shown by
    :meth:`describe` and in the architecture document). ``history_limit`` bounds the
    steps each object remembers.
    """

    def __init__(self, kind: str, edges: Mapping[tuple[S, S], str], *, history_limit: int = 16) -> None:
        self.kind = kind
        self.edges: dict[tuple[S, S], str] = dict(edges)
        self.history_limit = history_limit
        self._observers: list[Observer[S]] = []

    def start(self, obj: Stateful[S], state: S, reason: str) -> None:
        """Put a new object in its first state (recorded as a step from nowhere)."""
        obj.state = state
        obj.history.add((time.time(), None, state, reason), self.history_limit)
        for observer in self._observers:
            observer(obj, None, state, reason)

    def move(self, obj: Stateful[S], new: S, reason: str) -> None:
        """Move ``obj`` to ``new`` because of ``reason``; raise :class:`InvalidTransition` if illegal."""
        current = obj.state
        if (current, new) not in self.edges:
            raise InvalidTransition(self.kind, obj.label, current, new, reason, obj.history.steps)
        obj.state = new
        obj.history.add((time.time(), current, new, reason), self.history_limit)
        for observer in self._observers:
            observer(obj, current, new, reason)

    def allows(self, current: S, new: S) -> bool:
        return (current, new) in self.edges

    def observe(self, observer: Observer[S]) -> Callable[[], None]:
        """Call ``observer(obj, from, to, reason)`` after every move (``from`` is None for a start); returns a function that stops it."""
        self._observers.append(observer)

        def stop() -> None:
            if observer in self._observers:
                self._observers.remove(observer)

        return stop

    def describe(self) -> list[str]:
        """Every legal move as ``FROM -> TO: meaning`` (for docs and debugging)."""
        return [f"{a.name} -> {b.name}: {what}" for (a, b), what in self.edges.items()]


def format_step(step: Step) -> str:
    at, old, new, reason = step
    stamp = time.strftime("%H:%M:%S", time.localtime(at)) + f".{int(at * 1000) % 1000:03d}"
    origin = old.name if old is not None else "(new)"
    return f"{stamp} {origin} -> {new.name}" + (f" ({reason})" if reason else "")


def story(obj: Stateful[S]) -> str:
    """The history of one object as lines a person can read, oldest first."""
    head = f"{obj.label}: now {obj.state.name}"
    if obj.history.dropped:
        head += f" ({obj.history.dropped} earlier steps forgotten)"
    return "\n".join([head, *("  " + format_step(step) for step in obj.history.steps)])
