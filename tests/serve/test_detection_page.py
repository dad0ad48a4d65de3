"""The web page for a detector checkpoint: real BCCD smears uploaded, boxes drawn, CSV, nothing kept."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette", reason="the web page needs `pip install 'medmeta[serve]'`")
pytest.importorskip("torchvision", reason="detection needs `pip install 'medmeta[detection]'`")

from medmeta.pipeline.detection_io import save_detector
from medmeta.serve.app import create_app
from tests._helpers.detection import BASE, bccd_root, tiny_detector
from tests._helpers.serve import post_form, request, running, session_cookie, session_dirs

pytestmark = pytest.mark.data


def test_a_detector_page_draws_boxes_on_uploaded_smears_and_offers_them_as_csv(
    data_dir: Path, tmp_path: Path
) -> None:
    det = tiny_detector(data_dir)
    save_detector(det, tmp_path / "ckpt", "tfa", {"novel": ["WBC"]})
    smears = sorted((bccd_root(data_dir) / "JPEGImages").glob("*.jpg"))[:2]
    app = create_app(tmp_path / "ckpt", temp_root=tmp_path)
    with running(app) as url:
        page = request(url + "/")
        assert page.status == 200 and 'id="min_score"' in page.text and "class_name_0" not in page.text
        assert "finding Platelets, RBC" in page.text
        files = [("queries", p.name, p.read_bytes()) for p in smears]
        files.append(("queries", "notes.png", b"not an image"))
        reply = post_form(url + "/predict", {"min_score": "0.0"}, files)
        assert reply.status == 200, reply.text
        assert reply.text.count('class="detection"') == 2
        assert "notes.png: could not be read as an image" in reply.text
        overlays = reply.text.split('<img class="overlay" src="data:image/png;base64,')[1:]
        for uri, smear in zip(overlays, smears, strict=True):
            drawn = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split('"', 1)[0]))).convert("RGB"))
            original = np.asarray(Image.open(smear).convert("RGB"))
            assert drawn.shape == original.shape  # boxes drawn at the image's own resolution
            assert (drawn != original).any()  # ... and there are boxes (every score shown at 0.0)
        (folder,) = session_dirs(tmp_path)
        assert list(folder.iterdir()) == []  # uploads deleted once the boxes were computed
        csv_reply = request(url + "/download.csv", headers={"Cookie": session_cookie(reply)})
        assert 'filename="boxes.csv"' in csv_reply.headers["content-disposition"]
        lines = csv_reply.text.splitlines()
        assert lines[0] == "image,xmin,ymin,xmax,ymax,label,score"
        assert len(lines) > 2 and {ln.split(",")[5] for ln in lines[1:]} <= set(BASE)
        assert {ln.split(",")[0] for ln in lines[1:]} <= {p.name for p in smears}
        bad = post_form(url + "/predict", {"min_score": "2"}, files[:1])
        assert bad.status == 400 and "minimum score &#x27;2&#x27; is not a number from 0 to 1" in bad.text
