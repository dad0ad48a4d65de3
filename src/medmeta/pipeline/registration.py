"""Register one moving image onto one fixed image and write the results (``medmeta register``).

Inputs: two 2D images (PNG, JPEG, TIFF, DICOM...: read as grey in ``[0, 1]``; the moving image is resized
to the fixed image's grid when they differ) or two NIfTI volumes of one shape (windowed: ``ct`` or
``percentile``; registered in 3D). Optional moving labels (an integer label map on the moving grid) are
warped with nearest-neighbour sampling; optional fixed labels give Dice and HD95 of the warped labels.

Written into the output folder:

* ``warped.png`` / ``warped.nii.gz``: the moving image on the fixed grid;
* ``field.npy``: the displacement ``(ndim, *spatial)`` float32 in voxels of the fixed grid, channel ``i``
  along array axis ``i`` (``warped(x) = moving(x + field(x))``);
* ``checkerboard.png``: fixed and warped in alternating tiles; ``overlay.png``: fixed in green, warped in
  magenta (grey where they agree); for volumes, the middle slice of the last axis;
* ``warped_labels.png`` / ``.nii.gz`` with ``--labels``;
* ``summary.json``: method, seconds, folding fraction, and Dice/HD95 with ``--fixed-labels``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from medmeta._optional import optional_import
from medmeta.data.deformations import warp
from medmeta.data.readers import read_image
from medmeta.data.segmentation.io import Window, is_nifti, read_plane, read_volume
from medmeta.errors import DataError
from medmeta.eval.registration import folding_fraction, label_dice, label_hd95
from medmeta.methods.registration import REG_METHODS, RegistrationMethod
from medmeta.outputs import claim_output_folder

#: ``--method`` -> (registry name, options)
CLI_METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "instance_opt": ("instance_opt", {}),
    "demons": ("classical", {"transform": "demons"}),
    "bspline": ("classical", {"transform": "bspline"}),
    "affine": ("classical", {"transform": "affine"}),
    "identity": ("identity", {}),
}
MAX_VOXELS = {2: 4096 * 4096, 3: 256**3}


@dataclass(frozen=True)
class Loaded:
    """An image read for registration: ``(*spatial)`` float32 in ``[0, 1]`` and its NIfTI image (or None)."""

    data: np.ndarray
    nifti: Any


def _load(path: Path, window: Window) -> Loaded:
    if not path.is_file():
        raise DataError(f"{path} is not a file: give an image or NIfTI volume")
    if is_nifti(path):
        vol = read_volume(path, window)
        return Loaded(vol.data, vol.image)
    return Loaded(read_plane(path), None)


def _load_labels(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    if is_nifti(path):
        nib = optional_import("nibabel", "reading NIfTI label maps")
        arr = np.asarray(nib.load(str(path)).dataobj)
    else:
        arr = read_image(path)
        arr = arr[..., 0] if arr.ndim == 3 else arr
    arr = np.rint(arr).astype(np.int64)
    if arr.shape != shape:
        t = torch.from_numpy(arr)[None, None].float()  # (1, 1, *spatial)
        arr = F.interpolate(t, size=shape, mode="nearest")[0, 0].long().numpy()
    return arr


def build_method(name: str, *, steps: int | None, similarity: str, spatial_dims: int) -> RegistrationMethod:
    """The registration method behind a ``--method`` name.

    Raises:
        DataError: an unknown name.
    """
    if name not in CLI_METHODS:
        raise DataError(f"unknown registration method '{name}': choose one of {', '.join(CLI_METHODS)}")
    key, options = CLI_METHODS[name]
    options = {**options, "similarity": similarity, "spatial_dims": spatial_dims}
    if steps is not None:
        options["steps" if key == "instance_opt" else "iterations"] = steps
    return REG_METHODS[key].from_options(options)


def _png(arr: np.ndarray, path: Path) -> None:
    Image.fromarray((np.clip(arr, 0, 1) * 255).astype(np.uint8)).save(path)


def checkerboard(a: np.ndarray, b: np.ndarray, tiles: int = 8) -> np.ndarray:
    """``(H, W)`` image alternating `a` and `b` in a ``tiles x tiles`` checkerboard."""
    rows = (np.arange(a.shape[0]) * tiles // a.shape[0])[:, None]
    cols = (np.arange(a.shape[1]) * tiles // a.shape[1])[None, :]
    return np.where((rows + cols) % 2 == 0, a, b)


def register_files(
    fixed: Path,
    moving: Path,
    out: Path,
    *,
    labels: Path | None = None,
    fixed_labels: Path | None = None,
    method: str = "instance_opt",
    steps: int | None = None,
    similarity: str = "lncc",
    window: Window = "ct",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Register `moving` onto `fixed` and write the outputs listed in the module docstring.

    Returns:
        The summary written to ``summary.json``.

    Raises:
        DataError: unreadable inputs, a 2D image against a volume, volumes of different shapes, inputs over
            the size budget, or an unknown method.
        OutputError: `out` holds files and `overwrite` is off.
    """
    if fixed_labels is not None and labels is None:
        raise DataError("--fixed-labels scores the warped moving labels: pass --labels too")
    f_img, m_img = _load(fixed, window), _load(moving, window)
    ndim = f_img.data.ndim
    if m_img.data.ndim != ndim:
        raise DataError(
            f"fixed is {ndim}-D but moving is {m_img.data.ndim}-D: give two 2D images or two volumes"
        )
    for what, img in (("fixed", f_img), ("moving", m_img)):
        if int(np.prod(img.data.shape)) > MAX_VOXELS[ndim]:
            raise DataError(
                f"{what} image {img.data.shape} exceeds {MAX_VOXELS[ndim]} voxels: downsample it first"
            )
    shape = tuple(f_img.data.shape)
    moving_t = torch.from_numpy(m_img.data)[None, None]  # (1, 1, *spatial)
    if tuple(m_img.data.shape) != shape:
        if ndim == 3:
            raise DataError(
                f"volumes differ in shape: fixed {shape}, moving {m_img.data.shape}: resample the moving "
                "volume onto the fixed grid first"
            )
        moving_t = F.interpolate(moving_t, size=shape, mode="bilinear", align_corners=False)
    pairs = torch.cat([moving_t, torch.from_numpy(f_img.data)[None, None]], 1).float()  # (1, 2, *spatial)
    model = build_method(method, steps=steps, similarity=similarity, spatial_dims=ndim).eval()
    claim_output_folder(out, overwrite=overwrite)
    start = time.perf_counter()
    with torch.no_grad():
        ddf = model.register(pairs)  # (1, ndim, *spatial)
    seconds = time.perf_counter() - start
    warped = warp(pairs[:, :1], ddf)[0, 0].numpy()
    summary: dict[str, Any] = {
        "method": method,
        "fixed": str(fixed),
        "moving": str(moving),
        "shape": list(shape),
        "seconds": seconds,
        "folding_fraction": float(folding_fraction(ddf)[0]),
        "max_displacement": float(ddf.norm(dim=1).max()),
    }
    np.save(out / "field.npy", ddf[0].numpy().astype(np.float32))
    _write_image(warped, f_img.nifti, out / ("warped.nii.gz" if ndim == 3 else "warped.png"))
    fixed_2d, warped_2d = _middle(f_img.data), _middle(warped)
    _png(checkerboard(fixed_2d, warped_2d), out / "checkerboard.png")
    rgb = np.stack([warped_2d, fixed_2d, warped_2d], -1)  # magenta = warped, green = fixed
    Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8)).save(out / "overlay.png")
    if labels is not None:
        moving_labels = _load_labels(labels, shape)
        lab = torch.from_numpy(moving_labels)[None, None].float()  # (1, 1, *spatial)
        warped_labels = warp(lab, ddf, mode="nearest").round().long()[0]  # (1, *spatial)
        if ndim == 3:
            _write_labels_nifti(warped_labels[0].numpy(), f_img.nifti, out / "warped_labels.nii.gz")
        else:
            Image.fromarray(warped_labels[0].numpy().astype(np.uint16)).save(out / "warped_labels.png")
        if fixed_labels is not None:
            ref = torch.from_numpy(_load_labels(fixed_labels, shape))[None]  # (1, *spatial)
            summary["dice_before"] = float(label_dice(torch.from_numpy(moving_labels)[None], ref)[0])
            summary["dice"] = float(label_dice(warped_labels, ref)[0])
            summary["hd95"] = float(label_hd95(warped_labels, ref)[0])
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _middle(arr: np.ndarray) -> np.ndarray:
    return arr if arr.ndim == 2 else arr[:, :, arr.shape[2] // 2]


def _write_image(arr: np.ndarray, reference: Any, path: Path) -> None:
    if reference is None:
        _png(arr, path)
        return
    nib = optional_import("nibabel", "writing NIfTI volumes")
    nib.save(nib.Nifti1Image(arr.astype(np.float32), reference.affine), str(path))


def _write_labels_nifti(arr: np.ndarray, reference: Any, path: Path) -> None:
    nib = optional_import("nibabel", "writing NIfTI label maps")
    nib.save(nib.Nifti1Image(arr.astype(np.int16), reference.affine), str(path))
