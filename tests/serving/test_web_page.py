"""The web page of ``dogclf serve``, driven in Debian's headless Chromium through Playwright.

The browser is the system one (``/usr/bin/chromium``; Playwright downloads nothing) with networking features off,
and the server is the real app under uvicorn on 127.0.0.1 (see ``tests/serving/test_server.py``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import jpeg
from test_server import call, post_image, running

from dogclf.classifier import Classifier, load_model
from dogclf.data.folder import ClassInfo
from dogclf.model import HeadConfig, build_model

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
pytestmark = [
    pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"),
    pytest.mark.slow,
]


@pytest.fixture
def classifier(tmp_path: Path, tiny_spec: Any) -> Classifier:
    """A tiny model with an unknown threshold no answer can reach, so the page must say "none of the known breeds"."""
    from dogclf.artifact import save_model

    torch.manual_seed(0)
    net = build_model(tiny_spec, 6, weights=None, head=HeadConfig())
    with torch.no_grad():
        for parameter in net.head.parameters():
            parameter.mul_(30)
    classes = [ClassInfo(folder=f"{i:03d}.Breed_{i}", name=f"Breed {i}") for i in range(6)]
    calibration = {"temperature": 1.0, "unknown_threshold": 1.01}
    root = save_model(
        net.eval(),
        tmp_path / "model",
        spec=tiny_spec,
        classes=classes,
        head=HeadConfig().to_dict(),
        calibration=calibration,
    )
    return load_model(root)


def test_pick_a_photo_see_the_top_five_and_errors(classifier: Classifier, tmp_path: Path) -> None:
    photo = tmp_path / "dog.jpg"
    photo.write_bytes(jpeg(31, size=(120, 90)))
    with running(classifier) as (port, _), sync_api.sync_playwright() as playwright:
        status, _, answer = post_image(port, photo.read_bytes())
        assert status == 200
        assert answer["unknown"] is True
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            page.set_default_timeout(15_000)
            page.goto(f"http://127.0.0.1:{port}/")
            sync_api.expect(page.locator("#model")).to_have_text("tinynet model, 6 breeds")

            page.set_input_files("#file", str(photo))
            rows = page.locator("#results li")
            sync_api.expect(rows).to_have_count(5)
            labels = rows.locator(".label").all_text_contents()
            assert labels == [p["label"] for p in answer["predictions"]]
            top = answer["predictions"][0]["score"]
            sync_api.expect(rows.first.locator(".pct")).to_have_text(f"{100 * top:.1f}%")
            sync_api.expect(page.locator("#preview")).to_be_visible()
            sync_api.expect(page.locator("#unknown")).to_be_visible()
            sync_api.expect(page.locator("#unknown")).to_contain_text("none of the known breeds")
            sync_api.expect(page.locator("#error")).to_be_hidden()

            # A text file dropped on the page is sent as text/plain: the server's 415 is shown.
            dropped = page.evaluate_handle(
                """() => {
                    const transfer = new DataTransfer();
                    transfer.items.add(new File(["this is not a photo"], "notes.txt", {type: "text/plain"}));
                    return transfer;
                }"""
            )
            page.dispatch_event("#drop", "drop", {"dataTransfer": dropped})
            error = page.locator("#error")
            sync_api.expect(error).to_be_visible()
            sync_api.expect(error).to_contain_text("HTTP 415")
            sync_api.expect(error).to_contain_text("send one of: image/jpeg")
            sync_api.expect(rows).to_have_count(0)

            # A broken JPEG picked with the file input: the server's 400 is shown.
            page.set_input_files(
                "#file", files=[{"name": "broken.jpg", "mimeType": "image/jpeg", "buffer": photo.read_bytes()[:300]}]
            )
            sync_api.expect(error).to_contain_text("HTTP 400")
            sync_api.expect(error).to_contain_text("broken.jpg")
        finally:
            browser.close()
        assert call(port, "GET", "/ping")[0] == 200
