"""What ``medmeta propagate`` does with files: a NIfTI volume and its partly labelled label map in, the
label map of every slice out.

The volume is read and windowed as for registration, each slice along ``axis`` squared and resized to
``size`` px (`medmeta.data.segmentation.volumes.to_square`, labels per label as masks), the labels are
propagated there (`medmeta.pipeline.propagation`), and the propagated slices are mapped back to the input's
grid (each label's map resized back, the most probable label per voxel). The labelled slices keep their
labels voxel for voxel. Written into the output folder:

* ``labels.nii.gz``: the label map of every slice, with the input volume's affine;
* ``summary.json``: strategy, method, the labelled slices, seconds and, with a reference label map, the
  Dice of every other slice (mean over its labels of at least 10 voxels) and their mean with a 95% CI.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from medmeta._optional import optional_import
from medmeta.data.registration import square_labels
from medmeta.data.segmentation.io import Window, read_volume
from medmeta.data.segmentation.volumes import from_square, to_square
from medmeta.errors import DataError
from medmeta.eval.metrics import mean_ci
from medmeta.methods.segmentation import SEG_METHODS
from medmeta.outputs import claim_output_folder, write_text_atomic
from medmeta.pipeline.propagation import (
    propagate_by_registration,
    propagate_by_segmentation,
    slice_dice,
)
from medmeta.pipeline.registration import build_method

Strategy = Literal["chain", "direct", "segmentation"]
STRATEGIES = ("chain", "direct", "segmentation")


def _read_labels(path: Path, shape: tuple[int, ...], what: str) -> np.ndarray:
    nib = optional_import("nibabel", "reading NIfTI label maps")
    if not path.is_file():
        raise DataError(f"{what} {path} is not a file: give a NIfTI label map")
    try:
        arr = np.asarray(nib.load(str(path)).dataobj)
    except Exception as exc:  # nibabel raises several types on bad files
        raise DataError(f"cannot read NIfTI {what} {path}: {exc}") from None
    if arr.shape != shape:
        raise DataError(
            f"{what} {path} is {arr.shape} but the volume is {shape}: give the volume's own labels"
        )
    return np.rint(arr).astype(np.int64)


def labelled_slices(labels: np.ndarray, axis: int, given: list[int] | None) -> list[int]:
    """`given` checked against the volume, or every slice along `axis` holding a label.

    Raises:
        DataError: a slice outside the volume, or no labelled slice at all.
    """
    depth = labels.shape[axis]
    if given:
        bad = [s for s in given if not 0 <= s < depth]
        if bad:
            raise DataError(
                f"--slices {bad} outside the volume's {depth} slices along axis {axis}: use 0-{depth - 1}"
            )
        return sorted(set(given))
    found = [s for s in range(depth) if np.take(labels, s, axis=axis).any()]
    if not found:
        raise DataError("the label map labels no slice: label a few slices, or name them with --slices")
    return found


def _back(predicted: np.ndarray, geo: Any, values: list[int]) -> np.ndarray:
    """``(size, size)`` label map -> the input slice's grid: each label's map resized back, argmax."""
    maps = np.stack([from_square((predicted == v).astype(np.float32), geo) for v in values])  # (L, H, W)
    return np.asarray(values, dtype=np.int64)[maps.argmax(0)]


def propagate_files(
    volume: Path,
    labels: Path,
    out: Path,
    *,
    slices: list[int] | None = None,
    strategy: Strategy = "chain",
    method: str = "instance_opt",
    steps: int | None = None,
    seg_steps: int = 100,
    size: int = 96,
    axis: int = 2,
    window: Window = "ct",
    reference: Path | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Propagate the labels of a few slices of `volume` to all of them; write ``labels.nii.gz`` and
    ``summary.json`` into `out` (see the module docstring).

    Raises:
        DataError: unreadable or mismatched inputs, an unknown strategy or method, bad slice indices.
        OutputError: `out` holds files and `overwrite` is off.
    """
    if strategy not in STRATEGIES:
        raise DataError(f"unknown strategy '{strategy}': choose one of {', '.join(STRATEGIES)}")
    if axis not in (0, 1, 2):
        raise DataError(f"--axis {axis}: a volume has axes 0, 1 and 2")
    if not volume.is_file():
        raise DataError(f"{volume} is not a file: give a NIfTI volume")
    vol = read_volume(volume, window)
    shape = tuple(vol.data.shape)
    given = _read_labels(labels, shape, "--labels")
    ref = _read_labels(reference, shape, "--reference") if reference is not None else None
    marks = labelled_slices(given, axis, slices)
    propagate = (
        (lambda x, y, m: propagate_by_segmentation(x, y, m, SEG_METHODS["finetune"].from_options({"steps": seg_steps, "lr": 3e-3}), 10))
        if strategy == "segmentation"
        else (lambda x, y, m: propagate_by_registration(x, y, m, build_method(method, steps=steps, similarity="lncc", spatial_dims=2), strategy))
    )  # fmt: skip
    claim_output_folder(out, overwrite=overwrite)
    planes = [np.take(vol.data, s, axis=axis) for s in range(shape[axis])]
    squared = [to_square(p, size) for p in planes]
    images = torch.from_numpy(np.stack([im for im, _ in squared]))[:, None]  # (D, 1, size, size)
    maps = torch.from_numpy(
        np.stack([square_labels(np.take(given, s, axis=axis), size) for s in range(len(planes))])
    )
    start = time.perf_counter()
    predicted = propagate(images, maps, marks).numpy()  # (D, size, size)
    seconds = time.perf_counter() - start
    values = sorted({0, *(int(v) for s in marks for v in np.unique(np.take(given, s, axis=axis)))})
    result = np.moveaxis(
        np.stack(
            [
                np.take(given, s, axis=axis) if s in marks else _back(predicted[s], squared[s][1], values)
                for s in range(len(planes))
            ]
        ),
        0,
        axis,
    )  # the input's shape
    nib = optional_import("nibabel", "writing NIfTI label maps")
    nib.save(nib.Nifti1Image(result.astype(np.int16), vol.image.affine), str(out / "labels.nii.gz"))
    summary: dict[str, Any] = {
        "volume": volume.name,
        "strategy": strategy,
        "method": None if strategy == "segmentation" else method,
        "labelled_slices": marks,
        "axis": axis,
        "size": size,
        "seconds": round(seconds, 2),
    }
    if ref is not None:
        dice = slice_dice(
            torch.from_numpy(np.moveaxis(result, axis, 0)), torch.from_numpy(np.moveaxis(ref, axis, 0)), marks
        )
        mean, half = mean_ci(dice.tolist())
        summary["dice"] = {
            "mean": mean,
            "ci95": half,
            "slices": int(dice.numel()),
            "per_slice": dice.tolist(),
        }
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2))
    return summary
