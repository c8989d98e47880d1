"""Owned background tasks: kept, failures logged, all cancelled and awaited on close (no cluster)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from ember._private.background import BackgroundTasks


def test_close_cancels_and_awaits_every_running_task():
    async def scenario():
        tasks = BackgroundTasks("test component")
        cancelled = []

        async def forever(i):
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.append(i)
                raise

        started = [tasks.spawn(forever(i), f"forever {i}") for i in range(3)]
        await asyncio.sleep(0)  # let them start: this is the loop's turn, not a wait for time
        assert len(tasks) == 3
        await tasks.close(timeout=5)
        assert sorted(cancelled) == [0, 1, 2]
        assert all(task.cancelled() for task in started)
        assert len(tasks) == 0
        with pytest.raises(RuntimeError, match="test component is shut down"):
            tasks.spawn(forever(9), "late")

    asyncio.run(scenario())


def test_finished_tasks_are_forgotten_and_failures_are_logged(caplog):
    async def scenario():
        tasks = BackgroundTasks("test component")

        async def ok():
            return 1

        async def broken():
            raise ValueError("boom")

        first, second = tasks.spawn(ok(), "ok"), tasks.spawn(broken(), "broken")
        await asyncio.wait([first, second])
        await asyncio.sleep(0)  # done callbacks run on the next loop turn
        assert len(tasks) == 0
        assert first.result() == 1

    with caplog.at_level(logging.ERROR, logger="ember._private.background"):
        asyncio.run(scenario())
    assert any("background task broken failed" in r.getMessage() and r.exc_info for r in caplog.records)


def test_spawn_if_open_drops_late_events_after_shutdown_quietly(caplog):
    async def scenario():
        tasks = BackgroundTasks("test component")

        async def report():
            return "sent"

        running = tasks.spawn_if_open(report(), "report")
        assert running is not None and await running == "sent"
        assert not tasks.closed
        await tasks.close(timeout=5)
        assert tasks.closed
        late = report()
        assert tasks.spawn_if_open(late, "report a worker death") is None
        assert late.cr_frame is None, "the dropped coroutine is closed (no 'never awaited' warning)"
        assert len(tasks) == 0

    with caplog.at_level(logging.DEBUG, logger="ember._private.background"):
        asyncio.run(scenario())
    assert any("dropped the late report a worker death" in r.getMessage() and r.levelno == logging.DEBUG
               for r in caplog.records)
    assert not any(r.levelno >= logging.WARNING for r in caplog.records if r.name == "ember._private.background")
