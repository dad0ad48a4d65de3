"""Export an adapted model to ONNX: uint8-range images in, class logits out, normalisation included.

The graph takes float32 images ``(N, C, H, W)`` scaled to ``[0, 1]`` at the model's input size (read and
resize them as `medmeta.deploy.inputs.read_model_image` does, then divide by 255) and returns logits
``(N, n_way)``; the class names, input size and normalisation are stored as ONNX metadata. It is written
with torch's TorchScript-based exporter (``dynamo=False``, opset 17), which needs only the ``onnx``
package; the dynamo exporter would also need ``onnxscript``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from medmeta._optional import optional_import
from medmeta.deploy.adapted import AdaptedModel
from medmeta.deploy.per_image_graph import PerImageGraph

OPSET = 17


class AdaptedGraph(nn.Module):
    """``images in [0, 1] (N, C, H, W) -> logits (N, n_way)``: normalisation + the adapted predictor."""

    def __init__(self, model: AdaptedModel) -> None:
        super().__init__()
        self.model = model
        self.method = model.method  # registered, so the tracer sees its weights as parameters
        # MAML family: batch norm with each image's own statistics, as in one-image-at-a-time prediction
        self.per_image = PerImageGraph(model.predictor) if model.per_image else None  # type: ignore[arg-type]
        norm = model.base.normalization
        self.mean: Tensor
        self.std: Tensor
        self.register_buffer("mean", torch.tensor(norm.mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(norm.std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: Tensor) -> Tensor:
        x = (images - self.mean) / self.std  # (N, C, H, W)
        if self.per_image is not None:
            return self.per_image(x)  # (N, n_way)
        return self.model.predictor.predict(x)  # (N, n_way)


def export_onnx(model: AdaptedModel, path: str | Path) -> Path:
    """Write `model` as an ONNX file at `path` (dynamic batch size).

    MAML-family models (which predict one image at a time) are exported through `PerImageGraph`: batch
    norm with each image's own statistics, so every row of a batched run equals that image's prediction.

    Raises:
        OptionalDependencyError: the ``onnx`` package is missing.
    """
    onnx = optional_import("onnx", "exporting to ONNX")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = AdaptedGraph(model).eval()
    example = model.support_images[:2].float() / 255.0  # (2, C, H, W)
    tmp = path.with_name(f".{path.name}.tmp")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes about constant prototypes and the legacy exporter
        torch.onnx.export(
            graph,
            (example,),
            str(tmp),
            dynamo=False,
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=OPSET,
        )
    proto = onnx.load(str(tmp))
    norm = model.base.normalization
    meta = {
        "medmeta.class_names": json.dumps(list(model.class_names)),
        "medmeta.input": json.dumps(
            {
                "shape": ["batch", model.base.channels, model.base.image_size, model.base.image_size],
                "scale": "pixel / 255",
                "resize": "centre crop to square, bilinear resize",
            }
        ),
        "medmeta.normalization": json.dumps({"mean": list(norm.mean), "std": list(norm.std)}),
        "medmeta.method": str(model.base.meta.get("method")),
    }
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(tmp))
    tmp.replace(path)
    return path


def onnx_logits(path: str | Path, images: np.ndarray) -> np.ndarray:
    """Run an exported model with ONNX Runtime: uint8 ``(N, C, H, W)`` -> logits ``(N, n_way)``."""
    ort = optional_import("onnxruntime", "running ONNX models")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = images.astype(np.float32) / 255.0
    (logits,) = session.run(["logits"], {"images": x})
    return np.asarray(logits)
