"""The web UI in a real headless Chromium against the real API, workers and model service.

The tests share one stack and build on each other in file order: a dataset uploaded through
the form, a LeNet job queued from the form (watched live, across an API restart), then the
clone, sweep, classify, evaluate and queue flows on it, and last the screenshots of every page.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import time
from collections import defaultdict
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from tests import shapes
from tests.support import (
    Stack,
    digits_arrays,
    post_dataset,
    wait_for,
    write_class_folders,
    zip_folder,
)
from tests.ui.conftest import UI, wait_until

pytestmark = pytest.mark.timeout(900)

WORLD: dict[str, Any] = {}


def _api(stack: Stack) -> Any:
    return stack.client()


def _metric_counts(stack: Stack, job_id: str) -> dict[str, list[float]]:
    """Per series: [number of points, sum of values], from GET /metrics."""
    out: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    with _api(stack) as client:
        items = client.get(f"/jobs/{job_id}/metrics", params={"limit": 100000}).json()["items"]
    for p in items:
        out[p["name"]][0] += 1
        out[p["name"]][1] += p["value"]
    return dict(out)


def _chart_counts(page: Any) -> dict[str, list[float]]:
    return json.loads(page.get_attribute("[data-testid=charts]", "data-counts") or "{}")


def _restart_api(stack: Stack) -> float:
    """Stop the API process (SIGTERM, then SIGKILL) and start it again on the same port."""
    api = next(p for p in stack.procs if "api" in p.args and p.poll() is None)
    started = time.monotonic()
    os.killpg(api.pid, signal.SIGTERM)
    try:
        api.wait(timeout=8)
    except subprocess.TimeoutExpired:
        os.killpg(api.pid, signal.SIGKILL)
        api.wait()
    stack.procs.remove(api)
    stack.start_api()
    return time.monotonic() - started


def test_sign_in_with_the_token(browser: Any, ui_stack: Stack) -> None:
    ui = UI(browser, ui_stack, token=None, theme="light")
    page = ui.page("/")
    page.wait_for_url(re.compile(r"/login\?next="))
    page.fill("#token", ui_stack.token)
    page.click("button[type=submit]")
    page.wait_for_selector("[data-testid=home]")
    cookie = next(c for c in ui.context.cookies() if c["name"] == "digits_session")
    print("session cookie:", {k: cookie[k] for k in ("httpOnly", "sameSite", "path")})
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""  # the page never sees the token
    ui.close()


def test_sign_in_with_the_one_click_url(browser: Any, ui_stack: Stack) -> None:
    ui = UI(browser, ui_stack, token=None, theme="light")
    page = ui.page(f"/#token={ui_stack.token}")
    page.wait_for_selector("[data-testid=home]")
    assert "token" not in page.url, page.url
    assert "token" not in page.evaluate("location.href")
    ui.close()


def test_a_revoked_token_goes_back_to_login(browser: Any, ui_stack: Stack) -> None:
    with _api(ui_stack) as client:
        created = client.post("/tokens", json={"name": "browser-to-revoke"}).json()
    ui = UI(browser, ui_stack, token=created["token"], theme="light")
    ui.guard.tolerated.append(re.compile(r"status of 401"))
    page = ui.page("/")
    page.wait_for_selector("[data-testid=home]")
    with _api(ui_stack) as client:
        assert client.delete(f"/tokens/{created['id']}").status_code == 204
    page.reload()
    page.wait_for_url(re.compile(r"/login"))
    page.wait_for_selector("#token")
    ui.close()


def test_upload_the_digits_dataset_through_the_form(
    ui: UI, ui_stack: Stack, digits_zip: Path
) -> None:
    page = ui.page("/datasets/new")
    page.set_input_files("[data-testid=archive-drop] input[type=file]", str(digits_zip))
    page.fill("#f-name", "digits-ui")
    page.fill("#f-image_width", "28")
    page.fill("#f-image_height", "28")
    page.select_option("#f-channels", "1")
    page.fill("#f-seed", "1")
    t0 = time.monotonic()
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/datasets/[0-9a-f-]{36}$"))
    page.wait_for_selector("[data-testid=dataset-page][data-status=done]", timeout=120_000)
    WORLD["dataset"] = page.url.rsplit("/", 1)[1]
    print(f"dataset uploaded and imported in {time.monotonic() - t0:.1f}s")
    page.wait_for_selector("[data-testid=histogram]")
    page.click("[data-tab=explore]")
    page.wait_for_selector("[data-testid=gallery] img")
    chips = page.locator("[data-testid=class-chips] .chip").all_inner_texts()
    assert chips[1:] == [str(i) for i in range(10)], chips
    page.click("[data-testid=class-chips] .chip >> text='7'")
    page.wait_for_function(
        "() => { const t = [...document.querySelectorAll('[data-testid=gallery] .thumb')];"
        " return t.length > 0 && t.every(x => x.dataset.class === '7'); }"
    )
    shown = page.locator("[data-testid=gallery] .thumb").count()
    loaded = page.evaluate(
        "Promise.all([...document.querySelectorAll('[data-testid=gallery] img')].slice(0, 8)"
        ".map(i => i.decode().then(() => i.naturalWidth)))"
    )
    print(f"gallery of class 7: {shown} thumbnails, first widths {loaded}")
    assert all(w == 28 for w in loaded)
    page.click("[data-testid=gallery] .thumb >> nth=0")
    page.wait_for_selector("[data-testid=lightbox] img")
    page.keyboard.press("Escape")


def test_a_detection_dataset_through_the_form_explores_with_its_boxes(
    ui: UI, ui_stack: Stack, tmp_path: Path
) -> None:
    folder = tmp_path / "shapes"
    shapes.write_yolo(folder, shapes.render(8, 48, 48, seed=4))
    archive = zip_folder(folder, tmp_path / "shapes.zip")
    page = ui.page("/datasets/new")
    page.set_input_files("[data-testid=archive-drop] input[type=file]", str(archive))
    page.fill("#f-name", "shapes-ui")
    page.select_option("#f-task", "detection")
    page.select_option("#f-annotation_format", "yolo")
    page.fill("#f-image_width", "48")
    page.fill("#f-image_height", "48")
    page.click("button[type=submit]")
    page.wait_for_selector("[data-testid=dataset-page][data-status=done]", timeout=60_000)
    assert page.inner_text("[data-testid=task]") == "detection · yolo"
    assert "Boxes per class" in page.inner_text("main")
    page.click("[data-tab=explore]")
    page.wait_for_selector("[data-testid=gallery] img")
    first = page.locator("[data-testid=gallery] img").first
    assert first.get_attribute("src").endswith("/annotated")
    assert (
        page.evaluate("(i) => i.decode().then(() => i.naturalWidth)", first.element_handle()) == 48
    )
    assert "box" in page.locator("[data-testid=gallery] .cap").first.inner_text()
    page.click("[data-testid=gallery] .thumb >> nth=0")
    page.wait_for_selector("[data-testid=lightbox] img")
    if os.environ.get("DIGITS_UI_SCREENSHOTS"):
        shot = Path(os.environ["DIGITS_UI_SCREENSHOTS"]) / "dataset-detection-light.png"
        page.wait_for_timeout(400)
        page.screenshot(path=str(shot))


def test_a_detector_from_the_form_charts_map_and_draws_its_predictions(
    ui: UI, ui_stack: Stack, tmp_path: Path
) -> None:
    with _api(ui_stack) as client:
        dataset = next(
            d for d in client.get("/datasets").json()["items"] if d["name"] == "shapes-ui"
        )
    page = ui.page(f"/jobs/new?dataset={dataset['id']}")
    page.wait_for_selector("[data-testid=networks] input[value=fcos_resnet18_fpn]:checked")
    assert "object detection" in page.inner_text("[data-testid=job-new-title]")
    assert page.locator("[data-testid=networks] input[value=lenet]").count() == 0
    assert page.input_value("#f-best_metric") == "val.map"
    page.fill("#f-name", "fcos-ui")
    page.fill("#f-epochs", "2")
    page.fill("#f-batch_size", "4")
    page.select_option("#f-solver", "adamw")
    page.fill("#f-learning_rate", "0.001")
    page.click("[data-testid=sweep-preview] button[type=submit]")
    page.wait_for_url(re.compile(r"/jobs/[0-9a-f-]{36}$"))
    page.wait_for_selector("[data-testid=job-page][data-status=done]", timeout=180_000)
    job_id = page.url.rsplit("/", 1)[1]
    page.wait_for_selector("[data-chart=map] canvas")
    page.wait_for_selector("[data-chart=ap-class] canvas")
    assert page.locator("[data-tab=classify]").count() == 0
    page.click("[data-tab=predict]")
    image = tmp_path / "held.png"
    shapes.render(1, 48, 48, seed=99)[0].image.save(image)
    page.select_option("[data-testid=threshold]", "0.05")
    assert page.input_value("[data-testid=threshold]") == "0.05"
    page.set_input_files("[data-testid=predict-drop] input[type=file]", str(image))
    page.wait_for_selector("[data-testid=dense-predictions] [data-testid=prediction-overlay]")
    overlay = page.locator("[data-testid=prediction-overlay]").first
    assert page.get_attribute("[data-testid=dense-predictions] .pred", "data-threshold") == "0.05"
    assert (
        page.evaluate("(i) => i.decode().then(() => i.naturalWidth)", overlay.element_handle())
        == 48
    )
    shots = os.environ.get("DIGITS_UI_SCREENSHOTS")
    if shots:
        page.wait_for_timeout(300)
        page.screenshot(path=str(Path(shots) / "job-detection-predict-light.png"), full_page=True)
    # its download offers the ONNX export (post-processing inside), not TorchScript
    page.click("[data-tab=checkpoints]")
    page.locator("button:has-text('Download')").first.click()
    page.wait_for_selector("#d-onnx")
    assert page.locator("#d-torchscript").count() == 0
    page.check("#d-onnx")
    href = page.get_attribute("a.btn.primary:has-text('Download')", "href")
    assert "export=onnx" in href, href
    with _api(ui_stack) as client:
        assert client.get(href.removeprefix("/api/v1")).status_code == 200
    page.click("button:has-text('Cancel')")
    # evaluated on its val split: mAP and the per-class precision-recall curves
    page.click("[data-tab=evaluate]")
    assert page.locator("option[value=archive]").count() == 1  # a labelled archive, any format
    page.click("[data-action=evaluate]")
    page.wait_for_selector("[data-testid=evaluation][data-task=detection]", timeout=60_000)
    page.wait_for_selector("[data-chart=pr] canvas")
    assert "AP@0.5" in page.inner_text("[data-testid=per-class]")
    if shots:
        page.wait_for_timeout(300)
        page.screenshot(path=str(Path(shots) / "evaluation-detection-light.png"), full_page=True)
        page.goto(page.url.rsplit("/jobs/", 1)[0] + f"/jobs/{job_id}")
        page.wait_for_selector("[data-chart=map] canvas")
        page.wait_for_timeout(300)
        page.screenshot(path=str(Path(shots) / "job-detection-charts-light.png"), full_page=True)
    # an archive dropped on Predict is a prediction job, whose page lists each image's boxes
    held = tmp_path / "held"
    held.mkdir()
    for i, sample in enumerate(shapes.render(3, 48, 48, seed=98)):
        sample.image.save(held / f"h{i}.png")
    page.goto(page.url.rsplit("/jobs/", 1)[0] + f"/jobs/{job_id}")
    page.click("[data-tab=predict]")
    page.select_option("[data-testid=threshold]", "0.05")
    page.set_input_files(
        "[data-testid=predict-drop] input[type=file]", str(zip_folder(held, tmp_path / "h.zip"))
    )
    page.wait_for_selector("[data-testid=dense-rows][data-task=detection]", timeout=60_000)
    assert page.locator("[data-testid=dense-rows] tbody tr").count() == 3
    assert "Prediction results" in page.inner_text("main")
    assert "score ≥ 0.05" in page.inner_text("[data-testid=dense-rows] thead")
    if shots:
        page.wait_for_timeout(300)
        page.screenshot(
            path=str(Path(shots) / "prediction-job-detection-light.png"), full_page=True
        )


def test_queue_lenet_from_the_form_with_the_lr_preview(ui: UI, ui_stack: Stack) -> None:
    page = ui.page(f"/jobs/new?dataset={WORLD['dataset']}")
    page.wait_for_selector("[data-testid=networks] input[value=lenet]")
    page.fill("#f-name", "lenet-ui")
    page.fill("#f-epochs", "10")
    page.fill("#f-batch_size", "32")
    page.fill("#f-learning_rate", "0.05")
    page.fill("#f-seed", "7")
    page.wait_for_selector("[data-testid=lr-preview][data-curves='1'] canvas")
    page.fill("#f-step_size", "50")  # the preview redraws as you type
    page.wait_for_selector("[data-testid=lr-preview][data-curves='1'] canvas")
    assert "1 job" in page.inner_text("[data-testid=sweep-preview]")
    page.click("[data-testid=sweep-preview] button[type=submit]")
    page.wait_for_url(re.compile(r"/jobs/[0-9a-f-]{36}$"))
    WORLD["job"] = page.url.rsplit("/", 1)[1]
    with _api(ui_stack) as client:
        job = client.get(f"/jobs/{WORLD['job']}").json()
    hp = job["request"]["hyperparameters"]
    assert (hp["epochs"], hp["batch_size"], hp["learning_rate"]) == (10, 32, 0.05)
    assert hp["lr_params"]["step_size"] == 50


def test_the_charts_grow_while_it_trains_and_survive_an_api_restart(
    ui: UI, ui_stack: Stack
) -> None:
    page = ui.page(f"/jobs/{WORLD['job']}")
    page.wait_for_selector("[data-testid=job-page][data-status=running]", timeout=120_000)

    def points() -> int:
        return _chart_counts(page).get("train.loss", [0])[0]

    first = wait_until(points, 90, what="first train.loss points")
    grown = wait_until(lambda: points() > first and points(), 90, what="more points")
    print(f"train.loss points on the chart: {first} -> {grown}")
    page.wait_for_selector("[data-chart=loss] canvas")

    # the page keeps polling while the API is down; those failed loads are the restart's
    ui.guard.tolerated.append(
        re.compile(
            r"ERR_CONNECTION_REFUSED|ERR_EMPTY_RESPONSE|ERR_INCOMPLETE_CHUNKED|status of 50[23]"
        )
    )
    before = points()
    took = _restart_api(ui_stack)

    def reconnected() -> Any:
        state = page.get_attribute("[data-testid=job-page]", "data-status")
        live = page.locator("[data-testid=live-state]")
        return state == "done" or (live.count() and live.get_attribute("data-state") == "live")

    wait_until(reconnected, 60, what="the page to reconnect")
    print(f"API restarted in {took:.1f}s; the page reconnected with {before} points held")
    with _api(ui_stack) as client:
        wait_for(client, f"/jobs/{WORLD['job']}", timeout=300)
    page.wait_for_selector("[data-testid=job-page][data-status=done]", timeout=60_000)
    truth = _metric_counts(ui_stack, WORLD["job"])

    def same() -> bool:
        held = _chart_counts(page)
        return held.keys() == truth.keys() and all(
            held[k][0] == truth[k][0]
            and abs(held[k][1] - truth[k][1]) <= 1e-6 * (1 + abs(truth[k][1]))
            for k in truth
        )

    try:
        wait_until(same, 30, what="the chart to hold GET /metrics")
    finally:
        print(
            "points per series, chart vs GET /metrics:",
            {k: (_chart_counts(page).get(k, [0])[0], v[0]) for k, v in truth.items()},
        )
    # and a fresh page, from history alone, shows the same
    again = ui.page(f"/jobs/{WORLD['job']}")
    again.wait_for_selector("[data-chart=loss] canvas")
    wait_until(lambda: _chart_counts(again) == _chart_counts(page), 20, what="reload")


def test_abort_and_clone_with_changes_from_the_buttons(ui: UI, ui_stack: Stack) -> None:
    page = ui.page(f"/jobs/{WORLD['job']}")
    page.click("[data-action=clone]")
    page.fill("#c-name", "lenet-ui-clone")
    page.fill("#c-lr", "0.02")
    page.fill("#c-epochs", "30")
    page.click("[data-action=clone-submit]")
    page.wait_for_url(lambda url: WORLD["job"] not in url and "/jobs/" in url)
    clone = page.url.rsplit("/", 1)[1]
    with _api(ui_stack) as client:
        req = client.get(f"/jobs/{clone}").json()["request"]
        assert req["name"] == "lenet-ui-clone"
        assert req["hyperparameters"]["learning_rate"] == 0.02
        assert req["hyperparameters"]["epochs"] == 30
        assert req["hyperparameters"]["batch_size"] == 32  # copied from the original
        page.click("[data-action=abort]")
        final = wait_for(client, f"/jobs/{clone}", timeout=120)
    assert final["status"] == "aborted", final["status"]
    page.wait_for_selector("[data-testid=job-page][data-status=aborted]", timeout=30_000)
    print(f"clone {clone[:8]} queued with lr 0.02 and aborted from the page")


def _small_dataset(stack: Stack, tmp: Path) -> str:
    images, labels = digits_arrays()
    archive = zip_folder(write_class_folders(tmp / "d8", images, labels), tmp / "d8.zip")
    with _api(stack) as client:
        resp = post_dataset(
            client,
            {
                "name": "digits-8",
                "image_width": 8,
                "image_height": 8,
                "channels": 1,
                "max_per_class": 24,
                "seed": 2,
            },
            {"archive": ("d8.zip", archive.read_bytes(), "application/zip")},
        )
        assert resp.status_code == 202, resp.text
        return str(wait_for(client, f"/datasets/{resp.json()['id']}")["id"])


def test_a_sweep_on_the_compare_page_and_brushing_hides_series(
    ui: UI, ui_stack: Stack, tmp_path: Path
) -> None:
    WORLD["small"] = _small_dataset(ui_stack, tmp_path)
    page = ui.page(f"/jobs/new?dataset={WORLD['small']}")
    page.wait_for_selector("[data-testid=networks] input[value=lenet]")
    page.fill("#f-name", "sweep-ui")
    page.fill("#f-epochs", "3")
    page.fill("#f-batch_size", "16")
    page.fill("#f-learning_rate", "0.01, 0.03, 0.1")
    page.wait_for_selector("[data-testid=lr-preview][data-curves='3']")
    assert "make 3 jobs" in page.inner_text("[data-testid=sweep-preview]")
    page.click("[data-testid=sweep-preview] button[type=submit]")
    page.wait_for_url(re.compile(r"/compare\?group="))
    group = page.url.split("group=", 1)[1]
    with _api(ui_stack) as client:
        jobs = client.get("/jobs", params={"group": unquote(group)}).json()["items"]
        assert len(jobs) == 3
        for job in jobs:
            assert wait_for(client, f"/jobs/{job['id']}", timeout=300)["status"] == "done"
    WORLD["group"] = group
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url) if "/api/v1/" in r.url else None)
    page.reload()
    page.wait_for_selector("[data-testid='compare-train.loss'][data-series='3']")
    # boot.js asked for the session, the runs and the first chart's series before any module
    # ran; the modules took those answers and asked for none of them again
    first = [u for u in asked if "names=train.loss" in u]
    print("compare reload asked:", [u.split("/api/v1", 1)[1][:60] for u in asked])
    assert sum(u.endswith("/api/v1/session") for u in asked) == 1
    assert sum("/api/v1/jobs?group=" in u for u in asked) == 1
    assert len(first) == 1, first
    assert "/api/v1/metrics?group=" in first[0], first
    series = {
        name: page.get_attribute(f"[data-testid='compare-{name}']", "data-series")
        for name in ("train.loss", "val.loss", "val.accuracy")
    }
    assert set(series.values()) == {"3"}, series
    axis = page.locator("[data-brush=learning_rate]")
    axis.scroll_into_view_if_needed()
    box = axis.bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + 1)  # from the top end
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] * 0.3, steps=5)
    page.mouse.up()
    page.wait_for_function(
        "() => document.querySelector('[data-testid=compare]').dataset.visible < 3"
    )
    visible = int(page.get_attribute("[data-testid=compare]", "data-visible") or 0)
    dimmed = page.locator("svg.pcoords path.line.dim").count()
    off = page.locator("[data-testid=run-list] .run.off").count()
    charts = page.locator("[data-testid=compare] .u-over").count()
    print(
        f"compare: 3 runs, 3 series in each of {charts} charts; after brushing: "
        f"{visible} visible, {dimmed} dimmed, {off} off in the run list"
    )
    assert visible >= 1
    assert dimmed == 3 - visible
    assert off == 3 - visible
    assert "brush=" in page.url  # the view state is in the URL


def _sample_png(stack: Stack) -> bytes:
    with _api(stack) as client:
        found = client.get(
            f"/datasets/{WORLD['dataset']}/samples", params={"split": "val", "label": 4}
        ).json()
        return client.get(found["items"][0]["image_url"].removeprefix("/api/v1")).content


def test_classify_a_dropped_image(ui: UI, ui_stack: Stack) -> None:
    png = _sample_png(ui_stack)
    page = ui.page(f"/jobs/{WORLD['job']}?tab=classify")
    page.wait_for_selector("[data-testid=classify-drop]")
    page.select_option("#cl-k", "3")  # its options once had empty values: top_k was sent as ""
    page.evaluate(
        """(b64) => {
          const bin = atob(b64); const bytes = new Uint8Array(bin.length);
          for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
          const dt = new DataTransfer();
          dt.items.add(new File([bytes], "four.png", { type: "image/png" }));
          document.querySelector("[data-testid=classify-drop]").dispatchEvent(
            new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }));
        }""",
        base64.b64encode(png).decode(),
    )
    page.wait_for_selector("[data-testid=predictions] .bar-row")
    labels = (
        page.locator("[data-testid=predictions] .pred >> nth=0")
        .locator(".bar-row")
        .evaluate_all("rows => rows.map(r => r.dataset.label)")
    )
    print(f"classify: top-{len(labels)} of a dropped 4: {labels}")
    assert len(labels) == 3
    assert len(set(labels)) == 3


def test_classify_with_a_heatmap_overlay_and_the_layer_view(ui: UI, ui_stack: Stack) -> None:
    png = _sample_png(ui_stack)
    page = ui.page(f"/jobs/{WORLD['job']}?tab=classify")
    page.wait_for_selector("[data-testid=classify-drop]")
    page.select_option("[data-testid=explain-method]", "gradcam")
    page.evaluate(
        """(b64) => {
          const bin = atob(b64); const bytes = new Uint8Array(bin.length);
          for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
          const dt = new DataTransfer();
          dt.items.add(new File([bytes], "four.png", { type: "image/png" }));
          document.querySelector("[data-testid=classify-drop]").dispatchEvent(
            new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }));
        }""",
        base64.b64encode(png).decode(),
    )
    overlay = page.wait_for_selector("[data-testid=predictions] img[data-testid=overlay]")
    assert (overlay.get_attribute("src") or "").startswith("data:image/png;base64,")
    page.uncheck("[data-testid=overlay-toggle]")
    page.wait_for_selector("[data-testid=predictions] img[data-testid=input]")
    page.click("[data-testid=layer-view] >> nth=0")
    page.wait_for_selector("[data-testid=layers] [data-testid=layer-row]")
    rows = page.locator("[data-testid=layer-row]").count()
    print(f"classify: a Grad-CAM overlay shown and toggled; layer view of {rows} layers")
    assert rows >= 5


def test_evaluate_and_click_a_confusion_matrix_cell(ui: UI, ui_stack: Stack) -> None:
    page = ui.page(f"/jobs/{WORLD['job']}?tab=evaluate")
    page.click("[data-action=evaluate]")
    page.wait_for_url(lambda url: WORLD["job"] not in url and "/jobs/" in url)
    WORLD["evaluation"] = page.url.rsplit("/", 1)[1]
    page.wait_for_selector("[data-testid=evaluation][data-status=done]", timeout=180_000)
    page.wait_for_selector("[data-testid=confusion-matrix]")
    counts = page.locator("[data-cell]").evaluate_all("cells => cells.map(c => +c.dataset.count)")
    with _api(ui_stack) as client:
        val = client.get(f"/datasets/{WORLD['dataset']}").json()["splits"]["val"]["images"]
    top1 = page.inner_text("[data-testid=top1]")
    print(f"confusion matrix: {len(counts)} cells, {sum(counts)} images (val {val}); top-1 {top1}")
    assert len(counts) == 100
    assert sum(counts) == val
    page.click("[data-cell='3-3']")
    page.wait_for_selector("[data-testid=cell-images][data-cell='3-3'] img")
    shown = page.locator("[data-testid=cell-images] img").count()
    print(f"cell (3, 3): {shown} images shown")
    assert shown > 0
    page.click("text=row %")
    assert "norm=1" in page.url


def test_the_queue_page_says_why_a_job_waits(ui: UI, ui_stack: Stack) -> None:
    with _api(ui_stack) as client:
        resp = client.post(
            "/jobs",
            json={
                "dataset_id": WORLD["small"],
                "name": "needs-a-gpu",
                "network": "lenet",
                "gpu": "GPU-00000000-0000-0000-0000-000000000000",
                "hyperparameters": {"epochs": 1},
            },
        )
        assert resp.status_code == 202, resp.text
        WORLD["waiting"] = resp.json()["jobs"][0]["id"]
    page = ui.page("/queue")
    row = page.locator(f"[data-testid=queue-table] tr[data-job='{WORLD['waiting']}']")
    row.wait_for()
    reason = row.locator(".reason").inner_text()
    print(f"queue reason: {reason!r}")
    assert len(reason) > 10


def test_a_study_page_shows_trials_best_so_far_and_parallel_coordinates(
    browser: Any, ui_stack: Stack, tmp_path: Path
) -> None:
    """A 4-trial study of LeNet on 8x8 digits; its page, light and dark (docs/ui too)."""
    dataset = WORLD.get("small") or _small_dataset(ui_stack, tmp_path)
    with _api(ui_stack) as client:
        resp = client.post(
            "/studies",
            json={
                "name": "ui-study",
                "dataset_id": dataset,
                "network": "lenet",
                "hyperparameters": {"epochs": 3, "batch_size": 16, "seed": 1},
                "search_space": {
                    "learning_rate": {"type": "float", "low": 0.005, "high": 0.5, "log": True},
                    "momentum": {"type": "float", "low": 0.5, "high": 0.95},
                },
                "sampler": {"type": "random", "seed": 4},
                "pruner": {"type": "asha", "min_epochs": 1},
                "max_trials": 4,
                "max_concurrent": 1,
            },
        )
        assert resp.status_code == 202, resp.text
        study_id = resp.json()["id"]
        wait_until(
            lambda: client.get(f"/studies/{study_id}").json()["finished_at"],
            timeout=300,
            every=1,
            what="the study to finish",
        )
    out = Path(os.environ.get("DIGITS_UI_SCREENSHOTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    for theme in ("light", "dark"):
        ui = UI(browser, ui_stack, token=ui_stack.token, theme=theme)
        page = ui.page(f"/studies/{study_id}")
        page.wait_for_selector("[data-testid=trials-table] tbody tr")
        page.wait_for_selector("[data-chart=best] canvas")
        # a trial's line may be a point only (pruned at once), which is not "visible"
        page.wait_for_selector("svg.pcoords path.line", state="attached")
        page.wait_for_selector("[data-chart=trials] canvas")
        rows = page.locator("[data-testid=trials-table] tbody tr").count()
        lines = page.locator("svg.pcoords path.line").count()
        states = page.locator("[data-testid=trials-table] [data-state]").all_inner_texts()
        print(f"study page ({theme}): {rows} trials, {lines} lines, states {states}")
        assert rows == lines == 4
        assert set(states) <= {"complete", "pruned"}
        page.wait_for_timeout(400)  # charts settle
        page.screenshot(path=str(out / f"study-{theme}.png"), full_page=True)
        ui.close()
    WORLD["study"] = study_id


PAGES = [
    ("login", "/login", "#token", False),
    ("home", "/", "[data-testid=jobs-table] tbody tr", True),
    ("dataset-new", "/datasets/new", "[data-testid=dataset-new]", True),
    ("dataset", "/datasets/{dataset}", "[data-testid=histogram]", True),
    (
        "dataset-explore",
        "/datasets/{dataset}?tab=explore&label=3",
        "[data-testid=gallery] img",
        True,
    ),
    ("job-new", "/jobs/new?from={job}", "[data-testid=lr-preview] canvas", True),
    ("job", "/jobs/{job}", "[data-chart=acc] canvas", True),
    ("job-logs", "/jobs/{job}?tab=logs", "[data-testid=logs] pre div", True),
    ("evaluation", "/jobs/{evaluation}", "[data-testid=confusion-matrix]", True),
    # The axes' hit boxes: a run's line may be flat (every value equal), and Playwright
    # calls a zero-height path invisible.
    ("compare", "/compare?group={group}", "svg.pcoords rect.hit", True),
    ("queue", "/queue", "[data-testid=queue-table]", True),
    ("fleet", "/fleet", "[data-testid=workers] tbody tr", True),
    ("models", "/models", "[data-testid=models-table]", True),
    ("settings", "/settings", "[data-testid=tokens]", True),
]


def test_every_page_in_light_and_dark_with_keyboard_shortcuts(
    browser: Any, ui_stack: Stack, tmp_path: Path
) -> None:
    """Every page is ready in both themes (screenshots into the folder DIGITS_UI_SCREENSHOTS
    names, e.g. docs/ui: they take a third of this test's time, so only when asked for); `?`
    and `g q` work."""
    wanted = os.environ.get("DIGITS_UI_SCREENSHOTS")
    out = Path(wanted or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    with _api(ui_stack) as client:
        client.post(f"/jobs/{WORLD['job']}/pretrained", json={"name": "lenet-digits"})
    for theme in ("light", "dark"):
        for name, path, ready, signed_in in PAGES:
            ui = UI(browser, ui_stack, token=ui_stack.token if signed_in else None, theme=theme)
            page = ui.page(path.format(**WORLD))
            page.wait_for_selector(ready)
            if name == "compare":
                page.wait_for_selector("svg.pcoords path.line", state="attached")
            assert page.evaluate("document.documentElement.dataset.theme") == theme
            if wanted:
                page.wait_for_timeout(400)  # images decode, charts settle
                page.screenshot(path=str(out / f"{name}-{theme}.png"))
            ui.close()
    ui = UI(browser, ui_stack, token=ui_stack.token, theme="light")
    page = ui.page("/")
    page.wait_for_selector("[data-testid=home]")
    page.keyboard.press("?")
    page.wait_for_selector(".dialog >> text=Keyboard shortcuts")
    page.keyboard.press("Escape")
    page.keyboard.press("g")
    page.keyboard.press("q")
    page.wait_for_url(re.compile(r"/queue$"))
    page.keyboard.press("g")
    page.keyboard.press("h")
    page.wait_for_selector("[data-testid=home]")
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.dataset.search") is not None
    ui.close()
    if wanted:
        shots = sorted(out.glob("*.png"))
        print(f"screenshots: {len(shots)} in {out}")
        assert len(shots) >= 2 * len(PAGES)
