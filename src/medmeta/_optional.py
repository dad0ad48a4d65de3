"""Optional dependencies, imported on first use with an error that says what to install."""

from __future__ import annotations

import importlib
from types import ModuleType

# module name -> the pip extra that provides it
_EXTRAS: dict[str, str] = {
    "nibabel": "medmeta[nifti]",
    "pydicom": "medmeta[dicom]",
    "monai": "medmeta[monai]",
    "onnx": "medmeta[export]",
    "onnxruntime": "medmeta[export]",
    "starlette": "medmeta[serve]",
    "uvicorn": "medmeta[serve]",
    "python_multipart": "medmeta[serve]",
    "timm": "medmeta[pretrained]",
    "open_clip": "medmeta[pretrained]",
    "transformers": "medmeta[pretrained]",
    "huggingface_hub": "medmeta[pretrained]",
    "lightly": "medmeta[ssl]",
    "flwr": "medmeta[federated]",
    "opacus": "medmeta[federated]",
    "torchvision": "medmeta[detection]",
    "torchmetrics": "medmeta[detection]",
    "pycocotools": "medmeta[detection]",
    "SimpleITK": "medmeta[registration]",
    "ray": "medmeta[distributed]",
    "submitit": "medmeta[distributed]",
}


class OptionalDependencyError(ImportError):
    """An optional dependency is needed for the feature just used."""


def optional_import(module: str, feature: str) -> ModuleType:
    """Import `module` or raise an error naming the feature and the install command.

    Args:
        module: importable module name, for example ``"pydicom"``.
        feature: what the user tried to do, for example ``"reading DICOM files"``.

    Raises:
        OptionalDependencyError: the module is not installed.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        extra = _EXTRAS.get(module) or _EXTRAS.get(module.split(".")[0], module)
        raise OptionalDependencyError(
            f"{feature} needs the optional package '{module}': run `pip install '{extra}'`"
        ) from exc
