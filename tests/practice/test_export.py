"""ONNX export: ONNX Runtime gives the logits of the adapted model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medmeta.errors import ConfigError
from medmeta.practice import adapt
from medmeta.practice.export import export_onnx, onnx_logits
from tests.practice.test_adapted import png_folder, untrained_checkpoint

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


def test_maml_export_is_refused_with_the_reason(tmp_path: Path) -> None:
    model = adapt(untrained_checkpoint(tmp_path, "maml", {"n_way": 3}), png_folder(tmp_path / "s", size=16))
    with pytest.raises(ConfigError, match="normalises batch norm with each input batch's statistics"):
        export_onnx(model, tmp_path / "m.onnx")
