"""``medmeta benchmark`` with ``task: segmentation``: a user's own folder of DRIVE images and masks as the
test structure, EM membranes for training; the cells equal `seg evaluate`'s on the same checkpoint and
episodes, a killed run resumes to the same table, and workers change nothing."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from medmeta.bench.seg_protocol import SegProtocol, load_any_protocol, parse_seg_protocol
from medmeta.bench.seg_run import run_seg_benchmark
from medmeta.eval.segmentation import evaluate_segmenter
from medmeta.pipeline.segmentation import load_seg_data, load_segmenter
from tests._helpers.cli import assert_one_line_error, run
from tests._helpers.segmentation import SMALL, drive_folder


def _raw(folder: Path, **changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "task": "segmentation",
        "name": "seg_tiny",
        "data": {"train": ["em"], "test": [str(folder)], "image_size": 32, "tiles": {"em": 128}},
        "methods": [{"name": "panet", "options": SMALL["panet"]}],
        "episodes": {"n_shot": 1, "n_query": 1},
        "train": {"epochs": 1, "episodes_per_epoch": 4, "val_episodes": 2, "device": "cpu", "threads": 1},
        "eval": {"episodes": 3, "shots": [1, 2], "n_query": 1},
        "seeds": [0],
    }
    return {**raw, **changes}


def _dice_columns(path: Path) -> list[tuple[str, ...]]:
    """summary.csv without the timing column (wall time differs between runs)."""
    with path.open() as f:
        return [tuple(v for k, v in row.items() if k != "adapt_seconds") for row in csv.DictReader(f)]


@pytest.mark.data
def test_a_user_folder_benchmark_scores_like_seg_evaluate_and_resumes(
    capsys: pytest.CaptureFixture[str], data_dir: Path, tmp_path: Path
) -> None:
    folder = drive_folder(data_dir, tmp_path / "my_fundus", n=6)
    config = tmp_path / "seg.yaml"
    config.write_text(yaml.safe_dump(_raw(folder)))
    out = tmp_path / "run"
    code, stdout, err = run(
        capsys, "benchmark", str(config), "--out", str(out), "--quiet", "--data-dir", str(data_dir)
    )
    assert code == 0, err
    assert "6 cells run, 0 reused" in stdout
    rows = list(csv.DictReader((out / "summary.csv").open()))
    structure = f"{folder}:foreground"
    assert [(r["method"], r["structure"], r["shots"]) for r in rows] == [
        (m, structure, k) for k in ("1", "2") for m in ("panet", "otsu", "support_mean")
    ]
    assert sum(r["mark"] == "best" for r in rows) == 2  # one best per (structure, shots) column
    assert "## Dice %" in (out / "report.md").read_text() and (out / "report.html").is_file()

    # the cell is `seg evaluate`'s number: the reloaded checkpoint on the episodes seeded eval.seed + seed
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    (train,) = [r for r in records if r["kind"] == "train"]
    model, cfg, _ = load_segmenter(out / train["checkpoint"])
    test = load_seg_data(cfg, with_train=False).test
    (row,) = evaluate_segmenter(model, test, [2], n_query=1, episodes=3, seed=12345, method="panet")
    cell = next(r for r in records if r["key"] == f"cell|panet|{structure}|2|0")
    assert np.isclose(np.mean(cell["per_episode"]["dice"]), row["dice"])
    assert np.isclose(
        float(next(r for r in rows if r["method"] == "panet" and r["shots"] == "2")["dice"]), row["dice"]
    )

    # nothing is rerun; the report is rewritten from the same records
    code, stdout, _ = run(
        capsys, "benchmark", str(config), "--out", str(out), "--quiet", "--data-dir", str(data_dir)
    )
    assert code == 0 and "0 cells run, 6 reused from an earlier run, 0 trainings" in stdout

    # a run killed after two cells resumes to the same table
    protocol = parse_seg_protocol(_raw(folder))
    killed = tmp_path / "killed"

    def stop_after_two(record: dict[str, Any]) -> None:
        if record["kind"] == "cell" and record["key"].endswith("|2|0"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_seg_benchmark(protocol, killed, data_dir=str(data_dir), on_record=stop_after_two)
    outcome = run_seg_benchmark(protocol, killed, data_dir=str(data_dir))
    assert outcome.cells_skipped == 2 and outcome.cells_run == 4 and outcome.trainings_run == 0
    code, _, err = run(
        capsys, "benchmark", str(config), "--out", str(killed), "--report-only", "--data-dir", str(data_dir)
    )
    assert code == 0, err
    assert _dice_columns(killed / "summary.csv") == _dice_columns(out / "summary.csv")


@pytest.mark.data
def test_two_workers_and_two_seeds_give_the_one_process_table(data_dir: Path, tmp_path: Path) -> None:
    folder = drive_folder(data_dir, tmp_path / "fundus", n=5)
    protocol = parse_seg_protocol(
        _raw(folder, seeds=[0, 1], eval={"episodes": 2, "shots": [1], "n_query": 1})
    )
    from medmeta.bench.seg_report import seg_summarize

    one = run_seg_benchmark(protocol, tmp_path / "one", data_dir=str(data_dir))
    two = run_seg_benchmark(protocol, tmp_path / "two", data_dir=str(data_dir), workers=2)
    rows_one = seg_summarize(protocol, one.records, one.structures)
    rows_two = seg_summarize(protocol, two.records, two.structures)
    assert [(r.method, r.seeds, r.episodes) for r in rows_one] == [
        ("panet", 2, 4),
        ("otsu", 2, 4),
        ("support_mean", 2, 4),
    ]
    assert [(r.method, r.dice, r.hd95) for r in rows_one] == [(r.method, r.dice, r.hd95) for r in rows_two]
    assert rows_one[0].seed_dice.keys() == {0, 1}


def test_segmentation_protocol_errors_are_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cases = [
        ({"methods": ["unet3000"]}, "unknown segmentation method 'unet3000'"),
        ({"data": {"train": ["em"], "test": []}}, "data.test is empty"),
        ({"seeds": [0, 0]}, "seeds must be distinct"),
        ({"methods": [{"name": "panet", "train": {"seed": 3}}]}, "top-level 'seeds'"),
        ({"methods": ["panet", "panet"]}, "used twice"),
        ({"domains": ["a"]}, "domains"),
    ]
    for change, fragment in cases:
        config = tmp_path / "bad.yaml"
        config.write_text(yaml.safe_dump(_raw(tmp_path / "x", **change)))
        code, _, err = run(capsys, "benchmark", str(config), "--out", str(tmp_path / "o"))
        assert_one_line_error(code, err, fragment)
    assert not (tmp_path / "o").exists()


def test_baselines_join_unless_listed_or_disabled(tmp_path: Path) -> None:
    p = parse_seg_protocol(_raw(tmp_path, methods=["panet", "otsu"]))
    assert [m.label for m in p.all_methods] == ["panet", "otsu", "support_mean"]
    assert [m.label for m in parse_seg_protocol(_raw(tmp_path, baselines=False)).all_methods] == ["panet"]
    assert isinstance(p, SegProtocol) and p.run_config(p.methods[0], 3).eval.seed == 12345 + 3
    assert p.fingerprint() == parse_seg_protocol(_raw(tmp_path, methods=["panet", "otsu"])).fingerprint()


def test_the_shipped_segmentation_benchmark_validates(
    capsys: pytest.CaptureFixture[str], seg_root: Path
) -> None:
    config = Path(__file__).resolve().parents[2] / "configs" / "bench_seg_cross.yaml"
    p = load_any_protocol(config)
    assert isinstance(p, SegProtocol) and p.seeds == [0, 1, 2]
    assert [m.label for m in p.all_methods][-2:] == ["otsu", "support_mean"]
    code, stdout, err = run(capsys, "benchmark", str(config), "--dry-run", "--data-dir", str(seg_root))
    assert code == 0, err
    assert "42 cells (7 methods x 1 test structures x 2 shots x 3 seeds), 15 trainings" in stdout.replace(
        "\n", " "
    )
