"""Cases as several views: the views of a volume (checked by hand on a known volume), a folder of cases and
its manifest, built from real AdrenalMNIST3D volumes, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medmeta.data.datasets import ImageDataset
from medmeta.data.multiview import load_case_folder, parse_views, views_from_volumes
from medmeta.data.registry import load_dataset
from medmeta.errors import DataError


def _volumes(shape: tuple[int, int, int] = (8, 8, 8)) -> ImageDataset:
    vol = np.arange(2 * np.prod(shape), dtype=np.int64).reshape(2, 1, *shape) % 251
    return ImageDataset(vol.astype(np.uint8), np.array([0, 1]), ("a", "b"), "toy")


def test_orthogonal_views_are_the_central_slices_along_each_axis() -> None:
    ds = _volumes()
    mv = views_from_volumes(ds, "orthogonal")
    v = ds.images[:, 0]
    assert mv.views == ("axial", "coronal", "sagittal") and mv.dataset.images.shape == (2, 3, 8, 8)
    np.testing.assert_array_equal(mv.dataset.images[1, 0], v[1, 4, :, :])
    np.testing.assert_array_equal(mv.dataset.images[1, 1], v[1, :, 4, :])
    np.testing.assert_array_equal(mv.dataset.images[1, 2], v[1, :, :, 4])
    np.testing.assert_array_equal(mv.dataset.labels, ds.labels)


def test_slices_are_evenly_spaced_in_the_central_half() -> None:
    mv = views_from_volumes(_volumes((9, 8, 8)), "slices:3")
    assert mv.views == ("slice2", "slice4", "slice6")  # linspace(9 // 4, 8 - 9 // 4, 3)
    np.testing.assert_array_equal(mv.dataset.images[0, 1], _volumes((9, 8, 8)).images[0, 0, 4])
    assert parse_views("slices:5") == ("slices", 5)


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [("axial", "orthogonal or slices:K"), ("slices:1", "from 2 to 16"), ("slices:x", "slices:K")],
)
def test_bad_view_specs_say_what_to_write(spec: str, fragment: str) -> None:
    with pytest.raises(DataError, match=fragment):
        parse_views(spec)


def test_orthogonal_views_need_cubic_one_channel_volumes() -> None:
    with pytest.raises(DataError, match="cubic"):
        views_from_volumes(_volumes((6, 8, 8)), "orthogonal")
    flat = ImageDataset(np.zeros((2, 3, 8, 8), np.uint8), np.array([0, 1]), ("a", "b"), "flat")
    with pytest.raises(DataError, match="folder of cases"):
        views_from_volumes(flat)


def _case_folder(data_dir: Path, root: Path, n: int = 6) -> tuple[Path, np.ndarray, np.ndarray]:
    """Real AdrenalMNIST3D test volumes written as CLASS/CASE/{axial,coronal,sagittal}.png."""
    ds = load_dataset("adrenalmnist3d", root=data_dir, image_size=28, channels=1).select_split("test")
    picks = np.concatenate([ds.indices_of_class(0)[: n // 2], ds.indices_of_class(1)[: n // 2]])
    mv = views_from_volumes(ds.subset(picks, relabel=False))
    for i, (views, label) in enumerate(zip(mv.dataset.images, mv.dataset.labels, strict=True)):
        case = root / ds.class_names[label] / f"case{i:02d}"
        case.mkdir(parents=True)
        for name, image in zip(mv.views, views, strict=True):
            Image.fromarray(image).save(case / f"{name}.png")
    return root, mv.dataset.images, mv.dataset.labels


@pytest.mark.data
def test_a_folder_of_cases_groups_each_cases_views(data_dir: Path, tmp_path: Path) -> None:
    root, images, labels = _case_folder(data_dir, tmp_path / "cases")
    mv = load_case_folder(root, 28)
    assert mv.views == ("axial", "coronal", "sagittal")  # sorted view names
    assert mv.dataset.class_names == ("hyperplasia", "normal")  # sorted class folders
    order = np.argsort([f"{'hyperplasia' if y == 1 else 'normal'}" for y in labels], kind="stable")
    np.testing.assert_array_equal(mv.dataset.images, images[order])  # 28 px in, 28 px out: unchanged pixels

    manifest = ["case,view,path,label"]
    for f in sorted(root.glob("*/*/*.png")):
        manifest.append(f"{f.parent.name},{f.stem},{f.relative_to(root)},{f.parent.parent.name}")
    (root / "manifest.csv").write_text("\n".join(manifest) + "\n")
    listed = load_case_folder(root, 28)
    np.testing.assert_array_equal(listed.dataset.images, mv.dataset.images)

    (root / "manifest.csv").write_text("case,view,path,label\nx,a,../outside.png,normal\n")
    with pytest.raises(DataError, match="outside"):
        load_case_folder(root, 28)
    (root / "manifest.csv").unlink()
    next(root.glob("normal/*/coronal.png")).unlink()
    with pytest.raises(DataError, match="has no view coronal"):
        load_case_folder(root, 28)
