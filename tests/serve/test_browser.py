"""End to end in headless Chromium: ``medmeta serve``, real brain MRI uploads, predictions and saliency shown.

Needs Debian's ``chromium`` (``/usr/bin/chromium``; ``.ci/run`` installs it) and the ``playwright`` package;
``playwright install`` is never run. The screenshot is saved as ``test-artifacts/serve_page.png``.
"""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import pytest

from tests._helpers.deploy import PATIENT, brain_files, grey, write_dicom
from tests._helpers.paths import REPO
from tests._helpers.serve import start_server

CHROMIUM = Path(os.environ.get("MEDMETA_CHROMIUM", "/usr/bin/chromium"))
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = REPO / "test-artifacts"


@pytest.mark.data
@pytest.mark.slow
def test_the_page_adapts_predicts_and_shows_saliency_in_chromium(
    data_dir: Path, tmp_path: Path, tiny_checkpoint: Path
) -> None:
    if not CHROMIUM.is_file():
        pytest.skip(
            f"chromium not found at {CHROMIUM}: `apt-get install chromium` (CI's .ci/run installs it)"
        )
    playwright = pytest.importorskip("playwright.sync_api", reason="needs the playwright package (dev extra)")
    support = brain_files(data_dir, "train", 5)
    queries = [f for files in brain_files(data_dir, "test", 2).values() for f in files]
    dicom = write_dicom(grey(queries[0]), tmp_path / "private.dcm")
    temp = tmp_path / "tmp"
    temp.mkdir()
    proc, url = start_server(tiny_checkpoint, temp)
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
            page = browser.new_page(accept_downloads=True, viewport={"width": 1300, "height": 900})
            page.goto(url)
            for _ in range(len(support) - 2):
                page.click("#add_class")
            for i, (cls, files) in enumerate(support.items()):
                page.fill(f"#class_name_{i}", cls)
                page.set_input_files(f"#support_{i}", [str(f) for f in files])
            page.set_input_files("#queries", [*map(str, queries), str(dicom)])
            page.click("#submit")
            page.wait_for_selector("#predictions", timeout=120_000)

            rows = page.locator("tr.prediction")
            assert rows.count() == len(queries) + 1
            predicted = page.locator("td.predicted").all_inner_texts()
            assert set(predicted) <= set(support), predicted
            saliency = page.locator("img.saliency")
            assert saliency.count() == len(queries) + 1
            for i in range(saliency.count()):
                assert saliency.nth(i).is_visible()
                assert saliency.nth(i).evaluate("img => img.complete && img.naturalWidth") == 160
            assert page.locator("img.neighbour").count() == 3 * (len(queries) + 1)
            assert "adapted to glioma_tumor (5), meningioma_tumor (5)" in page.inner_text("#summary")
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "serve_page.png"), full_page=True)

            with page.expect_download() as info:
                page.click("#download")
            rows_csv = list(csv.DictReader(Path(info.value.path()).read_text().splitlines()))
            assert [r["file"] for r in rows_csv] == [*(f.name for f in queries), "private.dcm"]
            assert [r["predicted_class"] for r in rows_csv] == predicted
            html = page.content()
            page.click("#end")
            page.wait_for_selector("#queries")
            browser.close()
        assert not list(temp.glob("medmeta-session-*")), "the ended session's folder must be deleted"
    finally:
        proc.terminate()
        log = proc.communicate(timeout=30)[0]
    assert "serving on http://127.0.0.1:" in log
    for secret in PATIENT.values():
        assert secret not in html and secret not in log, secret
    assert not any(temp.iterdir()), "nothing may remain in the server's temporary folder"
    shutil.rmtree(temp)
