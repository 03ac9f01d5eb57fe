"""The dashboard's pages in a real headless Chromium (Debian's, driven by Playwright with executable_path).

Fast, against a stand-in API (tests/browser_helpers.py's FakeDashboard, the JSON contract of issue 12): the
runs list, the run view with its chart, the lineage look-up and its trace, every value inserted as text
(hostile manifest labels and ids stay text, no script runs), dark mode, the ledger's message and API errors
shown on the page.

Slow, against a real deployment (the process stack with the LocalExecutor, as tests/airflow_stack.py's
AirflowStack, plus the compose stack's emulator process; the repository's DAGs and plugins): log in through
Airflow's login page, open the run tab of a running ``healthimaging_bulk_copy`` run and see the rows accounted
for rise through the page's own refresh, then the home page's widget with the day's numbers, the nav item's
page with the run, and the lineage look-up finding a copied image set and following it back.

Screenshots go to ``$HEALTHIMAGING_SCREENSHOTS`` when set, else under pytest's temporary directory (the
stack tests print the folder).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.browser_helpers import SCREENSHOTS_ENV, FakeDashboard, chromium, collect_page_errors

DAG_ID = "healthimaging_bulk_copy"
RUN_ID = "manual__2026-12-04T10:00:00+00:00"
HOSTILE = '<img src=x onerror="window.__xss=1">'
NOW = int(time.time())
COUNTS = {
    "pending": 10,
    "submitting": 1,
    "submitted": 4,
    "succeeded": 22,
    "failed": 2,
    "rejected": 1,
    "skipped": 0,
    "planned": 0,
}
RUN = {
    "dag_id": DAG_ID,
    "run_id": RUN_ID,
    "manifest_uri": f"s3://bucket/manifests/{HOSTILE}.csv",
    "manifest_sha256": "ab" * 32,
    "rows": 40,
    "counts": COUNTS,
    "accounted": 25,
    "active": True,
    "started_at": NOW - 600,
    "updated_at": NOW - 5,
    "copies_per_minute": 3.5,
    "failure_percent": 7.5,
    "airflow_url": f"/dags/{DAG_ID}/runs/{RUN_ID}",
}
MATCH = {
    "dag_id": DAG_ID,
    "run_id": RUN_ID,
    "row_number": 3,
    "label": HOSTILE,
    "datastore_id": "d" * 32,
    "source_image_set_id": "a" * 32,
    "source_version_id": "1",
    "destination_image_set_id": "b" * 32,
    "destination_version_id": "1",
    "destination_image_set_arn": "arn:aws:medical-imaging:us-east-1:123456789012:datastore/" + "d" * 32,
    "status": "succeeded",
    "completed_at": NOW - 100,
    "verified": True,
    "copy_key": "k" * 16,
}
RUN_API = f"/healthimaging/api/runs/{DAG_ID}/{RUN_ID}"


def routes(ledger_ok: bool = True) -> dict:
    return {
        "/healthimaging/api/ledger": (
            200,
            {"ok": True, "source": "conn healthimaging_ledger", "backend": "postgresql", "message": None}
            if ledger_ok
            else {
                "ok": False,
                "source": "conn healthimaging_ledger",
                "backend": None,
                "message": "The ledger connection 'healthimaging_ledger' is not defined",
            },
        ),
        "/healthimaging/api/runs": (200, {"runs": [RUN, {**RUN, "run_id": "scheduled__x", "active": False}]}),
        "/healthimaging/api/summary": (
            200,
            {"in_flight": 5, "succeeded_today": 22, "failed_today": 2, "runs_in_progress": 1},
        ),
        "/healthimaging/api/attention": (
            200,
            {
                "threshold_seconds": 900,
                "rows": [
                    {
                        "dag_id": DAG_ID,
                        "run_id": RUN_ID,
                        "row_number": 7,
                        "status": "submitted",
                        "datastore_id": "d" * 32,
                        "source_image_set_id": HOSTILE,
                        "destination_image_set_id": None,
                        "since": NOW - 2000,
                        "claim": "worker1",
                    }
                ],
            },
        ),
        "/healthimaging/api/lineage": (200, {"matches": [MATCH]}),
        "/healthimaging/api/lineage/trace": (
            200,
            {"chain": [MATCH, {**MATCH, "run_id": "earlier", "destination_image_set_id": "a" * 32}]},
        ),
        RUN_API: (
            200,
            {
                **RUN,
                "in_flight_by_datastore": [{"datastore_id": "d" * 32, "in_flight": 5}],
                "elapsed_seconds": 600,
                "eta_seconds": 260,
                "recent_copies_per_minute": 3.5,
                "quota_copies_per_minute": 6.0,
                "tolerated_failure_percent": 5.0,
                "manifests": [{"uri": RUN["manifest_uri"], "sha256": "ab" * 32, "rows": 40}],
            },
        ),
        RUN_API + "/throughput": (
            200,
            {
                "bucket_seconds": 60,
                "points": [{"t": NOW - 600 + 60 * i, "completed": c} for i, c in enumerate([2, 4, 6, 5, 3, 2])],
                "quota_per_bucket": 6,
                "attempts_per_row": {"1": 20, "2": 4, "3": 1},
                "throttled_resends": 3,
            },
        ),
        RUN_API + "/latency": (200, {"count": 22, "p50": 2.1, "p90": 3.4, "p99": 5.0, "max": 5.2}),
        RUN_API + "/failures": (
            200,
            {
                "groups": [
                    {
                        "error_code": "ValidationException",
                        "count": 2,
                        "first_seen": NOW - 500,
                        "last_seen": NOW - 50,
                        "sample_message": f"bad image set {HOSTILE}",
                        "sample_rows": [5, 9],
                    }
                ],
                "failure_percent": 7.5,
                "tolerated_failure_percent": 5.0,
                "over_tolerance": True,
            },
        ),
        RUN_API + "/failed-rows": (
            200,
            {
                "rows": [
                    {
                        "row_number": 5,
                        "label": HOSTILE,
                        "datastore_id": "d" * 32,
                        "source_image_set_id": "c" * 32,
                        "source_version_id": "1",
                        "status": "failed",
                        "error_code": "ValidationException",
                        "message": "bad image set",
                        "attempts": 1,
                    }
                ]
            },
        ),
    }


@pytest.fixture(scope="module")
def browser():
    with chromium() as browser:
        yield browser


@pytest.fixture
def shots(tmp_path) -> Path:
    folder = Path(os.environ.get(SCREENSHOTS_ENV) or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def open_page(browser, url: str):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors = collect_page_errors(page)
    page.goto(url)
    return page, errors


def test_runs_list_and_lineage_with_hostile_values_as_text(browser, shots):
    with FakeDashboard(routes()) as app:
        page, errors = open_page(browser, app.url + "/healthimaging/")
        page.wait_for_selector("#runs-table tbody tr")
        rows = page.locator("#runs-table tbody tr")
        assert rows.count() == 2
        first = rows.nth(0).inner_text()
        assert RUN_ID in first and "25 of 40" in first and "7.5 %" in first
        airflow = rows.nth(0).locator("a", has_text="Airflow run")
        assert airflow.get_attribute("target") == "_top"
        assert airflow.get_attribute("href").endswith(f"/dags/{DAG_ID}/runs/{RUN_ID}")
        assert page.locator("#ledger").inner_text().startswith("Ledger: postgresql")
        page.wait_for_selector("#attention-table tbody tr")
        assert HOSTILE in page.locator("#attention-table").inner_text()

        page.fill("#lineage-q", "a" * 32)
        page.click("#lineage-form button[type=submit]")
        page.wait_for_selector("#lineage-table tbody tr")
        assert HOSTILE in page.locator("#lineage-table").inner_text()  # the label, as text
        page.click("#lineage-table button.follow")
        page.wait_for_selector("#trace-table tbody tr")
        assert page.locator("#trace-table tbody tr").count() == 2
        assert any(
            "/api/lineage/trace?datastore_id=" + "d" * 32 + "&image_set_id=" + "b" * 32 in r for r in app.requests
        )

        # No hostile value became markup: no image element, no script ran.
        assert page.locator("main img, table img, section img").count() == 0
        assert page.evaluate("window.__xss") is None
        assert page.locator("#message").is_hidden()
        page.screenshot(path=str(shots / "fake-index.png"), full_page=True)
        assert errors == []


def test_run_view_progress_chart_failures(browser, shots):
    with FakeDashboard(routes()) as app:
        page, errors = open_page(browser, app.url + f"/healthimaging/runs/{DAG_ID}/{RUN_ID}")
        page.wait_for_selector("#failed-rows-table tbody tr")
        assert page.locator("#accounted").inner_text() == "25 of 40 rows accounted for"
        assert page.locator("#status-counts [data-status=succeeded] strong").inner_text() == "22"
        assert page.locator("#eta").inner_text() == "4 min 20 s"
        assert page.locator("#in-flight-table").inner_text().count("d" * 32) == 1
        assert HOSTILE in page.locator("#manifest-table").inner_text()
        assert page.locator("#throughput-chart").get_attribute("data-points") == "6"
        # Chart.js drew into the canvas (the vendored file, not a CDN): some pixels are not blank.
        drawn = page.evaluate(
            "() => { const c = document.getElementById('throughput-chart');"
            " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            " let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n; }"
        )
        assert drawn > 1000
        assert page.evaluate("window.Chart.version") == "4.6.1"
        assert page.locator("#throttled").inner_text() == "Throttled resends: 3"
        assert page.locator("#latency-p90").inner_text() == "3.4 s"
        assert "over tolerance" in page.locator("#failure-share").inner_text()
        assert "ValidationException" in page.locator("#failures-table").inner_text()
        csv = page.locator("#failed-csv").get_attribute("href")
        assert csv.endswith(f"{RUN_API}/failed-rows?format=csv".replace("+", "%2B").replace(":", "%3A"))
        assert page.evaluate("window.__xss") is None
        assert page.locator("table img").count() == 0
        assert not [r for r in app.requests if "cdn" in r or r.startswith("http")]
        page.screenshot(path=str(shots / "fake-run.png"), full_page=True)
        assert errors == []


def test_dark_mode(browser, shots):
    """Dark when the browser prefers it (in Airflow's iframe, when Airflow's page is dark): light text on dark."""
    with FakeDashboard(routes()) as app:
        page = browser.new_page(viewport={"width": 1400, "height": 1000}, color_scheme="dark")
        errors = collect_page_errors(page)
        page.goto(app.url + f"/healthimaging/runs/{DAG_ID}/{RUN_ID}")
        page.wait_for_selector("#failed-rows-table tbody tr")
        assert page.evaluate("document.documentElement.dataset.theme") == "dark"
        colours = page.evaluate(
            "[getComputedStyle(document.body).backgroundColor, getComputedStyle(document.body).color]"
        )
        assert colours == ["rgb(9, 9, 11)", "rgb(244, 244, 245)"]
        page.screenshot(path=str(shots / "fake-run-dark.png"), full_page=True)
        assert errors == []


def test_ledger_message_and_api_errors_are_shown(browser, shots):
    with FakeDashboard(routes(ledger_ok=False)) as app:
        page, _ = open_page(browser, app.url + "/healthimaging/")
        page.wait_for_selector("#message .error")
        assert "is not defined" in page.locator("#message").inner_text()
        assert "Ledger unavailable" in page.locator("#ledger").inner_text()
        page.screenshot(path=str(shots / "fake-ledger-missing.png"), full_page=True)
    failing = routes()
    failing[RUN_API] = (503, {"detail": "The ledger database is unreachable: connection refused"})
    with FakeDashboard(failing) as app:
        page, _ = open_page(browser, app.url + f"/healthimaging/runs/{DAG_ID}/{RUN_ID}")
        page.wait_for_selector("#message .error")
        assert "HTTP 503: The ledger database is unreachable" in page.locator("#message").inner_text()
    missing = routes()
    del missing[RUN_API]
    with FakeDashboard(missing) as app:
        page, _ = open_page(browser, app.url + f"/healthimaging/runs/{DAG_ID}/other")
        page.wait_for_selector("#message .error")
        assert "not in the ledger" in page.locator("#message").inner_text()


# ------------------------------------------------------------------------------ against a real Airflow stack
#
# The process stack of tests/airflow_stack.py's kind with the LocalExecutor (api-server, scheduler,
# dag-processor, triggerer on PostgreSQL) plus the compose stack's emulator, running the repository's DAGs and
# plugins: the dashboard is the real plugin app behind Airflow's login. The emulator's CopyImageSet quota is
# 1 copy/s (the DAG's rate), each copy taking 2 s, so that the 40 rows take about a minute: long enough to
# read the run page while the run is active.

STACK_ROWS = 40
STACK_COPIES_PER_SECOND = 1.0
STACK_EMULATOR_ARGS = [
    "--rate",
    f"CopyImageSet={STACK_COPIES_PER_SECOND:g}:1",
    "--copy-seconds",
    "2",
    "--copy-seconds-per-instance",
    "0",
    "--log-level",
    "WARNING",
]
#: Generous: the machine may be busy (2 cores, other stacks). Waits end as soon as their condition holds.
WAIT_MS = 120_000


def stack_ledger_rows(stack, run_id: str) -> list[dict]:
    import sqlalchemy as sa

    engine = sa.create_engine(stack.ledger_url())
    try:
        with engine.connect() as db:
            query = sa.text(
                "SELECT row_number, status, datastore_id, source_image_set_id, destination_image_set_id, label "
                "FROM healthimaging_copy_ledger WHERE dag_id = :dag AND run_id = :run ORDER BY row_number"
            )
            return [dict(r) for r in db.execute(query, {"dag": DAG_ID, "run": run_id}).mappings()]
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """The stack, its REST client (logged in), the bulk copy run triggered on a manifest of STACK_ROWS rows."""
    import csv

    from stack.compose import ENV_EXAMPLE
    from stack.process_stack import ProcessStack
    from tests.airflow_stack import FAST, StackClient, emulator_client, image_sets_by_series, shell_environ

    stack = ProcessStack(
        tmp_path_factory.mktemp("dashboard") / "home",
        executor="LocalExecutor",
        env_file=ENV_EXAMPLE,
        environ=shell_environ(),
        emulator_args=STACK_EMULATOR_ARGS,
        overrides=FAST,
    )
    with stack:
        client = emulator_client(stack.emulator_url)
        (datastore,) = [d for d in client.list_datastores()["datastoreSummaries"] if d["datastoreName"] == "synthetic"]
        datastore_id = datastore["datastoreId"]
        series = image_sets_by_series(client, datastore_id)
        sources = [next(iter(series[uid])) for uid in sorted(series)[:STACK_ROWS]]
        assert len(sources) == STACK_ROWS
        manifest = stack.home / "manifests" / "dashboard.csv"
        manifest.parent.mkdir(parents=True, exist_ok=True)
        with manifest.open("w", newline="") as stream:
            writer = csv.writer(stream)
            writer.writerow(["datastore_id", "source_image_set_id", "label"])
            # Labels are the manifest author's text: one is markup, which the pages must show as text.
            writer.writerows(
                [datastore_id, source, HOSTILE if n == 1 else f"dashboard-{n}"] for n, source in enumerate(sources, 1)
            )
        api = StackClient(stack, stack.token())
        conf = {
            "manifest": str(manifest),
            "copies_per_second": STACK_COPIES_PER_SECOND,
            "burst": 1,
            "batch_size": 20,
            "poll_interval_seconds": 1,
            "progress_interval_seconds": 5,
        }
        run_id = api.trigger(DAG_ID, conf=conf, wait_for_dag_timeout=120)
        yield {"stack": stack, "api": api, "run_id": run_id, "sources": sources, "datastore_id": datastore_id}


@pytest.fixture(scope="module")
def stack_shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get(SCREENSHOTS_ENV) or tmp_path_factory.mktemp("dashboard-screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\ndashboard screenshots: {folder}")
    return folder


@pytest.fixture(scope="module")
def logged_in(browser, deployment):
    """A browser context logged in through Airflow's login page (simple auth manager), as a user would."""
    stack = deployment["stack"]
    username, password = stack.credentials
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.goto(stack.api_url + "/healthimaging/")
    # Not logged in: the dashboard sends the browser to Airflow's login page.
    page.wait_for_url("**/auth/login**", timeout=WAIT_MS)
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/auth/" not in url, timeout=WAIT_MS)
    assert "_token" in {c["name"] for c in context.cookies()}
    page.close()
    yield context
    context.close()


def frame(page):
    return page.frame_locator("iframe").first


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_stack_run_tab_counts_rise_during_the_copy(deployment, logged_in, stack_shots):
    stack, api, run_id = deployment["stack"], deployment["api"], deployment["run_id"]
    page = logged_in.new_page()
    page.goto(f"{stack.api_url}/dags/{DAG_ID}/runs/{run_id}")
    tab = page.locator("a[href$='/plugin/healthimaging-run']")
    tab.first.wait_for(timeout=WAIT_MS)
    tab.first.click()
    view = frame(page)
    # The page shows the run while it is active (the ledger's rows written, copies going on) ...
    view.locator(".badge", has_text="active").wait_for(timeout=WAIT_MS)
    first = int(view.locator("#accounted-count").inner_text())
    rows = int(view.locator("#rows-count").inner_text())
    assert rows == STACK_ROWS
    assert first < rows
    # ... and its own refresh (every 15 s while the run is active) shows more rows accounted for.
    page.wait_for_function(
        "n => { const f = document.querySelector('iframe');"
        " const c = f && f.contentDocument && f.contentDocument.getElementById('accounted-count');"
        " return c && Number(c.textContent) > n; }",
        arg=first,
        timeout=WAIT_MS,
    )
    second = int(view.locator("#accounted-count").inner_text())
    print(f"\naccounted for: {first} then {second} of {rows}")
    assert second > first
    page.screenshot(path=str(stack_shots / "run-tab-active.png"))

    assert api.wait_for_run(DAG_ID, run_id, timeout=300, poll=2) == "success", api.diagnostics(DAG_ID, run_id)
    # The last refresh shows the run finished, every row accounted for; then the refresh stops.
    view.locator(".badge", has_text="finished").wait_for(timeout=WAIT_MS)
    assert view.locator("#accounted").inner_text() == f"{STACK_ROWS} of {STACK_ROWS} rows accounted for"
    # (the refresh line is written once the whole refresh, charts included, is done)
    view.locator("#refresh[data-active=false]").wait_for(timeout=WAIT_MS)
    assert int(view.locator("#status-counts [data-status=succeeded] strong").inner_text()) == STACK_ROWS
    assert view.locator("#throughput-chart").get_attribute("data-points") not in (None, "0")
    assert view.locator("img").count() == 0
    page.screenshot(path=str(stack_shots / "run-tab.png"))
    # The run page on its own, whole (an iframe is cut to its box in the Airflow page's screenshot).
    standalone = logged_in.new_page()
    errors = collect_page_errors(standalone)
    standalone.goto(f"{stack.api_url}/healthimaging/runs/{DAG_ID}/{run_id}")
    standalone.locator(".badge", has_text="finished").wait_for(timeout=WAIT_MS)
    standalone.locator("#latency-p50").wait_for(timeout=WAIT_MS)
    standalone.wait_for_function("document.getElementById('throughput-chart').dataset.points > 0", timeout=WAIT_MS)
    standalone.screenshot(path=str(stack_shots / "run.png"), full_page=True)
    assert errors == []


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_stack_nav_page_lineage_and_home_widget(deployment, logged_in, stack_shots):
    stack, api, run_id = deployment["stack"], deployment["api"], deployment["run_id"]
    assert api.wait_for_run(DAG_ID, run_id, timeout=300, poll=2) == "success", api.diagnostics(DAG_ID, run_id)
    rows = stack_ledger_rows(stack, run_id)
    copied = next(r for r in rows if r["row_number"] == 1)
    assert copied["status"] == "succeeded" and copied["destination_image_set_id"]

    page = logged_in.new_page()
    page.goto(stack.api_url + "/")
    # The home page's widget, with the numbers of the summary.
    widget = page.locator("[data-testid=healthimaging-copies-widget]")
    widget.wait_for(timeout=WAIT_MS)
    widget.locator("[data-value=succeeded_today]").wait_for(timeout=WAIT_MS)
    assert int(widget.locator("[data-value=succeeded_today]").inner_text().replace(",", "")) >= STACK_ROWS
    assert widget.locator("[data-value=runs_in_progress]").inner_text() == "0"
    page.screenshot(path=str(stack_shots / "home-widget.png"))

    # The nav item opens the dashboard in Airflow's page; the run is listed with a link to Airflow's run page.
    page.locator("a[href$='/plugin/healthimaging-copies']").first.click()
    view = frame(page)
    run_row = view.locator("#runs-table tbody tr", has_text=run_id)
    run_row.wait_for(timeout=WAIT_MS)
    assert f"{STACK_ROWS} of {STACK_ROWS}" in run_row.inner_text()
    airflow_link = run_row.locator("a", has_text="Airflow run")
    assert airflow_link.get_attribute("target") == "_top"

    # The lineage look-up finds the copied image set by its source id, and follows its destination back.
    view.locator("#lineage-q").fill(copied["source_image_set_id"])
    view.locator("#lineage-form button[type=submit]").click()
    result = view.locator("#lineage-table tbody tr", has_text=copied["destination_image_set_id"])
    result.wait_for(timeout=WAIT_MS)
    assert HOSTILE in result.inner_text()  # the hostile label, shown as text
    assert view.locator("#lineage-table img").count() == 0
    result.locator("button.follow").click()
    chain = view.locator("#trace-table tbody tr")
    chain.first.wait_for(timeout=WAIT_MS)
    assert copied["source_image_set_id"] in chain.first.inner_text()
    page.screenshot(path=str(stack_shots / "nav-lineage.png"))

    standalone = logged_in.new_page()
    errors = collect_page_errors(standalone)
    standalone.goto(stack.api_url + "/healthimaging/")
    standalone.locator("#runs-table tbody tr").first.wait_for(timeout=WAIT_MS)
    standalone.locator("#lineage-q").fill(copied["destination_image_set_id"])
    standalone.locator("#lineage-form button[type=submit]").click()
    standalone.locator("#lineage-table tbody tr").first.wait_for(timeout=WAIT_MS)
    standalone.screenshot(path=str(stack_shots / "runs.png"), full_page=True)
    assert errors == []
