"""`medmeta seg train|evaluate` and `medmeta segment` end to end on real data, and their one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from tests._helpers.cli import assert_one_line_error, run


def _train(capsys: pytest.CaptureFixture[str], root: Path, out: Path, method: str = "panet") -> Path:
    code, stdout, err = run(
        capsys, "seg", "train", "--config", str(Path(__file__).resolve().parents[2] / "configs" / "seg_setting2.yaml"),
        "--method", method, "--option", "base=4", "--option", "depth=2", "--option", "feature_dim=8",
        "--epochs", "1", "--episodes-per-epoch", "2", "--image-size", "32", "--eval-episodes", "2",
        "--data-dir", str(root), "--out", str(out), "--quiet",
    )  # fmt: skip
    assert code == 0, err
    assert "| panet | 1 |" in stdout and "mr:liver" in stdout
    return out / "best.json"


def test_train_evaluate_and_segment(
    capsys: pytest.CaptureFixture[str], seg_root: Path, tmp_path: Path
) -> None:
    ckpt = _train(capsys, seg_root, tmp_path / "run")
    rows = json.loads((tmp_path / "run" / "results.json").read_text())
    assert {r["structure"] for r in rows} == {
        f"{m}:{o}" for m in ("ct", "mr") for o in ("liver", "spleen", "kidney_left", "kidney_right")
    }
    assert (tmp_path / "run" / "results.md").is_file()

    code, _, err = run(
        capsys,
        "seg",
        "evaluate",
        "--model",
        str(ckpt),
        "--shots",
        "1",
        "--episodes",
        "2",
        "--out",
        str(tmp_path / "eval.json"),
    )
    assert code == 0, err
    methods = {r["method"] for r in json.loads((tmp_path / "eval.json").read_text())}
    assert methods == {"panet", "otsu", "support_mean"}  # baselines beside the method

    drive = seg_root / "segmentation" / "drive" / "training"
    code, _, err = run(
        capsys, "segment", "--model", str(ckpt), "--support-images", str(drive / "images" / "21_training.tif"),
        "--support-masks", str(drive / "1st_manual" / "21_manual1.gif"), "--images", str(drive / "images" / "23_training.tif"),
        "--channel", "green", "--out", str(tmp_path / "seg"),
    )  # fmt: skip
    assert code == 0, err
    with Image.open(tmp_path / "seg" / "23_training_mask.png") as m:
        assert m.size == (565, 584)
    assert (tmp_path / "seg" / "23_training_overlay.png").is_file()


def test_cli_errors_are_one_line(capsys: pytest.CaptureFixture[str], seg_root: Path, tmp_path: Path) -> None:
    code, _, err = run(capsys, "seg", "train", "--method", "otsu", "--out", str(tmp_path / "x"))
    assert_one_line_error(code, err, "trivial baseline", "seg evaluate --model otsu")
    code, _, err = run(capsys, "seg", "train", "--method", "unet", "--out", str(tmp_path / "x"))
    assert_one_line_error(code, err, "unknown segmentation method 'unet'")
    code, _, err = run(capsys, "seg", "evaluate", "--model", "otsu")
    assert_one_line_error(code, err, "pass --test or --config")
    code, _, err = run(capsys, "seg", "evaluate", "--model", str(tmp_path / "none.json"))
    assert_one_line_error(code, err, "not found")
    img = seg_root / "segmentation" / "isbi2012_em" / "train" / "image" / "0.png"
    code, _, err = run(
        capsys, "segment", "--model", "support_mean", "--support-images", str(img), "--support-images", str(img),
        "--support-masks", str(img), "--images", str(img), "--out", str(tmp_path / "o"),
    )  # fmt: skip
    assert_one_line_error(code, err, "2 support images but 1 support masks")
    code, _, err = run(
        capsys, "segment", "--model", "otsu", "--support-images", str(img), "--support-masks", str(img),
        "--images", str(tmp_path / "missing.png"), "--out", str(tmp_path / "o"),
    )  # fmt: skip
    assert_one_line_error(code, err, "missing.png")
    code, _, err = run(
        capsys, "segment", "--model", "otsu", "--support-images", str(img), "--support-masks", str(img),
        "--images", str(img), "--window", "bone", "--out", str(tmp_path / "o"),
    )  # fmt: skip
    assert code == 2 and "Invalid value for '--window'" in err, err  # typer checks the Literal choices
    code, _, err = run(
        capsys, "segment", "--model", "panet", "--support-images", str(img), "--support-masks", str(img),
        "--images", str(img), "--out", str(tmp_path / "o2"),
    )  # fmt: skip
    assert_one_line_error(
        code, err, "'panet' is a segmentation method that must be trained first", "seg train"
    )
    assert not (tmp_path / "o2").exists()


def test_a_thin_foreground_is_named_and_global_prototypes_segment_it(
    capsys: pytest.CaptureFixture[str], seg_root: Path, tmp_path: Path
) -> None:
    """DRIVE's vessels fill no pooling window, so ALPNet's foreground keeps its one global prototype against
    thousands of local background ones: `segment` says so, and --prototypes global adapts with PANet's rule."""
    import torch

    from medmeta.methods.segmentation.prototype import PrototypePredictor, use_global_prototypes
    from medmeta.pipeline.segmentation import load_segmenter
    from medmeta.tasks.segmentation import MaskSupport

    code, _, err = run(
        capsys, "seg", "train", "--config", str(Path(__file__).resolve().parents[2] / "configs" / "seg_setting2.yaml"),
        "--method", "alpnet", "--option", "base=4", "--option", "depth=2", "--option", "feature_dim=8",
        "--option", "local_window=4", "--epochs", "1", "--episodes-per-epoch", "2", "--image-size", "32",
        "--eval-episodes", "1", "--data-dir", str(seg_root), "--out", str(tmp_path / "run"), "--quiet",
    )  # fmt: skip
    assert code == 0, err
    ckpt = tmp_path / "run" / "best.json"
    drive = seg_root / "segmentation" / "drive" / "training"
    args = [
        "segment", "--model", str(ckpt), "--support-images", str(drive / "images" / "21_training.tif"),
        "--support-masks", str(drive / "1st_manual" / "21_manual1.gif"),
        "--images", str(drive / "images" / "23_training.tif"), "--channel", "green", "--patch", "96",
    ]  # fmt: skip
    code, stdout, err = run(capsys, *args, "--out", str(tmp_path / "trained"))
    assert code == 0, err
    assert "fills no pooling window" in err and "--prototypes global" in err and "note" not in stdout
    code, _, err = run(capsys, *args, "--prototypes", "global", "--out", str(tmp_path / "global"))
    assert code == 0 and "fills no pooling window" not in err, err
    with Image.open(tmp_path / "global" / "23_training_mask.png") as m:
        assert m.size == (565, 584)

    model, _, _ = load_segmenter(ckpt)
    model.eval()
    support = MaskSupport(torch.rand(2, 1, 32, 32), (torch.rand(2, 32, 32) > 0.5).float())
    support.masks[:, :16] = 1.0  # a filled half: the foreground has local prototypes
    with torch.no_grad():
        local = model.adapt(support)
        assert isinstance(local, PrototypePredictor) and local.fg.shape[0] > 1
        adapted = use_global_prototypes(model).adapt(support)
        assert isinstance(adapted, PrototypePredictor)
        assert adapted.fg.shape[0] == adapted.bg.shape[0] == 1
        feats = model.encoder(support.images)
        w = support.masks.unsqueeze(1)
        fg = (feats * w).sum((0, 2, 3)) / w.sum()  # masked average pooling by hand
        torch.testing.assert_close(adapted.fg[0], fg)
        query = torch.rand(1, 1, 32, 32)
        cos = torch.nn.functional.cosine_similarity(model.encoder(query), fg.view(1, -1, 1, 1), dim=1)
        torch.testing.assert_close(adapted.predict(query)[:, 1], model.options.scale * cos)

    code, _, err = run(
        capsys, *args, "--model", "otsu", "--prototypes", "global", "--out", str(tmp_path / "o")
    )
    assert_one_line_error(code, err, "global prototypes apply to the prototype segmenters")
    assert not (tmp_path / "o").exists()
