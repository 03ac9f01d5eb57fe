"""The dashboard's pages in a real headless Chromium (Debian's, driven by Playwright with executable_path).

Against a stand-in API (tests/browser_helpers.py's FakeDashboard, the JSON contract of issue 12): the runs
list, the run view with its chart, the lineage look-up and its trace, every value inserted as text (hostile
manifest labels and ids stay text, no script runs), the ledger's message and API errors shown on the page.

Screenshots go to ``$HEALTHIMAGING_SCREENSHOTS`` when set, else to the test's ``tmp_path``.
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
