"""ONNX export: ONNX Runtime gives the logits of the adapted model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medmeta.deploy import adapt
from medmeta.deploy.export import export_onnx, onnx_logits
from tests._helpers.deploy import png_folder, untrained_checkpoint

pytest.importorskip("onnx", reason="ONNX export needs `pip install 'medmeta[export]'`")
pytest.importorskip("onnxruntime", reason="the parity check needs `pip install 'medmeta[export]'`")


def test_onnx_runtime_gives_the_same_logits_as_torch(tmp_path: Path, tiny_checkpoint: Path) -> None:
    import onnx

    model = adapt(tiny_checkpoint, png_folder(tmp_path / "s"))
    path = export_onnx(model, tmp_path / "m.onnx")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 3, 32, 32), dtype=np.uint8)  # another batch size than traced
    import torch

    expected = model.logits(torch.from_numpy(images)).numpy()
    got = onnx_logits(path, images)
    assert got.shape == (7, 3)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * float(np.abs(expected).max()))
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(meta["medmeta.class_names"]) == ["class0", "class1", "class2"]
    assert meta["medmeta.method"] == "protonet"


@pytest.mark.parametrize("method", ["maml", "maml_pp"])
def test_maml_family_export_gives_each_image_its_one_image_prediction(tmp_path: Path, method: str) -> None:
    """MAML-family models predict one image at a time (batch norm with that image's statistics); the
    exported graph reproduces that for a whole batch."""
    import torch

    model = adapt(untrained_checkpoint(tmp_path, method, {"n_way": 3}), png_folder(tmp_path / "s", size=16))
    path = export_onnx(model, tmp_path / "m.onnx")
    images = np.random.default_rng(1).integers(0, 256, (6, 3, 16, 16), dtype=np.uint8)
    expected = model.logits(torch.from_numpy(images)).numpy()  # one image at a time
    got = onnx_logits(path, images)
    assert got.shape == (6, 3)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * float(np.abs(expected).max()))
