"""Shared by the deployment tests: a tiny meta-trained ProtoNet, untrained checkpoints, image files.

The checkpoint is trained in the test session (synthetic shapes, 32x32, a few episodes: seconds); no
weights are committed. Real images come from ``brain_tumor_mri`` (the ``data_dir`` fixture skips without it).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medmeta.config import make_config
from medmeta.data.synthetic import make_synthetic
from medmeta.pipeline import build_method_from_config, default_normalization, train_method
from medmeta.train.checkpoint import save_checkpoint
from tests._helpers import images

BRAIN = Path("classification") / "brain_tumor_mri"
PATIENT = {"PatientName": "Doe^Jane^Q", "PatientID": "PID-7731-XQ", "PatientBirthDate": "19610412"}


def train_tiny_protonet(out: Path) -> Path:
    """Meta-train ProtoNet (Conv4, 32x32 RGB) on 8 synthetic classes for 16 episodes; returns best.json."""
    names = make_synthetic(image_size=8).class_names
    cfg = make_config(
        {
            "data": {"train": ["synthetic:" + ",".join(names[:8])], "image_size": 32},
            "episodes": {"n_way": 4, "n_shot": 2, "n_query": 4},
            "model": {"backbone": "conv4"},
            "train": {"epochs": 1, "episodes_per_epoch": 16, "val_episodes": 4, "device": "cpu"},
        }
    )
    train_method(cfg, out_dir=out)
    return out / "best.json"


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_protonet(tmp_path_factory.mktemp("tiny_protonet"))


def brain_files(data_dir: Path, split: str, per_class: int, offset: int = 0) -> dict[str, list[Path]]:
    """The first `per_class` images (after `offset`) of each brain MRI class of `split`, sorted by name."""
    root = data_dir / BRAIN / split
    out = {}
    for cls in sorted(p.name for p in root.iterdir() if p.is_dir()):
        files = sorted((root / cls).iterdir())
        out[cls] = files[offset : offset + per_class]
    return out


def copy_support(data_dir: Path, dest: Path, per_class: int = 5, classes: int = 4) -> Path:
    """``dest/CLASS/*.jpg``: `per_class` brain MRI training images of the first `classes` classes."""
    for cls, files in list(brain_files(data_dir, "train", per_class).items())[:classes]:
        (dest / cls).mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copy(f, dest / cls / f.name)
    return dest


def grey(path: Path) -> np.ndarray:
    """A real image as a 2-D uint8 array."""
    with Image.open(path) as im:
        return np.asarray(im.convert("L"))


def write_dicom(pixels: np.ndarray, path: Path, **patient: str) -> Path:
    """An MR DICOM (12 significant bits, like a scanner's) holding `pixels` and the given patient fields."""
    return images.write_dicom(
        path, pixels.astype(np.uint16) * 16, modality="MR", bits_stored=12, fields={**PATIENT, **patient}
    )


def write_nifti(pixels: np.ndarray, path: Path) -> Path:
    """A 3-slice NIfTI volume whose middle slice is `pixels` (float32)."""
    import nibabel as nib

    vol = np.stack([np.zeros_like(pixels), pixels, np.zeros_like(pixels)], axis=-1).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(path))
    return path


def png_folder(root: Path, classes: int = 3, per_class: int = 3, size: int = 20) -> Path:
    """``root/classK/i.png``: grey images whose brightness depends on the class."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = np.clip(rng.normal(40 + 70 * c, 15, (size, size + 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / f"class{c}" / f"{i}.png")
    return root


def untrained_checkpoint(tmp_path: Path, method: str, options: dict[str, object] | None = None) -> Path:
    """A checkpoint of a freshly initialised `method` (what `train` writes, without the training)."""
    cfg = make_config(
        {
            "data": {"train": ["synthetic"], "image_size": 16},
            "method": {"name": method, "options": options or {}},
        }
    )
    torch.manual_seed(0)
    m = build_method_from_config(cfg, channels=3, spatial_dims=2)
    norm = default_normalization(3)
    meta = {
        "method": method,
        "config": cfg.model_dump(mode="json"),
        "image_shape": [3, 16, 16],
        "spatial_dims": 2,
        "normalization": {"mean": list(norm.mean), "std": list(norm.std)},
    }
    return save_checkpoint(tmp_path / method / "best", m.state_dict(), meta)
