"""Explanation pictures: overlays, panels and their file names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from medmeta.deploy import adapt, predict
from medmeta.explain.explanations import explain
from medmeta.explain.render import TILE, jet, overlay, safe_stem, write_panels
from tests._helpers.deploy import png_folder


def test_jet_maps_low_to_blue_and_high_to_red() -> None:
    c = jet(np.array([[0.0, 1.0]]))
    assert c[0, 0].argmax() == 2 and c[0, 1].argmax() == 0


def test_overlay_leaves_zero_saliency_pixels_unchanged() -> None:
    img = np.full((4, 4, 3), 100, np.uint8)
    sal = np.zeros((4, 4))
    sal[0, 0] = 1.0
    out = overlay(img, sal)
    assert (out[1:, :] == 100).all() and not (out[0, 0] == 100).all()


def test_safe_stem_keeps_names_readable_and_harmless() -> None:
    assert safe_stem("../../etc/scan (1).nii.gz") == "scan_1_"
    assert safe_stem("C:/x/y.dcm") == "y"


def test_explanations_give_a_panel_per_image_with_nearest_support(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    model = adapt(tiny_checkpoint, png_folder(tmp_path / "s"))
    result = predict(model, png_folder(tmp_path / "q", per_class=1))
    expl = explain(model, result, k=2)
    assert [e.predicted for e in expl] == result.predicted_names()
    for e in expl:
        assert e.technique == "Grad-CAM" and e.saliency.shape == (32, 32) and e.image.shape == (32, 32, 3)
        assert len(e.neighbours) == 2 and e.neighbours[0].distance <= e.neighbours[1].distance
        assert e.neighbours[0].file.split("/")[0] == e.neighbours[0].class_name
    paths = write_panels(expl, tmp_path / "out")
    assert [p.name for p in paths] == ["0000_0.png", "0001_0.png", "0002_0.png"]
    with Image.open(paths[0]) as im:
        assert im.width >= 4 * TILE and im.height > TILE
    q = torch.from_numpy(np.stack([e.image.transpose(2, 0, 1) for e in expl]))
    torch.testing.assert_close(q, result.images)
