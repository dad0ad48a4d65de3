"""Near-duplicate groups: planted copies are found, distinct images are not, real leakage is measured."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from medmeta.data.datasets import ImageDataset
from medmeta.data.near_duplicates import near_duplicates
from medmeta.data.registry import load_dataset
from tests._helpers.cli import assert_one_line_error, run


def planted() -> ImageDataset:
    """12 distinct smooth random images (4 classes, train/test), plus a copy of image 0 in test and a
    copy of image 1 shifted by one grey level in train."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (12, 1, 4, 4)).repeat(8, axis=2).repeat(8, axis=3)  # (12, 1, 32, 32)
    near = np.clip(base[1].astype(int) + 1, 0, 255)  # quantisation is coarse: still the same key
    images = np.concatenate([base, base[:1], near[None]]).astype(np.uint8)
    splits = np.array(["train"] * 6 + ["test"] * 6 + ["test", "train"])
    labels = np.array([i % 4 for i in range(12)] + [0, 1], dtype=np.int64)
    return ImageDataset(images, labels, ("a", "b", "c", "d"), "planted", splits=splits)


def test_planted_copies_are_grouped_and_counted_by_split() -> None:
    report = near_duplicates(planted())
    groups = sorted(sorted(g.tolist()) for g in report.groups)
    assert groups == [[0, 12], [1, 13]]
    assert report.test_with_train_copy == 1  # image 12 (test) copies image 0 (train)
    assert report.pairs_within_splits == 1  # images 1 and 13, both train
    assert "1 of 7 test images have a near-duplicate in train" in report.summary()


@pytest.mark.data
def test_brain_mri_test_split_leaks_into_train_and_blood_cells_barely(data_dir: Path) -> None:
    """The shared data README's facts: about 245 brain_tumor_mri test images have a near-copy in train;
    blood_pbc has 2 near-duplicate pairs."""
    brain = near_duplicates(load_dataset("brain_tumor_mri", root=data_dir, image_size=64, channels=1))
    assert 200 <= brain.test_with_train_copy <= 300, brain.summary()
    blood = near_duplicates(load_dataset("blood_pbc", root=data_dir, image_size=64, channels=1))
    assert blood.pairs_within_splits == 2 and blood.test_with_train_copy == 0, blood.summary()


@pytest.mark.data
def test_cli_prints_one_line_and_writes_the_groups(
    capsys: pytest.CaptureFixture[str], data_dir: Path, tmp_path: Path
) -> None:
    code, out, err = run(
        capsys,
        "data",
        "near-duplicates",
        "blood_pbc",
        "--data-dir",
        str(data_dir),
        "--out",
        str(tmp_path / "g.csv"),
    )
    assert code == 0, err
    assert "blood_pbc: 4 images in 2 near-duplicate groups" in out
    rows = list(csv.DictReader((tmp_path / "g.csv").open()))
    assert len(rows) == 4 and {r["group"] for r in rows} == {"0", "1"} and all(r["file"] for r in rows)
    code, _, err = run(capsys, "data", "near-duplicates", "blood_pbc", "--size", "8")
    assert_one_line_error(code, err, "--size must be at least 16")


def test_dedupe_keeps_the_training_copy_and_one_image_per_group() -> None:
    from medmeta.data.near_duplicates import dedupe

    ds = dedupe(planted())
    assert len(ds.images) == 12  # the test copy of image 0 and the second train copy of image 1 dropped
    assert near_duplicates(ds).groups == []
    assert list(ds.splits) == ["train"] * 6 + ["test"] * 6  # image 0 (train) kept, its test copy gone
    assert ds.class_names == planted().class_names  # labels keep their meaning


@pytest.mark.data
def test_deduplicated_brain_mri_test_split_has_no_copy_of_training(data_dir: Path) -> None:
    """252 of the 394 test images have a near-copy in train and more repeat inside test: after dedupe
    the loaded set has no near-duplicate left, and its test split is much smaller."""
    from medmeta.config import make_config
    from medmeta.data.registry import DomainSpec
    from medmeta.pipeline import load_domain

    spec = DomainSpec.parse("brain_tumor_mri")
    full = spec.load(root=data_dir, image_size=32, channels=1, dedupe=True)
    assert near_duplicates(full).groups == []
    cfg = make_config(
        {
            "data": {
                "train": ["blood_pbc"],
                "image_size": 32,
                "channels": 1,
                "data_dir": str(data_dir),
                "dedupe": True,
            }
        }
    )
    test = load_domain(DomainSpec.parse("brain_tumor_mri@test"), cfg)
    plain = DomainSpec.parse("brain_tumor_mri@test").load(root=data_dir, image_size=32, channels=1)
    assert len(plain.images) == 394 and len(test.images) < 200
