"""The dashboard in a real browser (headless Chromium): every view on a 2-node cluster with a
named actor, a submitted job and 50 tasks of which 5 fail, asserting what a person sees.

Each view's screenshot is saved to ``docs/screenshots/`` (the README shows them).
"""

from __future__ import annotations

import os
import re
import sys
import urllib.parse

import pytest

import ember
from ember._private.test_utils import wait_for_condition
from tests.browser import open_browser, require_browser
from tests.http_helpers import http

#: Where screenshots go: ``docs/screenshots`` with ``EMBER_UPDATE_SCREENSHOTS=1`` (to refresh the
#: committed ones), else a folder of the run's own.
DOCS_SCREENSHOTS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "docs", "screenshots")
SCREENSHOTS = DOCS_SCREENSHOTS
WAIT_S = 30


@pytest.fixture
def ui_cluster():
    require_browser()
    from ember.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "include_dashboard": True, "dashboard_port": 0})
    try:
        cluster.add_node(num_cpus=2)
        ember.init(address=cluster.address)
        yield cluster
    finally:
        ember.shutdown()
        cluster.shutdown()


def _text(driver, css: str = "#view") -> str:
    """The visible text of the first element matching ``css`` (read in one script: pages re-render)."""
    return driver.execute_script(
        "const el = document.querySelector(arguments[0]); return el ? el.innerText : '';", css)


def _until(condition, shows, timeout: float = WAIT_S) -> None:
    """Wait for ``condition()``; on timeout, fail with what the page ``shows()``."""
    try:
        wait_for_condition(condition, timeout=timeout, retry_interval_ms=200)
    except RuntimeError as exc:
        raise AssertionError(f"{exc}\nThe page shows:\n{shows()[:3000]}") from None


def _wait_text(driver, needle: str, css: str = "#view", timeout: float = WAIT_S) -> None:
    _until(lambda: needle in _text(driver, css), lambda: f"(waiting for {needle!r} in {css})\n" + _text(driver, css),
           timeout)


def _finished_calls(driver, method: str) -> list[str]:
    """Rows of the actor page's calls table for ``method`` that are FINISHED with a start time."""
    rows = [line.split("\t") for line in _text(driver).splitlines()]
    return [r[0] for r in rows if len(r) >= 5 and r[1] == method and r[2] == "FINISHED" and r[3] != "–"]


def _failed_inputs(driver) -> list[int]:
    """The inputs named by the error messages in the job page's failed-task table."""
    cells = driver.execute_script(
        "return Array.from(document.querySelectorAll('pre.error-message')).map(e => e.innerText);")
    return [int(m.group(1)) for c in cells for m in [re.search(r"input (\d+) is not allowed", c)] if m]


def _screenshot(driver, name: str) -> None:
    os.makedirs(SCREENSHOTS, exist_ok=True)
    driver.execute_script("window.scrollTo(0, 0)")
    path = os.path.join(SCREENSHOTS, f"{name}.png")
    assert driver.save_screenshot(path) and os.path.getsize(path) > 10_000, f"no screenshot of {name}"


@pytest.fixture(autouse=True)
def _screenshot_folder(tmp_path, monkeypatch):
    folder = DOCS_SCREENSHOTS if os.environ.get("EMBER_UPDATE_SCREENSHOTS") == "1" else str(tmp_path / "screenshots")
    monkeypatch.setattr(sys.modules[__name__], "SCREENSHOTS", folder)


def _go(driver, base: str, route: str) -> None:
    driver.get(f"{base}/#/{route}")


def test_every_view_shows_the_cluster(ui_cluster, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    cluster = ui_cluster
    url = cluster.dashboard_url
    base = f"http://{url}"
    token = cluster.token

    @ember.remote
    class Counter:
        def __init__(self) -> None:
            self.n = 0

        def inc(self) -> int:
            self.n += 1
            return self.n

        def say(self, text: str) -> None:
            print(text, flush=True)

    @ember.remote(max_retries=0)
    def flaky(i: int) -> int:
        print(f"dashboard-test line {i}")
        if i % 10 == 7:
            raise ValueError(f"input {i} is not allowed")
        return i

    counter = Counter.options(name="ui-counter").remote()
    assert ember.get([counter.inc.remote() for _ in range(3)]) == [1, 2, 3]
    refs = [flaky.remote(i) for i in range(50)]
    results = []
    for ref in refs:
        try:
            results.append(ember.get(ref))
        except ValueError:
            results.append(None)
    assert results.count(None) == 5

    from ember.job_submission import JobSubmissionClient

    client = JobSubmissionClient(base)
    submission = client.submit_job(
        entrypoint=f"{sys.executable} -c \"print('hello from the submitted job')\"")
    wait_for_condition(lambda: client.get_job_status(submission).value == "SUCCEEDED", timeout=60)

    with open_browser() as driver:
        # Without the cookie: the login page, no data.
        driver.get(base + "/")
        _wait_text(driver, "Ember dashboard", css="body")
        assert driver.find_elements(By.ID, "token") and not driver.find_elements(By.ID, "view")
        _screenshot(driver, "login")
        # The login URL `ember start` prints sets the cookie and lands on the Overview.
        driver.get(f"{base}/login?token={urllib.parse.quote(token)}")
        _wait_text(driver, "nodes alive")
        _until(lambda: _stat(driver, "nodes alive") == "2", lambda: _text(driver))
        assert _stat(driver, "nodes dead") == "0"
        # Cluster-wide counts (the job supervisor's calls count too); the job page has this job's.
        _until(lambda: _number(_stat(driver, "tasks failed")) >= 5 and _number(_stat(driver, "tasks finished")) >= 48,
               lambda: _text(driver))
        _screenshot(driver, "overview")

        _go(driver, base, "cluster")
        _wait_text(driver, "2 ALIVE, 0 DEAD")
        cards = driver.find_elements(By.CSS_SELECTOR, "section.node")
        assert len(cards) == 2 and all("ALIVE" in c.text for c in cards)
        assert "control service" in cards[0].text and "node daemon" in cards[1].text
        _screenshot(driver, "cluster")
        node_id = cards[1].get_attribute("data-node-id")
        _go(driver, base, f"cluster/{node_id}")
        _wait_text(driver, "Log files")
        _wait_text(driver, f"raylet-{node_id[:12]}.log")
        _screenshot(driver, "node")

        _go(driver, base, "actors")
        _wait_text(driver, "ui-counter")
        row = next(r for r in driver.find_elements(By.CSS_SELECTOR, "table.grid tbody tr") if "ui-counter" in r.text)
        assert "ALIVE" in row.text and "Counter" in row.text
        _screenshot(driver, "actors")
        row.find_element(By.CSS_SELECTOR, "a").click()
        # The calls table: the three inc calls FINISHED with their start times (the creation task,
        # Counter.__init__, is listed too, as in Ray, and its events may arrive later).
        _until(lambda: len(_finished_calls(driver, "Counter.inc")) == 3, lambda: _text(driver))
        _screenshot(driver, "actor")

        _go(driver, base, "jobs")
        _wait_text(driver, submission)
        jobs_text = _text(driver)
        assert "SUCCEEDED" in jobs_text and "DRIVER" in jobs_text
        _screenshot(driver, "jobs")
        driver_job = ember.get_runtime_context().get_job_id()
        _go(driver, base, f"jobs/{driver_job}")
        _until(lambda: _progress(driver, "flaky") == {"FINISHED": 45, "FAILED": 5, "RUNNING": 0, "PENDING": 0},
               lambda: _text(driver))
        # The failed tasks, each with its error type and the message the driver got.
        _until(lambda: sorted(_failed_inputs(driver)) == [7, 17, 27, 37, 47], lambda: _text(driver))
        assert _text(driver).count("TASK_EXECUTION_EXCEPTION") == 5
        _screenshot(driver, "job")
        _go(driver, base, f"jobs/{submission}")
        _wait_text(driver, "hello from the submitted job")
        _screenshot(driver, "submitted_job")

        _go(driver, base, "stream")
        _wait_text(driver, "task(s) on")
        assert driver.find_element(By.LINK_TEXT, "Download Chrome trace").get_attribute("href").endswith("/api/ui/timeline")
        _screenshot(driver, "task_stream")

        # The log line a task printed: find its worker's file, open it, search it.
        index = http(url, "/api/ui/logs", token=token).json()
        where = None
        for node in index["nodes"]:
            for f in node["files"]:
                if f["name"].startswith("worker-") and f["name"].endswith(".out"):
                    found = http(url, "/api/ui/log?" + urllib.parse.urlencode(
                        {"node_id": node["node_id"], "file": f["name"], "search": "dashboard-test line 7"}), token=token).json()
                    if found["total"]:
                        where = (node["node_id"], f["name"])
        assert where is not None, "no worker log holds the task's line"
        _go(driver, base, f"logs/{where[0]}/{urllib.parse.quote(where[1])}")
        _wait_text(driver, "dashboard-test line 7", css="[data-testid=log-text]")
        search = driver.find_element(By.CSS_SELECTOR, "[data-testid=log-search]")
        search.send_keys("dashboard-test line 7", Keys.ENTER)
        _wait_text(driver, "1 matching line(s)")
        _screenshot(driver, "logs")

        # Following: the actor's log (linked from its row) shows a line printed after the page opened.
        _go(driver, base, "actors")
        _wait_text(driver, "ui-counter")
        row = next(r for r in driver.find_elements(By.CSS_SELECTOR, "table.grid tbody tr") if "ui-counter" in r.text)
        _until(lambda: _has_link(row, "log"), lambda: _text(driver))
        row.find_element(By.LINK_TEXT, "log").click()
        _wait_text(driver, "Files")
        ember.get(counter.say.remote("a line printed while the page was open"))
        _wait_text(driver, "a line printed while the page was open", css="[data-testid=log-text]")


def _has_link(row, text: str) -> bool:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        return bool(row.find_element(By.LINK_TEXT, text))
    except (NoSuchElementException, StaleElementReferenceException):
        return False


def _number(text: str) -> int:
    return int(text.replace(",", "")) if text.replace(",", "").isdigit() else -1


def _stat(driver, label: str) -> str:
    """The value of the Overview's statistic named ``label``."""
    return driver.execute_script("""
        for (const el of document.querySelectorAll('.stat')) {
          if (el.querySelector('.stat-label').innerText === arguments[0]) return el.querySelector('.stat-value').innerText;
        }
        return '';""", label)


def _progress(driver, function: str) -> dict[str, int]:
    """The counts a job page's progress row shows for ``function``."""
    counts = driver.execute_script("""
        const out = {};
        for (const el of document.querySelectorAll(`.progress-row[data-function='${arguments[0]}'] .count`)) {
          out[el.dataset.state] = el.innerText.split(' ')[0].replaceAll(',', '');
        }
        return out;""", function)
    return {k: int(v) if v.isdigit() else -1 for k, v in counts.items()}


def test_the_login_url_ember_start_prints_opens_the_dashboard(tmp_path):
    """``ember start --head`` prints a login URL carrying the token; a browser without it sees the login page."""
    require_browser()
    from selenium.webdriver.common.by import By

    from tests.cli_cluster import cli_env, ember_cli, end_everything

    env = cli_env(str(tmp_path / "cluster"))
    try:
        started = ember_cli(["start", "--head", "--port", "0", "--num-cpus", "1", "--dashboard-port", "0",
                             "--object-store-memory", str(64 * 1024 * 1024)], env)
        assert started.returncode == 0, started.stdout + started.stderr
        login = next(line.split(": ", 1)[1] for line in started.stdout.splitlines() if "/login?token=" in line)
        base = login.split("/login?")[0]
        assert http(base, "/api/ui/overview").status == 401
        with open_browser() as driver:
            driver.get(base + "/#/cluster")
            _wait_text(driver, "Cluster token", css="body")
            assert not driver.find_elements(By.ID, "view")
            # A wrong token is refused and sets no cookie.
            driver.get(base + "/login?token=wrong")
            driver.get(base + "/")
            _wait_text(driver, "Cluster token", css="body")
            # The login form (what a person who has only the token uses) leads back to the page asked for.
            driver.get(base + "/#/cluster")
            _wait_text(driver, "Cluster token", css="body")
            token = urllib.parse.parse_qs(urllib.parse.urlparse(login).query)["token"][0]
            driver.find_element(By.ID, "token").send_keys(token)
            driver.find_element(By.CSS_SELECTOR, "form button").click()
            _wait_text(driver, "1 ALIVE, 0 DEAD")
            # The printed URL logs in directly.
            driver.delete_all_cookies()
            driver.get(login)
            _wait_text(driver, "nodes alive")
            _until(lambda: _stat(driver, "nodes alive") == "1", lambda: _text(driver))
    finally:
        end_everything(env["EMBER_TMPDIR"])
