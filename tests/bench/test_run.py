"""`medmeta benchmark` end to end: files and numbers, resuming a killed run, the CLI."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from medmeta.bench import run
from medmeta.bench.protocol import parse_protocol
from medmeta.bench.summary import REFERENCE, REFERENCE_FEATURES
from medmeta.cli.main import main
from medmeta.eval.metrics import mean_ci
from medmeta.provenance import code_version
from tests._helpers.bench import read_records, synthetic_folders, tiny_protocol, tiny_raw
from tests._helpers.paths import REPO


@pytest.mark.data
def test_tiny_benchmark_on_real_data_writes_consistent_files(data_dir: Path, tmp_path: Path) -> None:
    folder = synthetic_folders(tmp_path / "mine")[0]  # a user-added folder domain
    domains = ["breastmnist_resaved", "pneumoniamnist_modified", folder]
    p = tiny_protocol(
        domains, data={"domains": domains, "held_out": ["breastmnist_resaved", folder], "image_size": 16}
    )
    out = tmp_path / "run"
    result = run(p, out, data_dir=data_dir)
    for name in ("results.jsonl", "summary.csv", "report.md", "report.html", "protocol.json"):
        assert (out / name).is_file(), name
    assert (
        len(list((out / "plots").glob("*.png"))) == 3 + 2
    )  # shots, curves, reliability + a confusion per domain
    records = read_records(out)
    cells = [r for r in records if r["kind"] == "cell"]
    assert len(cells) == 2 * 2 * 2  # methods x held-out domains x shots (one seed)
    breast = [r for r in cells if r["domain"] == "breastmnist_resaved"]
    assert {r["n_way"] for r in breast} == {2} and {r["episodes"] for r in breast} == {12}
    assert {tuple(r["train_domains"]) for r in records if r["kind"] == "train" and r["domain"] == folder} == {
        ("breastmnist_resaved", "pneumoniamnist_modified")
    }
    rows = list(csv.DictReader((out / "summary.csv").open()))
    # one per cell (one seed), the reference's features per held-out domain and shots, a reference per domain
    assert len(rows) == len(cells) + 2 * 2 + 2
    refs = {r["domain"]: r for r in records if r["kind"] == "reference"}
    for line in rows:
        if line["method"] == REFERENCE:
            continue
        if line["method"] == REFERENCE_FEATURES:  # the reference network in the cells' own episodes
            (few,) = [f for f in refs[line["domain"]]["few_shot"] if str(f["shots"]) == line["shots"]]
            mean, ci = mean_ci(np.asarray(few["per_episode"]["accuracy"]))
            assert float(line["accuracy"]) == pytest.approx(mean, abs=1e-6)
            assert float(line["accuracy_ci95"]) == pytest.approx(ci, abs=1e-6)
            assert few["episodes"] == 12 and line["accuracy_mark"] == ""
            same = [r for r in cells if r["domain"] == line["domain"] and str(r["shots"]) == line["shots"]]
            assert {(r["n_way"], r["n_query"]) for r in same} == {(few["n_way"], few["n_query"])}
            continue
        (rec,) = [
            r
            for r in cells
            if (r["method"], r["domain"], str(r["shots"])) == (line["method"], line["domain"], line["shots"])
        ]
        for metric in ("accuracy", "macro_f1", "ece"):
            mean, ci = mean_ci(np.asarray(rec["per_episode"][metric]))
            assert float(line[metric]) == pytest.approx(mean, abs=1e-6)
            assert float(line[f"{metric}_ci95"]) == pytest.approx(ci, abs=1e-6)
        assert 0.0 <= float(line["accuracy"]) <= 1.0
        assert np.sum(rec["confusion"]) == 12 * rec["n_way"] * rec["n_query"]
    for domain in ("breastmnist_resaved", folder):
        for k in ("1", "3"):
            marks = [x["accuracy_mark"] for x in rows if x["domain"] == domain and x["shots"] == k]
            assert marks.count("best") == 1 and len(marks) == 3  # two methods and the reference's features
    md = (out / "report.md").read_text()
    assert "## Accuracy % (± 95% CI)" in md and "| protonet |" in md and "| simpleshot |" in md
    assert REFERENCE in md and f"| {REFERENCE_FEATURES} |" in md and "Exact config" in md and "torch" in md
    assert {r["code"] for r in records} == {code_version()}  # which code produced each record
    assert f"{code_version()} ({len(records)} records)" in md
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 5
    assert "src='http" not in html and "<table>" in html
    assert result.outcome.cells_run == len(cells) and not result.outcome.resumed


def test_a_killed_run_resumes_to_the_same_summary(tmp_path: Path) -> None:
    domains = synthetic_folders(tmp_path / "data")
    raw = tiny_raw(domains)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(raw))
    full = run(tiny_protocol(domains), tmp_path / "full")
    total = len([r for r in full.outcome.records if r["kind"] == "cell"])

    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "medmeta.cli.main", "benchmark", str(config), "--out", str(out), "--quiet"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    results = out / "results.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if results.is_file() and '"kind": "cell"' in results.read_text():
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
    before = read_records(out)
    done = [r for r in before if r["kind"] == "cell"]
    assert 1 <= len(done) < total, "the run should be killed midway"

    resumed = run(tiny_protocol(domains), out)
    assert resumed.outcome.resumed
    assert resumed.outcome.cells_skipped == len(done)
    assert resumed.outcome.cells_run == total - len(done)
    after = read_records(out)
    assert after[: len(before)] == before  # finished cells are kept, not redone
    assert (out / "summary.csv").read_text() == (tmp_path / "full" / "summary.csv").read_text()


def test_an_interrupted_run_keeps_finished_cells_and_reuses_checkpoints(tmp_path: Path) -> None:
    domains = synthetic_folders(tmp_path / "data")
    p = tiny_protocol(domains, methods=["protonet"])

    class Stop(Exception):
        pass

    def stop_after_one(record: dict) -> None:
        raise Stop

    with pytest.raises(Stop):
        run(p, tmp_path / "run", on_record=stop_after_one)
    again = run(p, tmp_path / "run")
    assert again.outcome.trainings_run == 1  # the first domain's training was reused, the second's run
    run(p, tmp_path / "ref")
    assert (tmp_path / "run" / "summary.csv").read_text() == (tmp_path / "ref" / "summary.csv").read_text()


def test_every_registered_method_runs_with_domains_of_different_class_counts(tmp_path: Path) -> None:
    from medmeta.methods import METHODS

    domains = synthetic_folders(tmp_path / "data", groups=((0, 1, 2, 3), (4, 5), (6, 7, 8)))
    raw = tiny_raw(domains, methods=list(METHODS))
    raw["data"]["held_out"] = [domains[0]]  # 4-way tests after 2- and 3-way training episodes
    raw["train"] = {"epochs": 1, "episodes_per_epoch": 2, "val_episodes": 2, "threads": 1}
    raw["eval"]["episodes"] = 4
    raw["reference"]["enabled"] = False
    result = run(parse_protocol(raw), tmp_path / "run")
    cells = [r for r in result.outcome.records if r["kind"] == "cell"]
    assert sorted({r["method"] for r in cells}) == sorted(METHODS)
    assert {r["n_way"] for r in cells} == {4}
    assert all(0.0 <= r["metrics"]["accuracy"]["mean"] <= 1.0 for r in cells)


def test_another_config_in_the_same_folder_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from medmeta.errors import ConfigError

    domains = synthetic_folders(tmp_path / "data")
    run(tiny_protocol(domains, methods=["protonet"], reference={"enabled": False}), tmp_path / "run")
    other = tiny_raw(domains, methods=["protonet"], seeds=[1], reference={"enabled": False})
    with pytest.raises(ConfigError, match="different benchmark config"):
        run(
            tiny_protocol(domains, **{k: other[k] for k in ("methods", "seeds", "reference")}),
            tmp_path / "run",
        )
    config = tmp_path / "other.yaml"
    config.write_text(yaml.safe_dump(other))
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(["benchmark", str(config), "--out", str(tmp_path / "run"), "--quiet"])
    out, err = capsys.readouterr()
    assert info.value.code == 2
    assert err.strip().startswith("error:") and len(err.strip().splitlines()) == 1, err
    assert "different benchmark config" in err and "resuming" not in out + err  # refused, not resumed


def test_cli_dry_run_lists_cells_and_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    domains = synthetic_folders(tmp_path / "data")
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_raw(domains)))
    with pytest.raises(SystemExit) as done:
        main(["benchmark", str(config), "--dry-run"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "8 cells (2 methods x 2 held-out domains x 2 shots x 1 seeds)" in out
    assert "rough cost" in out and "supervised reference" in out and " s " in out
    assert not (Path.cwd() / "runs" / "bench" / "tiny").exists()

    config.write_text(yaml.safe_dump(tiny_raw(domains, eval={"shots": [1, 40]})))
    with pytest.raises(SystemExit) as info:
        main(["benchmark", str(config), "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert err.strip().startswith("error:") and len(err.strip().splitlines()) == 1
    assert "too few for 40-shot episodes" in err


def test_report_only_summarises_finished_cells_without_running_or_rewriting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    domains = synthetic_folders(tmp_path / "data")
    raw = tiny_raw(domains, methods=["protonet"], reference={"enabled": False})
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"

    class Stop(Exception):
        pass

    def stop_after_first_cell(record: dict) -> None:
        if record.get("kind") == "cell":
            raise Stop

    with pytest.raises(Stop):
        run(parse_protocol(raw), out, on_record=stop_after_first_cell)
    with (out / "results.jsonl").open("a") as f:
        f.write('{"kind": "cell", "key": "cut sho')  # a record a running benchmark is still writing
    before = (out / "results.jsonl").read_bytes()

    with pytest.raises(SystemExit) as done:
        main(["benchmark", str(config), "--out", str(out), "--report-only", "--quiet"])
    assert done.value.code == 0
    assert "1 of 4 cells finished" in capsys.readouterr().out
    assert (out / "results.jsonl").read_bytes() == before  # only read
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [(r["method"], r["shots"]) for r in rows] == [("protonet", "1")]
    assert "1 of 4 (partial results)" in (out / "report.md").read_text()
    assert "report written from the finished cells" in (out / "report.html").read_text()
    assert [r["kind"] for r in read_records_tolerant(out)] == ["train", "cell"]  # nothing was run

    with pytest.raises(SystemExit) as done:  # a dry run on the folder says what a resumed run has left
        main(["benchmark", str(config), "--out", str(out), "--dry-run"])
    assert done.value.code == 0
    assert f"{out} already holds 1 of 4 cells: a resumed run has roughly" in capsys.readouterr().out
    assert (out / "results.jsonl").read_bytes() == before

    with pytest.raises(SystemExit) as info:
        main(["benchmark", str(config), "--out", str(tmp_path / "empty"), "--report-only"])
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert err.strip().startswith("error: no results in") and len(err.strip().splitlines()) == 1


def read_records_tolerant(out: Path) -> list[dict]:
    lines = (out / "results.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.endswith("}")]


def test_a_folder_holding_someone_elses_files_is_refused_and_left_as_it_was(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """STYLE §8: a benchmark appends results.jsonl, writes protocol.json and removes checkpoints/JOB of a
    job cut short, so it writes only into a new or empty folder, or resumes its own run folder."""
    domains = synthetic_folders(tmp_path / "data")
    raw = tiny_raw(domains, methods=["protonet"], reference={"enabled": False}, eval={"shots": [1]})
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(raw))
    theirs = tmp_path / "theirs"
    (theirs / "checkpoints" / "protonet-0-a").mkdir(parents=True)
    (theirs / "checkpoints" / "protonet-0-a" / "notes.txt").write_text("precious")
    (theirs / "results.jsonl").write_text("my own lines\n")
    before = {p.relative_to(theirs): p.read_bytes() for p in theirs.rglob("*") if p.is_file()}

    with pytest.raises(SystemExit) as info:
        main(["benchmark", str(config), "--out", str(theirs), "--quiet"])
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert err.strip().startswith("error:") and len(err.strip().splitlines()) == 1, err
    assert "already holds files" in err and "protocol.json" in err and "choose another folder" in err
    assert {p.relative_to(theirs): p.read_bytes() for p in theirs.rglob("*") if p.is_file()} == before

    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(SystemExit) as info:
        main(["benchmark", str(config), "--out", str(link), "--quiet"])
    assert info.value.code == 2 and "symbolic link" in capsys.readouterr().err
    assert not (tmp_path / "elsewhere").exists()

    empty = tmp_path / "empty"
    empty.mkdir()
    run(parse_protocol(raw), empty)  # an empty folder is a new run ...
    first = read_records(empty)
    (empty / "my-notes.txt").write_text("added after the run")  # ... and stays its run with a user's note
    result = run(parse_protocol(raw), empty)
    assert result.outcome.cells_skipped == len([r for r in first if r["kind"] == "cell"]) > 0
    assert (empty / "my-notes.txt").read_text() == "added after the run"


def test_a_job_cut_short_has_its_checkpoints_removed_but_never_through_a_link(tmp_path: Path) -> None:
    from medmeta.errors import OutputError
    from medmeta.outputs import remove_run_subfolder

    run_dir = tmp_path / "run"
    job = run_dir / "checkpoints" / "protonet" / "seed0"
    job.mkdir(parents=True)
    (job / "best.json").write_text("{}")
    remove_run_subfolder(run_dir, job)  # the run's own folder of a job cut short
    assert not job.exists() and (run_dir / "checkpoints" / "protonet").is_dir()
    remove_run_subfolder(run_dir, job)  # missing: nothing to do

    outside = tmp_path / "outside" / "protonet" / "seed0"
    outside.mkdir(parents=True)
    (outside / "precious.txt").write_text("keep")
    (run_dir / "checkpoints" / "protonet").rmdir()
    (run_dir / "checkpoints" / "protonet").symlink_to(tmp_path / "outside" / "protonet")
    with pytest.raises(OutputError, match="symbolic link"):
        remove_run_subfolder(run_dir, job)
    assert (outside / "precious.txt").read_text() == "keep"

    (run_dir / "checkpoints" / "protonet").unlink()
    (run_dir / "checkpoints" / "protonet").write_text("a file")
    with pytest.raises(OutputError, match="is a file"):
        remove_run_subfolder(run_dir, job)
    with pytest.raises(OutputError, match="not inside the run folder"):
        remove_run_subfolder(run_dir, outside)
    assert outside.is_dir()
