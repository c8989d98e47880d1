"""The dashboard's cost and bounds, measured on a real local cluster.

    python benchmarks/dashboard_ui.py overhead [--rounds 4] [--seconds 8]
        "tasks async" throughput (1,000 no-op tasks submitted then gathered, repeated) with
        no page open versus two pages open in headless Chromium (Overview and the driver's job
        page, both polling), alternating in one run; prints tasks/s of each phase and the ratio.

    python benchmarks/dashboard_ui.py memory [--jobs 1000] [--tasks 100000]
        submits JOBS jobs through the jobs API and runs TASKS tasks, then reports the HTTP
        server process's RSS and how long every UI document and page file takes to load.

Both need Debian's chromium/chromium-driver only for ``overhead``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

import ember  # noqa: E402


def _get(url: str, path: str, token: str) -> tuple[float, int, int]:
    """Seconds to load ``path`` (body read), HTTP status and body size."""
    request = urllib.request.Request(f"http://{url}{path}", headers={"Authorization": f"Bearer {token}"})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=30) as response:
        body = response.read()
        status = response.status
    return time.perf_counter() - start, status, len(body)


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _dashboard(ctx: object) -> tuple[str, str, int]:
    """(host:port, token, pid) of the head's HTTP server."""
    session_dir = ctx.address_info["session_dir"]  # type: ignore[attr-defined]
    with open(os.path.join(session_dir, "pids", "dashboard.pid")) as f:
        pid = int(f.read().strip())
    with open(os.path.join(session_dir, "token")) as f:
        token = f.read().strip()
    return ctx.dashboard_url, token, pid  # type: ignore[attr-defined]


@ember.remote
def noop() -> bytes:
    return b"ok"


def _tasks_async_rate(seconds: float) -> float:
    done = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        ember.get([noop.remote() for _ in range(1000)])
        done += 1000
    return done / (time.perf_counter() - start)


def overhead(rounds: int, seconds: float) -> None:
    from browser import open_browser

    ctx = ember.init(num_cpus=2, include_dashboard=True, dashboard_port=0)
    url, token, _pid = _dashboard(ctx)
    job_id = ember.get_runtime_context().get_job_id()
    _tasks_async_rate(2.0)  # warm up workers
    none: list[float] = []
    two: list[float] = []
    with open_browser() as driver:
        driver.get(f"http://{url}/login?token={token}")
        for _ in range(rounds):
            driver.get("about:blank")
            none.append(_tasks_async_rate(seconds))
            driver.get(f"http://{url}/#/overview")
            driver.switch_to.new_window("tab")
            driver.get(f"http://{url}/#/jobs/{job_id}")
            time.sleep(1.0)  # both pages loaded and polling
            two.append(_tasks_async_rate(seconds))
            driver.close()
            driver.switch_to.window(driver.window_handles[0])
    ember.shutdown()
    a, b = statistics.mean(none), statistics.mean(two)
    print(f"tasks async, no page open:  {a:,.0f} tasks/s  (rounds: {', '.join(f'{x:,.0f}' for x in none)})")
    print(f"tasks async, two pages open: {b:,.0f} tasks/s  (rounds: {', '.join(f'{x:,.0f}' for x in two)})")
    print(f"ratio two pages / none: {b / a:.3f}")


UI_DOCUMENTS = ("/api/ui/overview", "/api/ui/nodes", "/api/ui/jobs", "/api/ui/actors", "/api/ui/logs",
                "/api/ui/taskstream?window=60", "/api/ui/taskstream?window=900")
PAGE_FILES = ("/", "/static/js/app.js", "/static/style.css")


def memory(jobs: int, tasks: int) -> None:
    from ember.job_submission import JobSubmissionClient

    ctx = ember.init(num_cpus=2, include_dashboard=True, dashboard_port=0)
    url, token, pid = _dashboard(ctx)
    print(f"HTTP server pid {pid}: {_rss_mb(pid):.1f} MB RSS at start")
    client = JobSubmissionClient(f"http://{url}")
    start = time.perf_counter()
    ids = [client.submit_job(entrypoint=f"echo job {i}") for i in range(jobs)]
    for sid in ids:
        while client.get_job_status(sid).value not in ("SUCCEEDED", "FAILED", "STOPPED"):
            time.sleep(0.2)
    print(f"{jobs} jobs submitted and finished in {time.perf_counter() - start:.0f} s; "
          f"RSS {_rss_mb(pid):.1f} MB")
    start = time.perf_counter()
    for _ in range(tasks // 10000):
        ember.get([noop.remote() for _ in range(10000)])
    print(f"{tasks} tasks in {time.perf_counter() - start:.0f} s; RSS {_rss_mb(pid):.1f} MB")
    job_id = ember.get_runtime_context().get_job_id()
    paths = (*PAGE_FILES, *UI_DOCUMENTS, f"/api/ui/jobs/{job_id}", f"/api/ui/jobs/{ids[-1]}")
    worst = 0.0
    for path in paths:
        times = []
        for _ in range(5):
            seconds, status, size = _get(url, path, token)
            times.append(seconds)
            time.sleep(1.1)  # past the shared document's interval: every load builds it afresh
        worst = max(worst, max(times))
        print(f"  {path:40s} {status}  {size / 1024:8.1f} KiB  median {statistics.median(times) * 1000:6.1f} ms  "
              f"max {max(times) * 1000:6.1f} ms")
    print(f"slowest load: {worst * 1000:.0f} ms; HTTP server RSS after all: {_rss_mb(pid):.1f} MB")
    _browser_loads(url, token, [f"jobs/{job_id}", f"jobs/{ids[-1]}"])
    print(f"HTTP server RSS at the end: {_rss_mb(pid):.1f} MB")
    ember.shutdown()


def _browser_loads(url: str, token: str, extra_routes: list[str]) -> None:
    """Seconds from navigation to a view showing its first document, in headless Chromium."""
    try:
        from browser import open_browser
    except ImportError as exc:
        print(f"(no browser timings: {exc})")
        return
    routes = ["overview", "cluster", "jobs", "stream", "actors", "logs", *extra_routes]
    with open_browser() as driver:
        driver.get(f"http://{url}/login?token={token}")
        for route in routes:
            times = []
            for _ in range(3):
                driver.get("about:blank")
                start = time.perf_counter()
                driver.get(f"http://{url}/#/{route}")
                while driver.execute_script("return Number(document.documentElement.dataset.shown || 0)") < 1:
                    if time.perf_counter() - start > 30:
                        raise TimeoutError(f"#/{route} showed nothing in 30 s")
                    time.sleep(0.01)
                times.append(time.perf_counter() - start)
                time.sleep(1.1)
            print(f"  browser #/{route:36s} median {statistics.median(times) * 1000:6.1f} ms  max {max(times) * 1000:6.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    o = sub.add_parser("overhead")
    o.add_argument("--rounds", type=int, default=4)
    o.add_argument("--seconds", type=float, default=8.0)
    m = sub.add_parser("memory")
    m.add_argument("--jobs", type=int, default=1000)
    m.add_argument("--tasks", type=int, default=100000)
    args = parser.parse_args()
    if args.what == "overhead":
        overhead(args.rounds, args.seconds)
    else:
        memory(args.jobs, args.tasks)


if __name__ == "__main__":
    main()
