"""A user's own segmentation folder (images/ + masks/, STEM_mask files, a manifest; binary or multi-label
with a label map) read as a source, on real DRIVE images laid out as a user would, and through the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medmeta.data.segmentation.sources import load_source, parse_spec
from medmeta.errors import DataError
from tests._helpers.cli import assert_one_line_error, run
from tests._helpers.segmentation import drive_folder, drive_pairs


@pytest.mark.data
def test_a_drive_folder_reads_as_one_binary_structure_in_every_layout(data_dir: Path, tmp_path: Path) -> None:
    folder = drive_folder(data_dir, tmp_path / "a")
    src = load_source(str(folder), data_dir, 64, min_pixels=5)
    (name,) = src.structures
    assert name == f"{folder}:foreground"
    s = src.structures[name]
    assert s.images.shape[1:] == (1, 64, 64) and len(s) == 4 and set(s.masks.unique().tolist()) == {0.0, 1.0}
    assert len(set(s.groups)) == 4  # one group per image

    flat = tmp_path / "b"
    flat.mkdir()
    for p in (folder / "images").iterdir():
        shutil.copy(p, flat / p.name)
        shutil.copy(folder / "masks" / p.name, flat / f"{p.stem}_mask.png")
    other = load_source(str(flat), data_dir, 64, min_pixels=5).structures[f"{flat}:foreground"]
    assert np.array_equal(other.masks.numpy(), s.masks.numpy())
    listed = tmp_path / "c"
    shutil.copytree(folder, listed / "data")
    rows = [
        "image,mask",
        *(f"data/images/{p.name},data/masks/{p.name}" for p in sorted((folder / "images").iterdir())),
    ]
    (listed / "manifest.csv").write_text("\n".join(rows) + "\n")
    third = load_source(str(listed), data_dir, 64, min_pixels=5).structures[f"{listed}:foreground"]
    assert np.array_equal(third.masks.numpy(), s.masks.numpy())

    tiled = load_source(str(folder), data_dir, 64, min_pixels=5, tiles={str(folder): 192})
    assert len(tiled.images) > 4 * 4  # a 565x584 image gives 3x4 tiles of 192 px


def test_multi_label_masks_use_the_label_map_and_errors_are_one_line(tmp_path: Path) -> None:
    root = tmp_path / "set"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 50), dtype=np.uint8)).save(root / "images" / f"{i}.png")
        mask = np.zeros((40, 50), dtype=np.uint8)
        mask[5:20, 5:20], mask[25:35, 30:45] = 1, 2
        Image.fromarray(mask).save(root / "masks" / f"{i}.png")
    (root / "labels.json").write_text(json.dumps({"1": "liver", "2": "spleen"}))
    src = load_source(str(root), tmp_path, 32, min_pixels=5)
    assert sorted(src.structures) == [f"{root}:liver", f"{root}:spleen"]
    assert parse_spec(f"{root}:spleen") == (str(root), ["spleen"])
    Image.fromarray(np.zeros((40, 50), dtype=np.uint8)).save(root / "images" / "lonely.png")
    with pytest.raises(DataError, match=r"no mask in .*masks with the stem of lonely\.png"):
        load_source(str(root), tmp_path, 32)
    with pytest.raises(DataError, match=r"folder .*nowhere not found"):
        parse_spec(str(tmp_path / "nowhere") + ":x")


@pytest.mark.data
def test_seg_train_and_evaluate_on_a_users_folder(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = drive_folder(data_dir, tmp_path / "mine", n=6)
    code, _, err = run(
        capsys, "seg", "train", "--train", "em", "--test", str(folder), "--method", "panet",
        "--option", "base=4", "--option", "depth=2", "--option", "feature_dim=8", "--epochs", "1",
        "--episodes-per-epoch", "2", "--image-size", "32", "--eval-episodes", "2",
        "--data-dir", str(data_dir), "--out", str(tmp_path / "run"), "--quiet",
    )  # fmt: skip
    assert code == 0, err
    rows = json.loads((tmp_path / "run" / "results.json").read_text())
    assert {r["structure"] for r in rows} == {f"{folder}:foreground"}
    code, _, err = run(
        capsys, "seg", "evaluate", "--model", "otsu", "--no-baselines", "--test", str(folder), "--shots", "1",
        "--episodes", "3", "--data-dir", str(data_dir), "--out", str(tmp_path / "otsu.json"),
    )  # fmt: skip
    assert code == 0, err
    assert [r["method"] for r in json.loads((tmp_path / "otsu.json").read_text())] == ["otsu"]
    code, _, err = run(
        capsys,
        "seg",
        "evaluate",
        "--model",
        "otsu",
        "--test",
        str(tmp_path / "missing"),
        "--data-dir",
        str(data_dir),
    )
    assert_one_line_error(code, err, "missing", "not found")


@pytest.mark.data
def test_segment_takes_a_support_folder_and_a_folder_of_images(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    support = drive_folder(data_dir, tmp_path / "support", n=2)
    todo = tmp_path / "todo"
    todo.mkdir()
    for image, _ in drive_pairs(data_dir, 4)[2:]:
        shutil.copy(image, todo / image.name)
    code, _, err = run(
        capsys, "segment", "--model", "support_mean", "--support", str(support), "--images", str(todo),
        "--out", str(tmp_path / "masks"),
    )  # fmt: skip
    assert code == 0, err
    written = sorted(p.name for p in (tmp_path / "masks").iterdir())
    assert [n for n in written if n.endswith("_mask.png")] == ["23_training_mask.png", "24_training_mask.png"]
    code, _, err = run(
        capsys, "segment", "--model", "otsu", "--images", str(todo), "--out", str(tmp_path / "x"),
    )  # fmt: skip
    assert_one_line_error(code, err, "--support FOLDER", "--support-images")
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run(
        capsys, "segment", "--model", "otsu", "--support", str(support), "--images", str(empty),
        "--out", str(tmp_path / "y"),
    )  # fmt: skip
    assert_one_line_error(code, err, "holds no image file")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


@pytest.mark.data
def test_seg_score_gives_each_images_dice_at_full_resolution(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    truth = tmp_path / "truth"
    truth.mkdir()
    todo = tmp_path / "todo"
    todo.mkdir()
    pairs = drive_pairs(data_dir, 4)
    for image, mask in pairs[2:]:
        shutil.copy(image, todo / image.name)
        with Image.open(mask) as m:
            m.convert("L").save(truth / f"{image.name[:-4]}.png")
    support = drive_folder(data_dir, tmp_path / "support", n=2)
    code, _, err = run(
        capsys, "segment", "--model", "otsu", "--support", str(support), "--images", str(todo),
        "--channel", "green", "--patch", "128", "--out", str(tmp_path / "pred"),
    )  # fmt: skip
    assert code == 0, err
    code, out, err = run(capsys, "seg", "score", "--pred", str(tmp_path / "pred"), "--truth", str(truth))
    assert code == 0, err
    for image, _ in pairs[2:]:
        stem = image.name[:-4]
        p = np.asarray(Image.open(tmp_path / "pred" / f"{stem}_mask.png")) > 0
        t = np.asarray(Image.open(truth / f"{stem}.png")) > 0
        assert f"{stem}: Dice {2 * (p & t).sum() / (p.sum() + t.sum()):.3f}" in out
    assert "2 image(s): Dice" in out
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(truth / f"{pairs[2][0].name[:-4]}.png", other / "unrelated.png")
    code, _, err = run(capsys, "seg", "score", "--pred", str(tmp_path / "pred"), "--truth", str(other))
    assert_one_line_error(code, err, "no prediction", "same stem")
