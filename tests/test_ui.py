"""`hotmesh ui` in a real browser: Playwright driving Debian's Chromium (docs/ui.md).

One database, one worker process (tests/workers/ui_flows.py) and three dashboards (`hotmesh ui`
processes: actions allowed, read-only, with a token) serve the whole module; one browser serves
the session. Workflows are started and changed from SQL, as a psql user would. Screenshots of
each page go to tests/output/ui/ (not committed); with HOTMESH_UI_DOCS=1 the workflow detail's
is also written to docs/ui-workflow.png (the README shows it).
"""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.types.json import Jsonb

from helpers import SQL, Databases, Workers, sleep_until, with_dbname

pytestmark = pytest.mark.xdist_group("ui")

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "tests" / "output" / "ui"
CHROMIUM = "/usr/bin/chromium"
TOKEN = "s3cret-token"


@dataclass(frozen=True)
class Site:
    """The module's app and its dashboards."""

    dsn: str
    app: str
    url: str  # actions allowed
    read_only: str
    with_token: str
    mounted: str  # the dashboard mounted at /hm in another Starlette application


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(dsn: str, app: str, *flags: str, logs: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`hotmesh ui` with `flags`; with the flag "mounted", tests/workers/ui_mounted.py."""
    port = _free_port()
    log = (logs / f"ui-{port}.log").open("wb")
    command = ["-m", "hotmesh.cli", "ui", "--app", app, "--dsn", dsn, "--port", str(port), *flags]
    if flags == ("mounted",):
        command = [str(ROOT / "tests" / "workers" / "ui_mounted.py"), dsn, app, str(port)]
    proc = subprocess.Popen([sys.executable, *command], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}" + ("/hm" if flags == ("mounted",) else "")
    auth = {"Authorization": f"Bearer {TOKEN}"}

    def up() -> bool:
        try:
            request = urllib.request.Request(url + "/static/ui.css", headers=auth)  # noqa: S310
            with urllib.request.urlopen(request, timeout=2):  # noqa: S310
                return True
        except (OSError, urllib.error.URLError):
            return False

    if not sleep_until(up, 30):
        code = proc.poll()
        proc.kill()
        pytest.fail(f"hotmesh ui did not answer ({code}): {(logs / f'ui-{port}.log').read_text()}")
    return proc, url


@pytest.fixture(scope="module")
def site(
    cluster_dsn: str, databases: Databases | None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    if databases is None:
        pytest.skip("the browser tests need a database of their own (CREATEDB)")
    name = databases.create()
    dsn = with_dbname(cluster_dsn, name)
    logs = tmp_path_factory.mktemp("ui")
    workers = Workers("ui_flows", dsn, databases.app, logs=logs, grace=3)
    servers: list[subprocess.Popen[bytes]] = []
    # The read-only dashboard logs in as a member of <app>_reader and nothing else.
    reader = "ui_ro_" + uuid.uuid4().hex[:8]
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(
            sql.SQL("create role {} login in role {}").format(
                sql.Identifier(reader), sql.Identifier(databases.app + "_reader")
            )
        )
    try:
        workers.spawn()
        assert sleep_until(lambda: "ready" in workers.log(), 30), workers.log()
        urls = []
        for flags in [
            ("--allow-actions",),
            (),
            ("--allow-actions", "--token", TOKEN),
            ("mounted",),
        ]:
            login = make_conninfo(dsn, user=reader) if flags == () else dsn
            proc, url = _serve(login, databases.app, *flags, logs=logs)
            servers.append(proc)
            urls.append(url)
        yield Site(dsn, databases.app, *urls)
    finally:
        for proc in servers:
            proc.terminate()
            proc.wait(10)
        workers.close()
        databases.drop(name)
        with psycopg.connect(cluster_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(reader)))


# Module-scoped: Playwright's sync API keeps an event loop running in this thread while it is
# open, and the asyncio tests that run after this module on the same xdist worker need none.
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    tab.on("dialog", lambda d: pytest.fail(f"a script opened a dialog: {d.message}"))
    yield tab
    context.close()


@pytest.fixture
def db(site: Site) -> Iterator[SQL]:
    handle = SQL(site.dsn, site.app)
    yield handle
    handle.close()


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def start(
    db: SQL,
    workflow: str,
    args: list[Any],
    workflow_id: str,
    queue: str = "ui",
    entity: str | None = None,
) -> None:
    db.one(
        "select start_workflow(%s, %s::jsonb, %s, %s, %s)",
        workflow,
        Jsonb(args),
        queue,
        workflow_id,
        entity,
    )


def status(db: SQL, workflow_id: str) -> str:
    return str(db.one("select status from jobs where id = %s", workflow_id))


def waiting_for_go(db: SQL, workflow_id: str) -> bool:
    return bool(db.one("select waiting_on = 'signal go' from workflows where id = %s", workflow_id))


def detail(site: Site, workflow_id: str, base: str | None = None) -> str:
    return f"{base or site.url}/workflows/{quote(workflow_id, safe='')}"


def test_the_module_runs_on_one_worker(request: pytest.FixtureRequest) -> None:
    """`--dist loadgroup` keeps an xdist_group on one worker by a suffix on the node id (else
    each worker would start the dashboards and the browser; pyproject.toml pins pytest)."""
    if request.config.getoption("dist", "no") == "loadgroup":
        assert request.node.nodeid.endswith("@ui")


# -- pages ---------------------------------------------------------------------------------------


def test_overview_and_queues(site: Site, db: SQL, page: Page) -> None:
    start(db, "ui_broken", [], "ov-broken")
    start(db, "nobody_serves_this", [], "ov-idle", queue="idle")
    assert sleep_until(lambda: status(db, "ov-broken") == "failed", 30)
    page.goto(site.url + "/")
    failed = db.one("select count(*) from jobs where status = 'failed'")
    expect(page.locator('[data-status="failed"]')).to_have_text(str(failed))
    # The chart: two bars a minute for an hour, drawn by ui.js.
    expect(page.locator("#chart svg rect")).to_have_count(120)
    heights = page.eval_on_selector_all(
        "#chart rect.starts", "rs => rs.map(r => +r.getAttribute('height'))"
    )
    assert max(heights) > 0
    expect(page.locator("table.queues")).to_contain_text("idle")
    shot(page, "overview")
    page.goto(site.url + "/queues")
    expect(page.locator("table.queues tr", has_text="idle")).to_contain_text("workflow")
    shot(page, "queues")


def test_list_filters_and_pages(site: Site, db: SQL, page: Page) -> None:
    db.one(
        "select count(start_workflow('bulk', '[]', 'idle', 'bulk-' || lpad(n::text, 3, '0'),"
        " 'bulk-entity')) from generate_series(1, 60) as n"
    )
    start(db, "ui_parent", ["flt"], "flt-parent", entity="claims")
    assert sleep_until(lambda: waiting_for_go(db, "flt-parent"), 30)

    page.goto(site.url + "/workflows?entity=bulk-entity")
    expect(page.locator("table.list tbody tr")).to_have_count(50)
    first = page.locator("table.list tbody td:first-child").all_inner_texts()
    shot(page, "workflows")
    page.click("#next")
    expect(page.locator("table.list tbody tr")).to_have_count(10)
    rest = page.locator("table.list tbody td:first-child").all_inner_texts()
    assert sorted(first + rest) == [f"bulk-{n:03}" for n in range(1, 61)]
    expect(page.locator("#next")).to_have_count(0)

    # A list page searches a bounded window (here 25, tests/workers/ui_mounted.py): where a
    # filter no index serves finds less than a page in it, the page says how far it searched
    # and goes on from there.
    page.goto(site.mounted + "/workflows?entity=bulk-entity&name=bulk")
    found: list[str] = []
    for shown in (25, 25, 10):
        expect(page.locator("table.list tbody tr")).to_have_count(shown)
        found += page.locator("table.list tbody td:first-child").all_inner_texts()
        if shown == 25:
            expect(page.locator("#searched")).to_contain_text(
                "Searched the workflows started since"
            )
            page.click("#next")
    assert sorted(found) == [f"bulk-{n:03}" for n in range(1, 61)]
    expect(page.locator("#next")).to_have_count(0)

    # Every filter, through the form.
    page.goto(site.url + "/workflows")
    page.select_option("select[name=waits]", "signal")
    page.click("form.filters button")
    expect(page.locator("table.list tbody")).to_contain_text("flt-parent")
    expect(page.locator("table.list tbody")).not_to_contain_text("bulk-")
    page.goto(site.url + "/workflows?search=region%3Deu&entity=claims&name=ui_parent")
    expect(page.locator("table.list tbody tr")).to_have_count(1)
    expect(page.locator("table.list tbody tr")).to_contain_text("signal go")
    page.goto(site.url + "/workflows?status=pending&entity=bulk-entity&from=2000-01-01T00:00")
    expect(page.locator("table.list tbody tr")).to_have_count(50)
    page.goto(site.url + "/workflows?status=pending&to=2000-01-01")
    expect(page.locator("table.list tbody")).to_contain_text("No workflow matches.")

    # A filter that is not valid: a message on the page, not a traceback.
    for query, message in [
        ("status=sleeping", "status: 'sleeping' is not one of"),
        ("from=yesterday", "from: 'yesterday' is not a date and time"),
        ("search=region", "search: 'region' is not key=value"),
        ("after=garbage", "not a page cursor"),
    ]:
        response = page.goto(f"{site.url}/workflows?{query}")
        assert response is not None and response.status == 400
        expect(page.locator("#problem")).to_contain_text(message)
    shot(page, "workflows-bad-filter")


def test_detail_timeline_entity_diff_and_links(site: Site, db: SQL, page: Page) -> None:
    start(db, "ui_parent", ["A42"], "A42", entity="claims")
    assert sleep_until(lambda: waiting_for_go(db, "A42"), 30)
    # A change from SQL, as an application would make it: its caller is the login.
    db.one("select entity_merge('A42', '{\"reviewer\": \"dana\"}')")
    login = db.one("select session_user")

    page.goto(detail(site, "A42"))
    expect(page.locator("#status")).to_have_text("waiting")
    expect(page.locator("#waiting")).to_have_text("signal go")
    # The timeline: main, the hook's thread and the changes made from SQL, each step with its
    # kind and name.
    expect(page.locator("section.thread h3")).to_have_text(["main", "h1", "sql"])
    main = page.locator("#thread-main")
    for kind, name in [
        ("entity", "set"),
        ("hook", "ui_note"),
        ("child", "ui_child"),
        ("signal", "go"),
    ]:
        expect(main.locator("tr.step", has_text=kind).filter(has_text=name)).not_to_have_count(0)
    expect(page.locator("#thread-h1 tr.step", has_text="append")).to_have_count(1)
    # The entity now, and each version with what it changed and who made it.
    expect(page.locator("#entity")).to_contain_text('"reviewer": "dana"')
    newest = page.locator("li.version").first
    expect(newest.locator(".who")).to_contain_text(f"SQL caller {login}")
    expect(newest.locator("tr.added")).to_contain_text("reviewer")
    hook_version = page.locator("li.version", has_text="append")
    expect(hook_version.locator(".who")).to_contain_text("thread h1")
    expect(hook_version.locator("tr.changed")).to_contain_text("checked A42")
    expect(page.locator("li.version").last.locator("tr.added")).to_have_count(3)
    # Links: the child, and from the child back to its parent; the hook to its thread.
    expect(page.locator("a.hook")).to_contain_text("h1: ui_note")
    shot(page, "workflow")
    if os.environ.get("HOTMESH_UI_DOCS"):
        page.screenshot(path=str(ROOT / "docs" / "ui-workflow.png"), full_page=True)
    child = db.one("select id from jobs where parent_id = 'A42'")
    page.click("a.child")
    expect(page.locator("h1 .id")).to_have_text(child)
    page.click("#parent")
    expect(page.locator("h1 .id")).to_have_text("A42")


def test_mounted_in_another_application(site: Site, db: SQL, page: Page) -> None:
    start(db, "nobody_serves_this", [], "M1", queue="idle", entity="mounted")
    page.goto(site.mounted + "/workflows?entity=mounted")
    expect(page.locator("#live")).to_have_text("live")
    page.click("text=M1")
    expect(page).to_have_url(site.mounted + "/workflows/M1")
    page.click("form[action$='/cancel'] button")
    page.click("#confirm button")
    expect(page.locator("#done")).to_have_text("Cancelled.")
    expect(page).to_have_url(site.mounted + "/workflows/M1?done=cancel")
    assert status(db, "M1") == "cancelled"


def test_unknown_workflow_is_a_404_page(site: Site, page: Page) -> None:
    response = page.goto(detail(site, "no-such-id"))
    assert response is not None and response.status == 404
    expect(page.locator("h1")).to_have_text("Not found")
    expect(page.locator(".problem")).to_contain_text("No workflow has the id 'no-such-id'")
    shot(page, "not-found")


# -- actions and live updates ---------------------------------------------------------------------


def test_signal_from_the_browser(site: Site, db: SQL, page: Page) -> None:
    start(db, "ui_parent", ["S1"], "S1")
    assert sleep_until(lambda: waiting_for_go(db, "S1"), 30)
    page.goto(detail(site, "S1"))
    expect(page.locator("#live")).to_have_text("live")
    page.fill("form[action$='/signal'] input[name=signal_id]", "go")
    page.fill("form[action$='/signal'] input[name=payload]", "true")
    page.click("form[action$='/signal'] button")
    # The confirmation names the SQL call a psql user would make.
    expect(page.locator("#statement")).to_have_text(
        f"select {site.app}.signal('go', 'true', 'S1');"
    )
    page.click("#confirm button")
    expect(page.locator("#done")).to_have_text("Signal sent.")
    assert sleep_until(lambda: status(db, "S1") == "completed", 30)
    assert db.one("select context->>'approved' from jobs where id = 'S1'") == "true"


def test_a_workflow_page_follows_its_workflow_without_reload(
    site: Site, db: SQL, page: Page
) -> None:
    start(db, "ui_parent", ["S2"], "S2")
    assert sleep_until(lambda: waiting_for_go(db, "S2"), 30)
    page.goto(detail(site, "S2"))
    expect(page.locator("#live")).to_have_text("live")
    page.evaluate("window.notReloaded = true")
    db.one("select signal('go', 'false', 'S2')")
    expect(page.locator("#status")).to_have_text("completed")
    expect(page.locator("#entity")).to_contain_text('"stage": "complete"')
    assert page.evaluate("window.notReloaded") is True


def test_a_new_workflow_appears_in_the_list_without_reload(site: Site, db: SQL, page: Page) -> None:
    page.goto(site.url + "/workflows?entity=live-test")
    expect(page.locator("#live")).to_have_text("live")
    page.evaluate("window.notReloaded = true")
    start(db, "nobody_serves_this", [], "live-1", queue="idle", entity="live-test")
    expect(page.locator("table.list tbody")).to_contain_text("live-1")
    assert page.evaluate("window.notReloaded") is True


def test_cancel_with_descend_and_a_workflow_finished_meanwhile(
    site: Site, db: SQL, page: Page
) -> None:
    start(db, "ui_parent", ["C1", True], "C1")
    assert sleep_until(lambda: db.one("select id from jobs where parent_id = 'C1'"), 30)
    child = db.one("select id from jobs where parent_id = 'C1'")
    assert sleep_until(lambda: status(db, child) == "waiting", 30)
    page.goto(detail(site, "C1"))
    page.fill("form[action$='/cancel'] input[name=reason]", "filed twice")
    page.click("form[action$='/cancel'] button")
    expect(page.locator("#statement")).to_have_text(
        f"select {site.app}.cancel_workflow('C1', 'filed twice', true);"
    )
    page.click("#confirm button")
    expect(page.locator("#done")).to_have_text("Cancelled.")
    assert status(db, "C1") == "cancelled" and status(db, child) == "cancelled"

    # The confirmation is open while someone else finishes the workflow: the SQL error shows.
    start(db, "nobody_serves_this", [], "C2", queue="idle")
    page.goto(detail(site, "C2"))
    page.click("form[action$='/cancel'] button")
    # The confirmation shown first: a click's navigation may still be on its way to the server.
    expect(page.locator("#statement")).to_have_text(
        f"select {site.app}.cancel_workflow('C2', null, true);"
    )
    db.one("select cancel_workflow('C2', 'from psql')")
    page.click("#confirm button")
    expect(page.locator("#problem")).to_contain_text('(HM003): workflow "C2" is cancelled')
    shot(page, "finished-meanwhile")


def test_start_a_workflow_and_a_hook_and_retry(site: Site, db: SQL, page: Page) -> None:
    page.goto(site.url + "/start")
    page.fill("input[name=workflow_name]", "ui_parent")
    page.fill("input[name=args]", '["F1"]')
    page.fill("input[name=task_queue]", "ui")
    page.fill("input[name=workflow_id]", "F1")
    page.click("form.start button")
    page.click("#confirm button")
    expect(page.locator("#done")).to_have_text("Workflow started.")
    assert sleep_until(lambda: waiting_for_go(db, "F1"), 30)
    page.reload()
    page.fill("form[action$='/hook'] input[name=workflow_name]", "ui_note")
    page.fill("form[action$='/hook'] input[name=args]", '["from the browser"]')
    page.click("form[action$='/hook'] button")
    page.click("#confirm button")
    expect(page.locator("#done")).to_have_text("Hook started.")
    assert sleep_until(
        lambda: "from the browser" in db.one("select context->>'notes' from jobs where id = 'F1'"),
        30,
    )
    # Retry: a failed workflow runs again from its last recorded step (and fails again).
    start(db, "ui_broken", [], "R1")
    assert sleep_until(lambda: status(db, "R1") == "failed", 30)
    first_end = db.one("select completed_at from jobs where id = 'R1'")
    page.goto(detail(site, "R1"))
    page.click("form[action$='/retry'] button")
    page.click("#confirm button")
    expect(page.locator("#done")).to_have_text("Retry requested.")
    assert sleep_until(
        lambda: db.one(
            "select completed_at > %s and status = 'failed' from jobs where id = 'R1'", first_end
        ),
        30,
    )


def test_schedules_and_queue_limits(site: Site, db: SQL, page: Page) -> None:
    """The schedules and queues page: next and last fires, pause from the browser, a resume
    from psql that the page follows without reload, trigger now; a queue's limits and its
    concurrency keys, set and cleared from the browser (as the SQL caller would)."""
    db.one("select create_schedule('nightly', '@every 1h', 'nobody_serves_this', '[]', 'idle')")
    for n, key in enumerate(["acme", "acme", "globex"]):
        db.one(
            "select start_workflow('nobody_serves_this', '[]', 'keyed', %s, null, %s)",
            f"key-{n}",
            Jsonb({"concurrency_key": key}),
        )
    db.one("select set_queue_limits('keyed', max_running => 2, key_max_running => 1)")
    page.goto(site.url + "/queues")
    expect(page.locator("#live")).to_have_text("live")
    nightly = page.locator("tr.schedule[data-schedule=nightly]")
    expect(nightly.locator(".status")).to_have_text("active")
    next_fire = db.one("select to_char(next_fire_at, 'YYYY-MM-DD HH24:MI:SS') from schedule_fires")
    expect(nightly.locator(".next")).to_have_text(next_fire)
    expect(page.locator("table.limits tr[data-queue=keyed]")).to_contain_text("0")
    shot(page, "schedules-queues")

    nightly.locator("form.pause button").click()
    expect(page.locator("#statement")).to_have_text(f"select {site.app}.pause_schedule('nightly');")
    page.click("#confirm button")
    expect(page.locator("#done")).to_have_text("Schedule paused.")
    assert db.one("select status from schedule_fires where id = 'nightly'") == "paused"
    expect(nightly.locator(".next")).to_have_text("(paused)")
    # A change from psql shows without reload (the schedule functions notify the app's channel).
    page.evaluate("window.notReloaded = true")
    db.one("select resume_schedule('nightly')")
    expect(nightly.locator(".status")).to_have_text("active")
    assert page.evaluate("window.notReloaded") is True
    nightly.locator("form.trigger button").click()
    page.click("#confirm button")
    expect(page.locator("#done")).to_have_text("Schedule triggered: its run started.")
    run = db.one("select last_run_id from schedule_fires where id = 'nightly'")
    expect(page.locator("h1 .id")).to_have_text(run)

    # The queue's page: where it stands against its limits, per key, busiest first.
    page.goto(site.url + "/queues")
    page.click("table.limits a.queue:text-is('keyed')")
    expect(page.locator("table.keys tbody tr")).to_have_count(2)
    expect(page.locator("table.keys tr[data-key=acme]")).to_contain_text("2")
    expect(page.locator("table.keys tbody tr").first).to_have_attribute("data-key", "acme")
    page.fill("form.limits input[name=max_running]", "3")
    page.fill("form.limits input[name=rate]", "10")
    page.fill("form.limits input[name=per]", "1m")
    page.fill("form.limits input[name=key_max_running]", "2")
    page.fill("form.limits input[name=key_rate]", "5")
    page.fill("form.limits input[name=key_per]", "1s")
    shot(page, "queue-keys")
    page.click("form.limits button")
    expect(page.locator("#statement")).to_have_text(
        f"select {site.app}.set_queue_limits('keyed', max_running => 3, rate => 10,"
        " per => '60 seconds', key_max_running => 2, key_rate => 5, key_per => '1 seconds');"
    )
    page.click("#confirm button")
    expect(page.locator("#done")).to_have_text("Limits set.")
    assert db.rows(
        "select max_running, rate, extract(epoch from per)::int, key_max_running, key_rate,"
        " extract(epoch from key_per)::int from get_queue_limits() where task_queue = 'keyed'"
    ) == [(3, 10, 60, 2, 5, 1)]
    # The database refuses a limit of 0: its message, and nothing changed.
    page.fill("form.limits input[name=max_running]", "0")
    page.click("form.limits button")
    page.click("#confirm button")
    expect(page.locator("#problem")).to_contain_text("(22023): max_running must be >= 1")
    assert db.one("select max_running from get_queue_limits() where task_queue = 'keyed'") == 3
    page.goto(site.url + "/queues/keyed")
    page.click("form.clear button")
    expect(page.locator("#statement")).to_have_text(f"select {site.app}.set_queue_limits('keyed');")
    page.click("#confirm button")
    expect(page.locator("#done")).to_have_text("Limits cleared.")
    assert db.one("select count(*) from get_queue_limits()") == 0
    # Not a number: a message, and nothing runs.
    token = page.locator("form.limits input[name=csrf]").input_value()
    response = page.request.post(
        site.url + "/queues/keyed/limits",
        form={"csrf": token, "max_running": "many", "confirm": "yes"},
    )
    assert response.status == 400 and "is not a whole number" in response.text()
    assert db.one("select count(*) from get_queue_limits()") == 0


def human_task(db: SQL, workflow_id: str) -> int | None:
    found = db.one("select id from human_tasks where job_id = %s", workflow_id)
    return None if found is None else int(found)


def test_inbox_claim_comment_resolve(site: Site, db: SQL, page: Page) -> None:
    """The inbox by role and assignee, the overview's open tasks by role; a task claimed,
    commented on and resolved from the browser with the form its answer schema builds, which
    completes the waiting workflow; a task that appears without reload."""
    start(db, "ui_review", ["H1"], "H1")
    start(db, "ui_review", ["H2", "auditor"], "H2")
    assert sleep_until(lambda: human_task(db, "H1") and human_task(db, "H2"), 30)
    h1 = human_task(db, "H1")
    page.goto(site.url + "/")
    expect(page.locator("table.roles tr[data-role=approver] .open")).not_to_have_text("0")
    page.goto(site.url + "/inbox?role=auditor")
    expect(page.locator("#live")).to_have_text("live")
    expect(page.locator("table.inbox tbody tr.task")).to_have_count(1)
    expect(page.locator("table.inbox tbody")).to_contain_text("Approve H2")
    # A new task for the role shows without reload.
    page.evaluate("window.notReloaded = true")
    start(db, "ui_review", ["H3", "auditor"], "H3")
    expect(page.locator("table.inbox tbody tr.task")).to_have_count(2)
    assert page.evaluate("window.notReloaded") is True
    response = page.goto(site.url + "/inbox?status=done")
    assert response is not None and response.status == 400
    expect(page.locator("#problem")).to_contain_text("status: 'done' is not one of")

    page.goto(site.url + "/inbox?role=approver")
    page.click(f"tr[data-task='{h1}'] a")
    expect(page.locator("#title")).to_have_text("Approve H1")
    page.fill("form.claim input[name=who]", "dana")
    page.click("form.claim button")
    expect(page.locator("#statement")).to_have_text(
        f"select {site.app}.claim_human_task('{h1}', 'dana');"
    )
    page.click("#confirm button")
    expect(page.locator("#done")).to_have_text("Claimed.")
    expect(page.locator("#status")).to_have_text("claimed")
    page.goto(site.url + "/inbox?assignee=dana")
    expect(page.locator("table.inbox tbody tr.task")).to_have_count(1)
    page.goto(f"{site.url}/inbox/{h1}")
    page.fill("form.comment input[name=who]", "dana")
    page.fill("form.comment input[name=text]", "amount checked")
    page.click("form.comment button")
    page.click("#confirm button")
    expect(page.locator("li.event.comment")).to_contain_text("amount checked")
    # The answer form: built from the task's JSON schema.
    page.select_option("form.resolve select[name='a.approved']", "true")
    page.fill("form.resolve input[name='a.amount']", "1200")
    page.fill("form.resolve input[name='a.note']", "fine")
    shot(page, "task")
    page.click("form.resolve button")
    expect(page.locator("#statement")).to_have_text(
        f"select {site.app}.resolve_human_task('{h1}', 'dana',"
        """ '{"amount": 1200, "approved": true, "note": "fine"}');"""
    )
    page.click("#confirm button")
    expect(page.locator("#done")).to_contain_text("Resolved")
    assert sleep_until(lambda: status(db, "H1") == "completed", 30)
    assert db.one("select result from jobs where id = 'H1'") == {
        "amount": 1200,
        "approved": True,
        "note": "fine",
    }
    # Resolving again: the database refuses (HM003), and says why.
    page.goto(site.url + "/inbox?role=auditor")
    shot(page, "inbox")
    h2 = human_task(db, "H2")
    page.goto(f"{site.url}/inbox/{h1}")
    expect(page.locator("form.resolve")).to_have_count(0)  # resolved: nothing to do
    page.goto(f"{site.url}/inbox/{h2}")
    token = page.locator("form.resolve input[name=csrf]").input_value()
    response = page.request.post(
        f"{site.url}/inbox/{h1}/resolve",
        form={"csrf": token, "who": "dana", "answer": '{"approved": false}', "confirm": "yes"},
    )
    assert response.status == 409 and "HM003" in response.text()
    # The form's own check: an answer the schema refuses (approved is required).
    response = page.request.post(
        f"{site.url}/inbox/{h2}/resolve",
        form={"csrf": token, "who": "eve", "answer": '{"note": "?"}', "confirm": "yes"},
    )
    assert response.status == 409 and "22023" in response.text()
    assert db.one("select status from human_tasks where id = %s", h2) == "open"


# -- safety ----------------------------------------------------------------------------------------


HOSTILE = '<img src=x onerror="window.pwned=1"><script>window.pwned=1</script>'


def test_hostile_names_and_values_are_rendered_as_text(site: Site, db: SQL, page: Page) -> None:
    start(db, HOSTILE, [HOSTILE], HOSTILE, queue="idle", entity=HOSTILE)
    db.one(
        "select entity_set(%s, jsonb_build_object(%s::text, %s::text))", HOSTILE, HOSTILE, HOSTILE
    )
    # A schedule, a limited queue and a concurrency key with hostile names.
    db.one(
        "select create_schedule(%s, '@daily', 'nobody_serves_this', '[]', %s, %s)",
        HOSTILE,
        HOSTILE,
        Jsonb({"note": HOSTILE}),
    )
    db.one("select set_queue_limits(%s, max_running => 1)", HOSTILE)
    # A human task whose title, role, metadata and comment are hostile.
    start(db, "ui_review", [HOSTILE, HOSTILE], "hostile-task")
    assert sleep_until(lambda: human_task(db, "hostile-task"), 30)
    task = human_task(db, "hostile-task")
    db.one("select comment_human_task(%s, %s, %s)", task, HOSTILE, HOSTILE)
    db.one(
        "select start_workflow('nobody_serves_this', '[]', %s, 'hostile-key', null, %s)",
        HOSTILE,
        Jsonb({"concurrency_key": HOSTILE}),
    )
    for url in [
        site.url + "/workflows",
        detail(site, HOSTILE),
        site.url + "/",
        f"{site.url}/workflows?status={quote(HOSTILE)}",
        site.url + "/queues",
        f"{site.url}/queues/{quote(HOSTILE, safe='')}",
        site.url + "/inbox",
        f"{site.url}/inbox/{task}",
    ]:
        page.goto(url)
        assert page.evaluate("window.pwned") is None, url
        assert page.locator("img[src=x]").count() == 0
    page.goto(detail(site, HOSTILE))
    expect(page.locator("h1 .id")).to_have_text(HOSTILE)
    expect(page.locator("#entity")).to_contain_text(HOSTILE.replace('"', '\\"'))
    shot(page, "hostile")
    page.goto(f"{site.url}/queues/{quote(HOSTILE, safe='')}")
    expect(page.locator("h1 .id")).to_have_text(HOSTILE)
    expect(page.locator("table.keys td.id")).to_have_text(HOSTILE)
    page.goto(site.url + "/queues")
    expect(page.locator("tr.schedule td.id").filter(has_text="onerror")).to_contain_text(HOSTILE)
    shot(page, "hostile-queues")
    page.goto(f"{site.url}/inbox/{task}")
    expect(page.locator("#title")).to_have_text("Approve " + HOSTILE)
    expect(page.locator("li.event.comment .text")).to_have_text(HOSTILE)
    shot(page, "hostile-task")


def test_csrf(site: Site, db: SQL, page: Page) -> None:
    start(db, "nobody_serves_this", [], "X1", queue="idle")
    page.goto(detail(site, "X1"))
    token = page.locator("form[action$='/cancel'] input[name=csrf]").first.input_value()
    form = {"reason": "x", "descend": "true", "confirm": "yes"}
    # The session's cookie, but the form's token is missing or wrong.
    for sent in [{}, {"csrf": "0" * 32}]:
        response = page.request.post(detail(site, "X1") + "/cancel", form={**form, **sent})
        assert response.status == 403 and "CSRF" in response.text()
    # The right token, posted by a page of another site.
    response = page.request.post(
        detail(site, "X1") + "/cancel",
        form={**form, "csrf": token},
        headers={"Origin": "http://evil.example"},
    )
    assert response.status == 403
    assert status(db, "X1") == "pending"
    response = page.request.post(detail(site, "X1") + "/cancel", form={**form, "csrf": token})
    assert response.ok and status(db, "X1") == "cancelled"
    # The schedule and queue actions check it too.
    db.one("select create_schedule('x-sched', '@daily', 'nobody_serves_this', '[]', 'idle')")
    for url in [
        site.url + "/schedules/x-sched/pause",
        site.url + "/queues/idle/limits",
        site.url + "/inbox/1/claim",
    ]:
        response = page.request.post(url, form={"confirm": "yes", "max_running": "1"})
        assert response.status == 403 and "CSRF" in response.text()
    assert db.one("select status from schedule_fires where id = 'x-sched'") == "active"
    assert db.one("select count(*) from get_queue_limits() where task_queue = 'idle'") == 0


def test_read_only_hides_and_refuses_actions(site: Site, db: SQL, page: Page) -> None:
    start(db, "nobody_serves_this", [], "RO1", queue="idle")
    page.goto(detail(site, "RO1", site.read_only))
    expect(page.locator(".mode")).to_have_text("read-only")
    expect(page.locator("form.action")).to_have_count(0)
    expect(page.locator("a[href='/start']")).to_have_count(0)
    response = page.request.post(
        detail(site, "RO1", site.read_only) + "/cancel", form={"confirm": "yes"}
    )
    assert response.status == 403 and "read-only" in response.text()
    assert status(db, "RO1") == "pending"
    # Every page reads as <app>_reader (this dashboard's login is a member of nothing else).
    for path in ["/", "/workflows?waits=signal&search=region%3Deu&status=waiting"]:
        response = page.goto(site.read_only + path)
        assert response is not None and response.status == 200, path
    db.one("select create_schedule('ro-sched', '@daily', 'nobody_serves_this', '[]', 'idle')")
    page.goto(site.read_only + "/queues")
    expect(page.locator("tr.schedule[data-schedule=ro-sched]")).to_contain_text("active")
    page.goto(site.read_only + "/queues/idle")
    expect(page.locator("table.queues")).to_contain_text("idle")
    expect(page.locator("form.action")).to_have_count(0)
    start(db, "ui_review", ["RO2"], "RO2")
    assert sleep_until(lambda: human_task(db, "RO2"), 30)
    task = human_task(db, "RO2")
    page.goto(f"{site.read_only}/inbox/{task}")
    expect(page.locator("#title")).to_have_text("Approve RO2")
    expect(page.locator("form.action")).to_have_count(0)
    page.goto(site.read_only + "/inbox")
    expect(page.locator("table.inbox")).to_contain_text("Approve RO2")
    for url in ["/schedules/ro-sched/pause", "/queues/idle/limits", f"/inbox/{task}/resolve"]:
        response = page.request.post(site.read_only + url, form={"confirm": "yes"})
        assert response.status == 403 and "read-only" in response.text()
    assert db.one("select status from schedule_fires where id = 'ro-sched'") == "active"
    assert db.one("select status from human_tasks where id = %s", task) == "open"


def test_token_or_basic_auth(site: Site, browser: Browser) -> None:
    def get(headers: dict[str, str]) -> int:
        request = urllib.request.Request(site.with_token + "/", headers=headers)  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                return int(response.status)
        except urllib.error.HTTPError as error:
            return error.code

    basic = base64.b64encode(f"anyone:{TOKEN}".encode()).decode()
    assert get({}) == 401
    assert get({"Authorization": "Bearer wrong"}) == 401
    assert get({"Authorization": f"Bearer {TOKEN}"}) == 200
    assert get({"Authorization": f"Basic {basic}"}) == 200
    context = browser.new_context(http_credentials={"username": "me", "password": TOKEN})
    tab = context.new_page()
    tab.goto(site.with_token + "/workflows")
    expect(tab.locator("#live")).to_have_text("live")  # the event stream is authorised too
    context.close()
    # No token, no listening beyond this machine.
    refused = subprocess.run(
        [sys.executable, "-m", "hotmesh.cli", "ui", "--app", site.app, "--host", "0.0.0.0"],  # noqa: S104
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "HOTMESH_UI_TOKEN": ""},
    )
    assert refused.returncode == 2 and "without a token" in refused.stderr


def test_database_away_and_back(site: Site, page: Page, cluster_dsn: str) -> None:
    """The dashboard's database refuses connections, and then takes them again: the page says
    so and recovers by itself."""
    name = psycopg.conninfo.conninfo_to_dict(site.dsn)["dbname"]
    page.goto(site.url + "/workflows")
    expect(page.locator("#live")).to_have_text("live")
    allow = sql.SQL("alter database {} allow_connections {}")
    with psycopg.connect(cluster_dsn, autocommit=True) as admin:
        admin.execute(allow.format(sql.Identifier(name), sql.SQL("false")))
        try:
            admin.execute(
                "select pg_terminate_backend(pid) from pg_stat_activity"
                " where datname = %s and pid <> pg_backend_pid()",
                (name,),
            )
            expect(page.locator("#db-down")).to_be_visible()
            response = page.goto(site.url + "/workflows")
            assert response is not None and response.status == 503
            expect(page.locator("h1")).to_have_text("Database unreachable")
            shot(page, "database-down")
        finally:
            admin.execute(allow.format(sql.Identifier(name), sql.SQL("true")))
    # The page reloads itself once the dashboard's listener is back.
    expect(page.locator("h1")).to_have_text("Workflows", timeout=20_000)
    expect(page.locator("#live")).to_have_text("live")
