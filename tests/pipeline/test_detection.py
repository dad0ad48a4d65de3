"""Detector checkpoints (checksum-guarded), detection outputs, and the protocol's summary statistics."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medmeta.data.boxes import read_box_csv, read_coco_json
from medmeta.errors import CheckpointError, DataError
from medmeta.methods.detection import DET_METHODS
from medmeta.pipeline.detection import markdown_table, parse_method, summarize
from medmeta.pipeline.detection_io import load_detector, save_detector, to_original, write_detections


def test_checkpoint_round_trip_and_tampered_weights_are_refused(tmp_path: Path) -> None:
    torch.manual_seed(0)
    det = DET_METHODS["proto"].from_options(["a", "b"], {"image_size": 64})
    save_detector(det, tmp_path / "ckpt", "proto", {"novel": ["c"]})
    loaded, meta = load_detector(tmp_path / "ckpt" / "detector.json")
    assert loaded.base_classes == ("a", "b") and meta["novel"] == ["c"] and type(loaded) is type(det)
    for k, v in det.model.state_dict().items():
        assert torch.equal(v, loaded.model.state_dict()[k]), k
    weights = tmp_path / "ckpt" / "detector.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    with pytest.raises(CheckpointError, match="does not match the checksum"):
        load_detector(tmp_path / "ckpt")


def test_detections_are_written_as_csv_and_coco_that_the_readers_read_back(tmp_path: Path) -> None:
    det = {
        "boxes": torch.tensor([[10.0, 20.0, 30.0, 50.0]]),
        "scores": torch.tensor([0.75]),
        "labels": torch.tensor([1]),
    }
    original = to_original(det, 0.5, (80, 70))
    torch.testing.assert_close(
        original["boxes"], torch.tensor([[20.0, 40.0, 60.0, 80.0]])
    )  # y clipped to H = 80
    write_detections(
        tmp_path,
        ["a.png", "b.png"],
        [(80, 70), (10, 10)],
        [
            original,
            {**det, "boxes": det["boxes"][:0], "scores": det["scores"][:0], "labels": det["labels"][:0]},
        ],
        ["x", "y"],
    )
    a_csv = read_box_csv(tmp_path / "boxes.csv")
    a_coco = read_coco_json(tmp_path / "boxes.coco.json")
    assert a_csv[0].labels == a_coco[0].labels == ("y",)
    assert a_csv[0].boxes.tolist() == a_coco[0].boxes.tolist() == [[20.0, 40.0, 60.0, 80.0]]
    assert [a.image.name for a in a_coco] == ["a.png", "b.png"] and a_coco[1].labels == ()


def test_summary_gives_the_mean_and_t_interval_over_draws() -> None:
    rows = [
        {
            "method": "tfa",
            "shots": 1,
            "draw": d,
            "novel_ap50": v,
            "novel_ap": v / 2,
            "base_ap50": 0.5,
            "base_ap": 0.25,
            "seconds": 1.0,
        }
        for d, v in enumerate([0.1, 0.2, 0.3])
    ]
    (row,) = summarize(rows)
    assert row["novel_ap50"] == pytest.approx(0.2)
    assert row["novel_ap50_ci"] == pytest.approx(
        4.302653 * 0.1 / 3**0.5, rel=1e-5
    )  # t(0.975, 2) * sd / sqrt(n)
    assert row["base_ap50_ci"] == pytest.approx(0.0)
    assert "| tfa | 1 | 3 | 20.0 ± 24.8 |" in markdown_table([row], ["WBC"])


def test_method_specs_carry_their_options_and_bad_specs_are_named() -> None:
    assert parse_method("tfa") == ("tfa", {})
    assert parse_method("tfa:rpn_steps=0,lr=0.01") == (
        "tfa:rpn_steps=0,lr=0.01",
        {"rpn_steps": 0, "lr": 0.01},
    )
    with pytest.raises(DataError, match="unknown detection method 'yolo'"):
        parse_method("yolo")
    with pytest.raises(DataError, match="needs KEY=VALUE"):
        parse_method("proto:rpn_steps")
