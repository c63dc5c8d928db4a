"""Headless Chromium on the live app: a sample digit and an uploaded PNG for the demo ViT, the run page's
patch tokens, the patch-attention page (overlay, clicked patch, rollout, norms, URL state) and the
rollout API."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

from tests.conftest import api_call, digit_png, pick_option

pytestmark = [pytest.mark.browser, pytest.mark.slow]

MODEL = os.environ.get("ATLAS_TEST_VIT_MODEL", "digits-vit")  # a folder name under the model roots


def test_vit_run_overlay_rollout_and_shared_url(live_app, worker, browser) -> None:
    from backend.model_refs import resolve_model
    from backend.settings import get_settings

    ref = resolve_model(MODEL, get_settings())  # fails with a clear message when the demo model is missing
    assert ref.kind == "image"
    ctx = browser.new_context(viewport={"width": 1300, "height": 1000})
    page = ctx.new_page()
    page.goto(live_app + "/")
    page.wait_for_selector("#new-prompts")
    pick_option(page, "new-model", f"{MODEL} (offline)", exact=True)

    # a file that is not an image gets a clear message; a real PNG and a sample digit are stored
    page.set_input_files("#new-upload input[type=file]",
                         files=[{"name": "notes.png", "mimeType": "image/png", "buffer": b"these are notes"}])
    page.wait_for_function("document.querySelector('#new-upload-status')?.textContent.includes('not a valid PNG')")
    page.set_input_files("#new-upload input[type=file]",
                         files=[{"name": "five.png", "mimeType": "image/png", "buffer": digit_png(5)}])
    page.wait_for_function("document.querySelector('#new-upload-status')?.textContent.includes('five.png: image stored')")
    pick_option(page, "new-samples", "Digit 3 (load_digits row 3, 8x8)", exact=True)
    page.keyboard.press("Escape")
    page.wait_for_function("document.querySelector('#new-upload-status')?.textContent.includes('1 sample image(s) chosen, 1 uploaded')")
    page.click("#new-submit")
    page.wait_for_url(re.compile(r".*/runs/[0-9a-f]{32}$"), timeout=30_000)
    run_id = page.url.rstrip("/").rsplit("/", 1)[-1]
    page.wait_for_selector(".status-done", timeout=180_000)

    # the run page's token view works with patch tokens
    page.wait_for_selector("#run-tokens .token", timeout=30_000)
    toks = page.locator("#run-tokens .token").all_inner_texts()
    assert toks[0] == "[CLS]" and toks[1] == "patch r0 c0"
    n_tok = len(toks)
    page.locator("#run-tokens .token").nth(1).click()
    page.wait_for_function("document.querySelector('#run-row .gtitle')?.textContent.includes('patch r0 c0')")

    page.click("#run-link-vit")
    page.wait_for_url(re.compile(rf".*/runs/{run_id}/vit"), timeout=20_000)
    page.wait_for_function("document.querySelector('#vit-overlay .gtitle')?.textContent.includes('CLS → patch')",
                           timeout=30_000)
    assert page.locator("#vit-overlay .layer-above image, #vit-overlay image").count() >= 1  # the image is drawn
    assert page.locator("#vit-overlay .hm, #vit-overlay .heatmaplayer image").count() >= 1  # with the overlay

    # images are named by file name, with the model's predicted class (from the run's stored logits)
    page.wait_for_function("document.querySelector('#vit-prediction')?.textContent.includes('five.png · predicted class')")
    assert re.search(r"predicted class: \d \(p = [01]\.\d\d\)", page.locator("#vit-prediction").inner_text())

    # two images in the picker; choose image 2 (the sample), the last layer, head 1, fusion min, click a patch
    last = ref.n_layers - 1
    page.click("#vit-image")
    assert page.get_by_role("option", name="image 1 · five.png").count() == 1
    page.get_by_role("option", name=re.compile(r"^image 2 · digit-3\.png$")).click()
    page.wait_for_function("document.querySelector('#vit-prediction')?.textContent.includes('digit-3.png')")
    assert page.locator("#vit-predicted-class").inner_text() == "3"  # the sample digit 3, classified
    pick_option(page, "vit-layer", f"layer {last}", exact=True)
    pick_option(page, "vit-head", "head 1", exact=True)
    page.click("#vit-fusion >> text=min")
    page.wait_for_function(f"document.querySelector('#vit-overlay .gtitle')?.textContent.includes('layer {last} head 1')")
    page.wait_for_function("document.querySelector('#vit-rollout .gtitle')?.textContent.includes('fusion min')")
    page.locator("#vit-overlay").scroll_into_view_if_needed()
    box = page.locator("#vit-overlay .nsewdrag").first.bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.9, box["y"] + box["height"] * 0.1)  # top-right patch
    page.wait_for_function("document.querySelector('#vit-patch-fig .gtitle')?.textContent.includes('from patch r0 c')")
    page.wait_for_function("window.location.search.includes('patch=')")
    page.locator("#vit-heads").scroll_into_view_if_needed()  # the small multiples pick a head on click
    box = page.locator("#vit-heads .nsewdrag").nth(2).bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_function(f"document.querySelector('#vit-patch-fig .gtitle')?.textContent.includes('layer {last} head 2')")
    url = page.url
    for part in ("image=1", f"layer={last}", "head=2", "fusion=min"):
        assert part in url
    patch_title = page.locator("#vit-patch-fig .gtitle").text_content()
    assert page.locator("#vit-norm-summary").count() == 1

    # a colleague opens the URL: same view
    other = browser.new_context(viewport={"width": 1300, "height": 1000})
    page2 = other.new_page()
    page2.goto(url)
    page2.wait_for_function("document.querySelector('#vit-patch-fig .gtitle')?.textContent.includes('from patch')",
                            timeout=60_000)
    assert page2.locator("#vit-patch-fig .gtitle").text_content() == patch_title
    assert "fusion min" in page2.locator("#vit-rollout .gtitle").text_content()
    ctx.close()
    other.close()

    # the rollout API
    status, body = api_call(live_app, f"/api/runs/{run_id}/rollout?image=1&fusion=mean&discard=0.9")
    assert status == 200 and body["fusion"] == "mean" and body["discard"] == 0.9
    assert body["discard_rule"] == "all_entries"  # vit-explain's rule by default
    status, variant = api_call(live_app, f"/api/runs/{run_id}/rollout?image=1&fusion=mean&discard=0.9&discard_rule=spare_cls")
    assert status == 200 and variant["discard_rule"] == "spare_cls"
    assert np.abs(np.asarray(variant["grid"]) - np.asarray(body["grid"])).max() > 1e-4
    grid = np.asarray(body["grid"])
    side = int(round((n_tok - 1) ** 0.5))
    assert grid.shape == (side, side) and np.all(grid >= 0) and grid.sum() < 1
    for query, message in (("image=1&fusion=median", "fusion"), ("image=7", "image"),
                           ("image=0&discard=1.5", "discard"), ("fusion=mean", "image"),
                           ("image=0&discard_rule=none", "discard_rule")):
        status, body = api_call(live_app, f"/api/runs/{run_id}/rollout?{query}")
        assert status == 400 and message in body["error"], (query, body)
