"""The web dashboard in a real headless Chromium (Debian's /usr/bin/chromium, never a downloaded one)
against a real job server: submit from the form, watch it live, inspect the charts, download, cancel."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import job_dict
from tests.live_server import TOKEN, Server, started, stop

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run"]
SHOTS = Path(os.environ.get("PRUNESEARCH_TEST_ARTIFACTS", "test-artifacts"))
# Charts a finished sensitivity job (FLOPs budget: deterministic) must draw, and those it must not show;
# a uniform job under a latency budget adds the lookup-table breakdown, measured baselines and the uniform sweep.
CHARTS = ("best", "latency", "flops", "layers", "groups", "sensitivity")
NOT_FOR_SENSITIVITY = ("amc", "netadapt")
LATENCY_CHARTS = ("latency", "flops", "layers", "groups", "lut")
DRAWN = "k => Number(document.querySelector(`[data-chart=\"${k}\"]`).dataset.points) > 0"
# A finished job's page draws as events stream in and results arrive; `data-complete` says it has both.
# Reading a chart before it once found the latency legend without the global baseline, whose event is
# near the end of the stream, while the report fetched over REST had already drawn the chosen plan.
COMPLETE = '.charts[data-complete="true"]'


def _unavailable(reason: str) -> None:
    if os.environ.get("PRUNESEARCH_REQUIRE_BROWSER") == "1":
        pytest.fail(f"PRUNESEARCH_REQUIRE_BROWSER=1 but {reason} (run docker/install-browser.sh)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        _unavailable(f"no Chromium at {CHROMIUM}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright Python package is not installed")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def dash(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # a model with a channel shuffle: the preflight excludes the layers feeding it (see test_zoo_sweep)
    srv = started(tmp_path_factory.mktemp("dashboard"),
                  PRUNESEARCH_MODEL_FACTORIES=json.dumps({"shuffle": "tests.test_zoo_sweep:ShuffleNet"}))
    yield srv
    stop(srv)


class Console:
    """Every console error and uncaught exception of a page. The only tolerated entries are Chromium's
    own network lines for answers the test provokes on purpose (the 422 of the invalid form and of its
    space preview, the 404 that tells the page this server has no scheduler)."""

    def __init__(self, page: Any, base: str) -> None:
        self.errors: list[str] = []
        self.allowed = {f"{base}/api/v1/jobs": {"422"}, f"{base}/api/v1/schedules": {"404", "422"},
                        f"{base}/api/v1/catalog/space": {"422"}}
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))

    def _console(self, msg: Any) -> None:
        if msg.type != "error":
            return
        url = msg.location.get("url", "")
        if msg.text.startswith("Failed to load resource") and any(
                f"status of {code} " in msg.text for code in self.allowed.get(url.split("?")[0], ())):
            return
        self.errors.append(f"{msg.text} ({url})")


def fill_form(page: Any, **values: str) -> None:
    for name, value in values.items():
        el = page.locator(f'[name="{name}"]')
        if el.evaluate("e => e.tagName") == "SELECT":
            el.select_option(value)
        else:
            el.fill(value)


def chart_points(page: Any, key: str) -> int:
    """Points Plotly actually drew (markers, bars, line vertices), not just what it was given."""
    drawn: int = page.evaluate("""key => {
        const div = document.querySelector(`[data-chart="${key}"]`);
        if (!div || div.hidden || !div.data) return 0;
        const marks = div.querySelectorAll('.scatterlayer .point, .barlayer .point').length;
        const lines = [...div.querySelectorAll('.scatterlayer path.js-line')]
            .filter(p => (p.getAttribute('d') || '').length > 2).length;
        return marks + lines;
    }""", key)
    return drawn


def wait_status(client: Any, job_id: str, states: set[str], timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.job(job_id)
        if job["status"] in states:
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} is still {job['status']}")


def schedules_page(page: Any, dash: Server, tmp_path: Path) -> None:
    """Create (a bad cron first: its error sits under the field), pause, resume, run now, see the trend."""
    import torch
    from safetensors.torch import save_file

    from search_spaces.plan import ModelIdentity
    from search_spaces.zoo import build_model

    model = build_model(ModelIdentity(arch="small_cnn", num_classes=10, in_channels=1, input_size=8))
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)},
              tmp_path / "w.safetensors")
    upload = httpx.post(f"{dash.url}/api/v1/weights", content=(tmp_path / "w.safetensors").read_bytes(),
                        headers={"Authorization": f"Bearer {TOKEN}"}).json()
    template = job_dict(name="nightly")
    del template["model"]["weights"]
    page.wait_for_selector("#schedule-form")
    fill_form(page, name="dash-nightly", cron="not a cron", timezone="UTC", weights=upload["id"],
              job=json.dumps(template))
    page.click("#schedule-form button[type=submit]")
    page.locator('#schedule-form [data-field="cron"] .field-error').wait_for(state="visible")
    fill_form(page, cron="0 3 * * *")
    page.click("#schedule-form button[type=submit]")
    row = page.locator("#schedules-table tr", has_text="dash-nightly")
    row.wait_for()
    row.locator("button[data-act=pause]").click()
    page.locator("#schedules-table tr", has_text="dash-nightly").locator("text=paused").wait_for()
    page.locator("#schedules-table tr", has_text="dash-nightly").locator("button[data-act=resume]").click()
    page.locator("#schedules-table tr", has_text="dash-nightly").locator("text=active").wait_for()
    page.locator("#schedules-table tr", has_text="dash-nightly").locator("button[data-act=run]").click()
    schedule_id = page.locator("#schedules-table tr", has_text="dash-nightly").get_attribute("data-id")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        runs = httpx.get(f"{dash.url}/api/v1/schedules/{schedule_id}/runs").json()["items"]
        if any(r.get("comparison") for r in runs):
            break
        time.sleep(0.5)
    page.locator("#schedules-table tr", has_text="dash-nightly").locator("a[data-act=runs]").click()
    page.wait_for_function("() => Number((document.querySelector('#trend-acc') || {dataset: {}}).dataset.points) > 0")
    assert page.locator("#runs-panel tbody tr").count() >= 1


def test_dashboard_submit_watch_inspect_download_cancel(browser: Any, dash: Server, tmp_path: Path) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1366, "height": 900}, accept_downloads=True)
    console = Console(page, dash.url)
    page.goto(f"{dash.url}/")
    page.wait_for_selector("#jobs-state:has-text('No jobs yet')")
    page.evaluate("window.__sameDocument = 'yes'")  # gone if anything reloads the page
    page.fill("#token", TOKEN)
    page.dispatch_event("#token", "change")

    # An invalid form: the server's 422 lands next to the field it names.
    page.click("text=New job >> nth=0")
    page.wait_for_selector("#job-form")
    fill_form(page, **{"model.arch": "small_cnn", "model.num_classes": "1", "dataset.name": "synthetic"})
    page.click("#submit")
    error = page.locator('[data-field="model.num_classes"] .field-error')
    error.wait_for(state="visible")
    assert "greater than or equal to 2" in error.inner_text()
    assert page.locator(".field.invalid").count() == 1
    page.screenshot(path=str(SHOTS / "dashboard-new-job.png"), full_page=True)

    # A small sensitivity job from the form (a FLOPs budget: a latency budget on a model this small is at
    # the mercy of timing noise on a shared machine).
    fast = job_dict()
    advanced = {**{k: fast[k] for k in ("measurement", "evaluation", "execution")},
                "finetune": {"final_epochs": 1}}  # so the headline is after fine-tuning
    fill_form(page, **{"name": "dash-sensitivity", "model.num_classes": "10", "model.in_channels": "1",
                       "model.input_size": "8", "weights-epochs": "1", "dataset.val_size": "64",
                       "dataset.train_size": "256", "dataset.test_size": "64", "device.batch_size": "8",
                       "budget.metric": "flops", "budget.target": "0.5", "strategy.name": "sensitivity"})
    fill_form(page, **{"strategy.ratios": "0.2, 0.4, 0.6, 0.9", "strategy.threshold_steps": "4"})
    page.fill("#f-advanced", json.dumps(advanced))
    page.click("#submit")
    page.wait_for_url("**/#/jobs?highlight=*")
    job_id = page.url.split("highlight=")[1]
    row = page.locator(f'tr[data-id="{job_id}"]')
    row.wait_for()
    assert "small_cnn" in row.inner_text() and "sensitivity" in row.inner_text() and "FLOPs ≤ 50%" in row.inner_text()
    client = dash.client()  # queued behind it: uniform bisection on measured latency always finds a plan
    timed = client.submit(job_dict(name="dash-latency", budget={"metric": "latency_ms", "target": 0.8},
                                   evaluation={"uniform_sweep": [0.3, 0.6]}))

    # Its progress bar advances in place, without a reload.
    seen: list[float] = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        # status before value: one redraw sets both, so a terminal status read first guarantees that the
        # value read next is from that redraw or a later one (the other order can pair a stale value with it)
        status = row.get_attribute("data-status")
        value = float(row.locator("[role=progressbar]").get_attribute("aria-valuenow") or 0)
        if not seen or value != seen[-1]:
            seen.append(value)
        if status in {"succeeded", "failed", "cancelled"}:
            break
        time.sleep(0.1)
    assert row.get_attribute("data-status") == "succeeded", (dash.root / "server.log").read_text()[-3000:]
    assert seen[-1] == 100 and any(0 < v < 100 for v in seen) and seen == sorted(seen), seen
    assert page.evaluate("window.__sameDocument") == "yes"
    assert row.locator("td").nth(7).inner_text().endswith("×")  # measured speed-up
    listed_acc = row.locator("td").nth(6).inner_text()

    # The detail page: summary cards, every chart with drawn points, downloads.
    row.locator("a").first.click()
    page.wait_for_selector('[data-card="Latency"]')
    page.wait_for_selector(COMPLETE)
    card = page.locator('[data-card="Validation accuracy"]')
    assert "after fine-tuning" in card.inner_text()  # the headline is the model returned, labelled
    assert listed_acc.removesuffix("ft").strip() == card.locator(".pruned-val").inner_text()  # as the list shows
    for key in CHARTS:
        page.wait_for_function(DRAWN, arg=key)
        assert chart_points(page, key) > 0, key
    for key in NOT_FOR_SENSITIVITY:
        assert page.locator(f'[data-panel="{key}"]').is_hidden()
    log_text = page.inner_text("#d-log")  # each line rendered from its kind's template in /catalog
    assert "phase search end after" in log_text and "budget: flops ≤" in log_text, log_text[-2000:]
    assert "sensitivity " in log_text and " @ " in log_text and "done: artifacts written" in log_text, log_text[-2000:]
    legend = page.locator('[data-chart="flops"] .legend').text_content() or ""
    assert "budget" in legend and "uniform baseline" in legend and "chosen plan" in legend
    assert "FLOPs (millions of MACs)" in (page.locator('[data-chart="flops"] .xtitle').text_content() or "")
    with page.expect_download() as dl:
        page.click('a[data-artifact="plan.json"]')
    plan = json.loads(Path(dl.value.path()).read_text())
    assert plan["fingerprint"] == httpx.get(f"{dash.url}/api/v1/jobs/{job_id}/plan").json()["fingerprint"]
    page.screenshot(path=str(SHOTS / "dashboard-job.png"), full_page=True)

    # The latency job: measured candidates against the budget line, the lookup table's per-layer breakdown.
    assert wait_status(client, timed["id"], {"succeeded", "failed"})["status"] == "succeeded"
    page.goto(f"{dash.url}/#/jobs/{timed['id']}")
    page.wait_for_selector('[data-card="Latency"]')
    page.wait_for_selector(COMPLETE)
    for key in LATENCY_CHARTS:
        page.wait_for_function(DRAWN, arg=key)
        assert chart_points(page, key) > 0, key
    legend = page.locator('[data-chart="latency"] .legend').text_content() or ""
    assert "budget" in legend and "global baseline" in legend and "chosen plan" in legend
    assert "uniform sweep" in legend  # the line the job's plans are judged against
    assert "ms per batch of 8" in (page.locator('[data-chart="latency"] .xtitle').text_content() or "")
    page.screenshot(path=str(SHOTS / "dashboard-latency-job.png"), full_page=True)

    # A third, long job (AMC): its reward chart fills live over SSE, then the page cancels it.
    long_job = client.submit(job_dict(name="dash-amc", strategy={"name": "amc", "episodes": 5000,
                                                                 "warmup_episodes": 4000}))
    page.goto(f"{dash.url}/#/jobs/{long_job['id']}")
    page.wait_for_function("() => Number(document.querySelector('[data-chart=\"amc\"]').dataset.points) > 2",
                           timeout=120_000)
    assert chart_points(page, "amc") > 2
    page.click("#d-cancel")
    page.wait_for_selector("#d-badge .badge.cancelled", timeout=60_000)
    assert wait_status(client, long_job["id"], {"cancelled"}, 10)["status"] == "cancelled"
    assert page.locator("#d-cancel").is_hidden()

    page.goto(f"{dash.url}/#/jobs")
    page.wait_for_selector(f'tr[data-id="{long_job["id"]}"][data-status="cancelled"]')
    page.select_option("#f-status", "succeeded")
    assert page.locator("#jobs-table tbody tr").count() == 2
    page.select_option("#f-status", "")
    page.screenshot(path=str(SHOTS / "dashboard-jobs.png"), full_page=True)

    # Schedules: an honest state when this server has no scheduler, the list when it has one.
    page.goto(f"{dash.url}/#/schedules")
    if httpx.get(f"{dash.url}/api/v1/schedules").status_code == 404:
        page.wait_for_selector("#sc-unavailable")
        assert "Schedules are not available on this server" in page.inner_text("#sc-unavailable")
    else:
        schedules_page(page, dash, tmp_path)
    assert console.errors == []
    page.close()
    if os.environ.get("PRUNESEARCH_UPDATE_DOCS_SCREENSHOT") == "1":
        shutil.copy(SHOTS / "dashboard-job.png", Path(__file__).parent.parent / "docs" / "dashboard.png")


def test_failed_job_shows_no_empty_charts_and_the_header_fits_a_phone(browser: Any, dash: Server) -> None:
    """A job that fails in its data phase has nothing to plot: no empty chart panel. At 420 px the token
    field stays on screen."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    client = dash.client()
    failing = client.submit(job_dict(name="dash-fails", dataset={"name": "digits", "val_size": 5000}))
    assert wait_status(client, failing["id"], {"failed", "succeeded"})["status"] == "failed"
    page = browser.new_page(viewport={"width": 420, "height": 800})
    console = Console(page, dash.url)
    page.goto(f"{dash.url}/#/jobs/{failing['id']}")
    page.wait_for_selector("#d-badge .badge.failed")
    page.wait_for_selector(COMPLETE, state="attached")  # attached, not visible: a failed job shows no chart
    assert page.locator(".chart-panel:not([hidden])").count() == 0
    assert "val_size" in page.inner_text("#d-error")
    box = page.locator("#token").bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 420, box
    assert page.evaluate("document.documentElement.scrollWidth") <= 420
    page.screenshot(path=str(SHOTS / "dashboard-failed-420px.png"), full_page=True)
    assert console.errors == []
    page.close()


def test_the_new_job_form_opens_on_the_demo_job_and_asks_for_dimensions(browser: Any, dash: Server) -> None:
    """The form as it opens is the demo job (examples/digits_demo.yaml, served in /catalog's `defaults`):
    submitted untouched it runs. Ticking `block` asks for width + depth, and the criteria offered follow
    the dimensions ticked (fine-grained kinds take weight criteria)."""
    from service.spec import DEMO_JOB, load_spec

    demo = load_spec(DEMO_JOB)
    page = browser.new_page(viewport={"width": 1366, "height": 900})
    console = Console(page, dash.url)
    page.goto(f"{dash.url}/#/new")
    page.fill("#token", TOKEN)
    page.dispatch_event("#token", "change")
    page.wait_for_selector("#job-form")
    assert page.input_value('[name="model.arch"]') == demo.model.arch
    assert page.input_value('[name="dataset.val_size"]') == str(demo.dataset.val_size)
    assert page.input_value('[name="strategy.steps"]') == str(demo.strategy.steps)  # type: ignore[union-attr]
    criteria = page.locator('[name="criterion"] option').all_inner_texts()
    assert "wanda" not in criteria and "taylor" in criteria
    page.uncheck('[data-dimension="channel"]')
    page.check('[data-dimension="unstructured"]')
    assert "wanda" in page.locator('[name="criterion"] option').all_inner_texts()
    page.uncheck('[data-dimension="unstructured"]')
    page.check('[data-dimension="channel"]')
    # the space the preflight would build, before submitting: a channel shuffle leaves layers unpruned, with why
    space_says = "t => document.querySelector('#nj-space').textContent.includes(t)"
    page.wait_for_function(space_says, arg="no layer left unpruned")
    page.select_option('[name="model.arch"]', "factory:shuffle")
    page.wait_for_function(space_says, arg="left unpruned: ")
    assert "shuffle" in page.inner_text("#nj-space")
    page.select_option('[name="model.arch"]', demo.model.arch)
    page.wait_for_function(space_says, arg="no layer left unpruned")

    ids = []
    for blocks in (False, True):
        if blocks:
            page.goto(f"{dash.url}/#/new")
            page.wait_for_selector("#job-form")
            page.check('[data-dimension="block"]')
        page.click("#submit")
        page.wait_for_url("**/#/jobs?highlight=*")
        ids.append(page.url.split("highlight=")[1])
    client = dash.client()
    plain, deep = (httpx.get(f"{dash.url}/api/v1/jobs/{i}").json()["spec"] for i in ids)
    assert plain["dimensions"] == ["channel"] and deep["dimensions"] == ["channel", "block"]
    assert load_spec_dict(plain) == demo.model_dump(mode="json")  # the demo job, exactly
    for job_id in ids:
        job = wait_status(client, job_id, {"succeeded", "failed"}, 300)
        assert job["status"] == "succeeded", job.get("error")
    kinds = httpx.get(f"{dash.url}/api/v1/jobs/{ids[1]}/artifacts/report.json").json()["dimensions"]["kinds"]
    assert "block" in kinds
    assert console.errors == []
    page.close()


def load_spec_dict(spec: dict[str, Any]) -> dict[str, Any]:
    from service.spec import parse_spec

    return parse_spec(spec).model_dump(mode="json")


def test_static_files_are_served_from_packages(dash: Server) -> None:
    """No CDN: the page references only this server, Plotly comes from the installed package."""
    import plotly

    index = httpx.get(f"{dash.url}/").text
    assert "http://" not in index.replace(dash.url, "") and "https://" not in index
    js = httpx.get(f"{dash.url}/static/vendor/plotly.min.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert js.content == (Path(plotly.__file__).parent / "package_data" / "plotly.min.js").read_bytes()
    assert httpx.get(f"{dash.url}/static/..%2Fpipeline.py").status_code == 404
    assert httpx.get(f"{dash.url}/static/nothing.js").status_code == 404


def test_the_job_page_lists_the_layers_the_preflight_excluded(browser: Any, dash: Server) -> None:
    """Layers whose pruning cannot work are left out automatically; the job page says which and why."""
    client = dash.client()
    job = client.submit(job_dict(name="dash-excluded", model={"arch": "factory:shuffle", "num_classes": 10,
                                                              "in_channels": 1, "input_size": 8,
                                                              "weights": {"train_epochs": 1}},
                                 budget={"metric": "flops", "target": 0.8}, strategy={"name": "uniform", "steps": 3}))
    assert wait_status(client, job["id"], {"failed", "succeeded"})["status"] == "succeeded"
    plan = httpx.get(f"{dash.url}/api/v1/jobs/{job['id']}/plan").json()
    assert set(plan["excluded"]) == {"stem.0", "units.0.3.0", "units.1.3.0"}
    page = browser.new_page()
    console = Console(page, dash.url)
    page.goto(f"{dash.url}/#/jobs/{job['id']}")
    page.wait_for_selector(COMPLETE, state="attached")
    items = page.locator("#d-excluded li")
    assert items.count() == 3 and page.locator("#d-excluded").is_visible()
    for layer, why in plan["excluded"].items():
        assert why in page.locator(f'#d-excluded li[data-layer="{layer}"]').inner_text()
    assert console.errors == []
    page.close()
