"""Output paths through the CLI (issue 16, items 3, 5, 6): an existing run or file is refused unless --resume /
--overwrite, special files and links at an output path are refused, and everything a run needs is checked
before its first training step; each refusal is one ``error:`` line with exit code 2."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from medmeta.data.synthetic import make_synthetic
from medmeta.train.checkpoint import load_checkpoint
from tests._helpers.cli import one_error_line, run
from tests._helpers.deploy import png_folder

SYN = make_synthetic(image_size=8).class_names
TINY = ["--train", "synthetic:" + ",".join(SYN[:6]), "--image-size", "16", "--n-way", "3", "--n-shot", "2"]
TINY += ["--n-query", "2", "--episodes-per-epoch", "4", "--eval-episodes", "3", "--quiet", "--device", "cpu"]


def assert_one_line_error(code: int, out: str, err: str, *fragments: str) -> None:
    assert "Traceback" not in err + out
    line = one_error_line(code, err)
    for f in fragments:
        assert f in line, f"{f!r} not in {line!r}"


def train(capsys: pytest.CaptureFixture[str], out: Path, *extra: str) -> tuple[int, str, str]:
    return run(capsys, "train", "--out", str(out), *TINY, *extra)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def sentinel(tmp_path: Path) -> Path:
    path = tmp_path / "outside" / "sentinel.txt"
    path.parent.mkdir()
    path.write_text("precious")
    return path


@pytest.fixture
def adapted(tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    support = png_folder(tmp_path / "support")
    out = tmp_path / "adapted"
    code, _, err = run(
        capsys, "adapt", "--model", str(tiny_checkpoint), "--support", str(support), "--out", str(out)
    )
    assert code == 0, err
    return out.with_name("adapted.json")


# item 3: existing runs and files


def test_train_over_an_existing_run_is_refused_naming_resume_and_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    code, _, err = train(capsys, out, "--epochs", "1")
    assert code == 0, err
    before = snapshot(out)
    code, stdout, err = train(capsys, out, "--epochs", "1")
    assert_one_line_error(code, stdout, err, str(out), "--resume", "--overwrite")
    assert stdout == ""  # refused before anything else is said
    assert snapshot(out) == before


def test_train_resume_continues_to_the_weights_of_an_uninterrupted_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = train(capsys, tmp_path / "whole", "--epochs", "2")
    assert code == 0, err
    code, _, err = train(capsys, tmp_path / "resumed", "--epochs", "1")
    assert code == 0, err
    code, _, err = train(capsys, tmp_path / "resumed", "--epochs", "2", "--resume")
    assert code == 0, err
    whole, _ = load_checkpoint(tmp_path / "whole" / "last.json")
    resumed, meta = load_checkpoint(tmp_path / "resumed" / "last.json")
    assert meta["epoch"] == 2 and whole.keys() == resumed.keys()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_train_overwrite_refuses_foreign_files_and_keeps_a_linked_sentinel(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keep = sentinel(tmp_path)
    out = tmp_path / "run"
    assert train(capsys, out, "--epochs", "1")[0] == 0
    (out / "notes.txt").symlink_to(keep)
    code, stdout, err = train(capsys, out, "--epochs", "1", "--overwrite")
    assert_one_line_error(code, stdout, err, "notes.txt")
    assert keep.read_text() == "precious" and (out / "notes.txt").is_symlink()
    (out / "notes.txt").unlink()
    (out / "results.json").write_text("stale")
    code, _, err = train(capsys, out, "--epochs", "1", "--overwrite", "--lr", "0.002")
    assert code == 0, err
    assert not (out / "results.json").exists()  # no test domain this time: the stale results are gone
    assert load_checkpoint(out / "best.json")[1]["config"]["train"]["lr"] == 0.002
    assert keep.read_text() == "precious"


def test_resume_and_overwrite_together_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, stdout, err = train(capsys, tmp_path / "run", "--resume", "--overwrite")
    assert_one_line_error(code, stdout, err, "--resume and --overwrite")


def test_seg_train_refuses_an_existing_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "best.json").write_text("{}")
    code, stdout, err = run(capsys, "seg", "train", "--method", "panet", "--out", str(tmp_path))
    assert_one_line_error(code, stdout, err, "--resume", "--overwrite")
    assert (tmp_path / "best.json").read_text() == "{}"


def test_the_demo_runs_again_over_its_own_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["demo", "--data-dir", str(tmp_path / "none"), "--out", str(tmp_path / "demo")]
    args += ["--episodes", "3", "--eval-episodes", "2", "--quiet"]
    for _ in range(2):
        code, _, err = run(capsys, *args)
        assert code == 0, err
    (tmp_path / "demo" / "mine.txt").write_text("mine")
    code, stdout, err = run(capsys, *args)
    assert_one_line_error(code, stdout, err, "mine.txt")
    assert (tmp_path / "demo" / "mine.txt").read_text() == "mine"


def test_adapt_refuses_an_existing_output_and_its_own_model(
    adapted: Path, tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    support = str(tmp_path / "support")
    before = adapted.read_bytes()
    code, stdout, err = run(
        capsys, "adapt", "--model", str(tiny_checkpoint), "--support", support, "--out", str(adapted)
    )
    assert_one_line_error(code, stdout, err, "already exists", "--overwrite")
    assert adapted.read_bytes() == before
    base = tiny_checkpoint.read_bytes()
    for flags in ([], ["--overwrite"]):
        code, stdout, err = run(
            capsys,
            "adapt",
            "--model",
            str(tiny_checkpoint),
            "--support",
            support,
            "--out",
            str(tiny_checkpoint),
            *flags,
        )
        assert_one_line_error(code, stdout, err, "is the --model checkpoint itself")
    assert tiny_checkpoint.read_bytes() == base
    code, _, err = run(
        capsys,
        "adapt",
        "--model",
        str(tiny_checkpoint),
        "--support",
        support,
        "--out",
        str(adapted),
        "--overwrite",
    )
    assert code == 0, err
    assert len(list(tmp_path.glob("adapted-*.safetensors"))) == 1


def test_predict_export_and_evaluate_refuse_an_existing_output_file(
    adapted: Path, tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    existing = tmp_path / "existing.out"
    existing.write_text("mine")
    images = str(tmp_path / "support" / "class0")
    commands = [
        ["predict", "--model", str(adapted), "--images", images, "--out", str(existing)],
        ["export", "--model", str(adapted), "--out", str(existing)],
        [
            "evaluate",
            "--model",
            str(tiny_checkpoint),
            "--test",
            "synthetic:" + ",".join(SYN[:3]),
            "--out",
            str(existing),
        ],
    ]
    for args in commands:
        code, stdout, err = run(capsys, *args)
        assert_one_line_error(code, stdout, err, "already exists", "--overwrite")
        assert existing.read_text() == "mine"
    code, _, err = run(capsys, *commands[0], "--overwrite")
    assert code == 0, err
    assert existing.read_text().startswith("file,")


# item 5: one line instead of a traceback, before training


def test_an_out_under_a_regular_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file.txt").write_text("x")
    code, stdout, err = train(capsys, tmp_path / "file.txt" / "run")
    assert_one_line_error(code, stdout, err, "is a file, not a folder")
    code, stdout, err = run(
        capsys,
        "evaluate",
        "--model",
        str(tmp_path / "m.json"),
        "--out",
        str(tmp_path / "file.txt" / "r.json"),
    )
    assert_one_line_error(code, stdout, err, "is a file, not a folder")


@pytest.mark.skipif(
    os.geteuid() == 0, reason="root writes into read-only folders; see the file.txt/run variant"
)
def test_a_read_only_out_folder_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code, stdout, err = train(capsys, locked / "run")
    finally:
        locked.chmod(0o700)
    assert_one_line_error(code, stdout, err, "cannot write")


def test_an_out_naming_an_existing_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "run").write_text("mine")
    code, stdout, err = train(capsys, tmp_path / "run")
    assert_one_line_error(code, stdout, err, "is a file, not a folder")
    assert (tmp_path / "run").read_text() == "mine"


def test_a_config_that_is_not_utf8_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(b"train:\n  epochs: 1\n# caf\xe9\n")
    code, stdout, err = run(capsys, "train", "--config", str(cfg), "--out", str(tmp_path / "o"))
    assert_one_line_error(code, stdout, err, "not UTF-8", "0xe9")


def test_a_config_naming_a_folder_says_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, err = run(capsys, "train", "--config", str(tmp_path), "--out", str(tmp_path / "o"))
    assert_one_line_error(code, stdout, err, "is a folder, not a YAML file")
    assert "not found" not in err


def test_a_negative_seed_is_one_line_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, stdout, err = train(capsys, tmp_path / "o", "--seed", "-1")
    assert_one_line_error(code, stdout, err, "train.seed=-1", "greater than or equal to 0")
    assert not (tmp_path / "o").exists()


def test_a_negative_benchmark_seed_is_one_line_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "bench.yaml"
    cfg.write_text("name: neg\ndata:\n  domains: [a, b]\nmethods: [protonet]\nseeds: [0, -1]\n")
    code, stdout, err = run(capsys, "benchmark", str(cfg), "--out", str(tmp_path / "b"), "--quiet")
    assert_one_line_error(code, stdout, err, "seeds must be non-negative", "-1")
    assert not (tmp_path / "b").exists()


def test_a_test_domain_too_small_for_the_test_episodes_fails_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    few_classes = ["--test", "synthetic:" + ",".join(SYN[6:8]), "--eval-n-way", "3", "--epochs", "1"]
    code, stdout, err = train(capsys, tmp_path / "a", *few_classes)
    assert_one_line_error(code, stdout, err, "2 class(es), fewer than eval.n_way=3")
    assert not (tmp_path / "a" / "best.json").exists()
    small = png_folder(tmp_path / "small", classes=3, per_class=3)
    few_images = ["--test", str(small), "--eval-n-shot", "2", "--epochs", "1"]
    code, stdout, err = train(capsys, tmp_path / "b", *few_images)
    assert_one_line_error(code, stdout, err, "'class0' has 3 images", "eval.n_shot + eval.n_query")
    assert not (tmp_path / "b" / "best.json").exists()


# item 6: special files and links at an output path


def test_a_fifo_at_an_output_path_is_refused_and_stays_a_fifo(
    adapted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    images = str(tmp_path / "support" / "class0")
    for args in (
        ["train", "--out", str(fifo), *TINY],
        ["predict", "--model", str(adapted), "--images", images, "--out", str(fifo), "--overwrite"],
        ["export", "--model", str(adapted), "--out", str(fifo), "--overwrite"],
        [
            "predict",
            "--model",
            str(adapted),
            "--images",
            images,
            "--out",
            str(tmp_path / "p.csv"),
            "--explain",
            str(fifo),
        ],
    ):
        code, stdout, err = run(capsys, *args)
        assert_one_line_error(code, stdout, err, "FIFO")
        assert fifo.is_fifo()


def test_a_symlink_at_an_output_path_is_refused_and_its_target_kept(
    adapted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keep = sentinel(tmp_path)
    link_file, link_dir = tmp_path / "link.csv", tmp_path / "link_dir"
    link_file.symlink_to(keep)
    link_dir.symlink_to(keep.parent, target_is_directory=True)
    images = str(tmp_path / "support" / "class0")
    for args in (
        ["train", "--out", str(link_dir), *TINY, "--overwrite"],
        ["predict", "--model", str(adapted), "--images", images, "--out", str(link_file), "--overwrite"],
        ["export", "--model", str(adapted), "--out", str(link_file), "--overwrite"],
        ["evaluate", "--model", str(adapted), "--out", str(link_file), "--overwrite"],
        [
            "adapt",
            "--model",
            str(adapted),
            "--support",
            str(tmp_path / "support"),
            "--out",
            str(tmp_path / "link"),
        ],
    ):
        if args[0] == "adapt":
            (tmp_path / "link.json").symlink_to(keep)
        code, stdout, err = run(capsys, *args)
        assert_one_line_error(code, stdout, err, "symbolic link")
        assert keep.read_text() == "precious" and sorted(os.listdir(keep.parent)) == ["sentinel.txt"]
    assert link_file.is_symlink() and link_dir.is_symlink()


def test_segmentation_outputs_are_claimed_before_anything_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = str(tmp_path / "missing.png")
    done = tmp_path / "done"
    done.mkdir()
    (done / "earlier_mask.png").write_bytes(b"mine")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    segment = ["segment", "--model", "otsu", "--support-images", missing, "--support-masks", missing]
    segment += ["--images", missing]
    for out, fragments in ((done, ("already holds files", "--overwrite")), (fifo, ("FIFO",))):
        code, stdout, err = run(capsys, *segment, "--out", str(out))
        assert_one_line_error(code, stdout, err, *fragments)
    assert (done / "earlier_mask.png").read_bytes() == b"mine" and fifo.is_fifo()
    (tmp_path / "rows.json").write_text("mine")
    code, stdout, err = run(
        capsys, "seg", "evaluate", "--model", "otsu", "--out", str(tmp_path / "rows.json")
    )
    assert_one_line_error(code, stdout, err, "already exists", "--overwrite")
    assert (tmp_path / "rows.json").read_text() == "mine"


def test_predict_refuses_a_non_empty_explain_folder_without_overwrite(
    adapted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    explain = tmp_path / "explain"
    explain.mkdir()
    (explain / "mine.png").write_bytes(b"mine")
    images = str(tmp_path / "support" / "class0")
    args = ["predict", "--model", str(adapted), "--images", images, "--out", str(tmp_path / "p.csv")]
    code, stdout, err = run(capsys, *args, "--explain", str(explain))
    assert_one_line_error(code, stdout, err, "--explain", "already holds files")
    assert not (tmp_path / "p.csv").exists()
    code, _, err = run(capsys, *args, "--explain", str(explain), "--overwrite")
    assert code == 0, err
    assert (explain / "mine.png").read_bytes() == b"mine" and len(list(explain.iterdir())) == 4


def test_the_demo_removes_only_its_own_earlier_self_supervised_stage(tmp_path: Path) -> None:
    from medmeta.cli.demo import _clear_representation_stage
    from medmeta.errors import OutputError

    out = tmp_path / "demo"
    (out / "ssl").mkdir(parents=True)
    for name in ("best.json", "best-0123abcd.safetensors", "history.json", "config.yaml"):
        (out / "ssl" / name).write_text("x")
    (out / "representations.json").write_text("[]")
    (out / "ssl" / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match=r"notes\.txt"):
        _clear_representation_stage(out)
    assert (
        sorted(p.name for p in (out / "ssl").iterdir())[0] == "best-0123abcd.safetensors"
    )  # nothing removed
    (out / "ssl" / "notes.txt").unlink()
    _clear_representation_stage(out)
    assert not (out / "ssl").exists() and not (out / "representations.json").exists()


def test_progress_goes_to_stderr_as_plain_lines_when_it_is_not_a_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run whose stderr is a log file still says what it is doing; --quiet silences only the progress."""
    args = [
        "train",
        "--train",
        "synthetic",
        "--image-size",
        "16",
        "--n-way",
        "3",
        "--n-shot",
        "1",
        "--n-query",
        "2",
    ]
    args += ["--epochs", "2", "--episodes-per-epoch", "2", "--eval-episodes", "2", "--device", "cpu"]
    code, out, err = run(capsys, *args, "--out", str(tmp_path / "a"))
    assert code == 0, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert any(ln.startswith("epoch 1/2: 2/2") for ln in lines), lines
    assert "epoch" not in out  # results and progress are separate streams
    code, _, err = run(capsys, *args, "--out", str(tmp_path / "b"), "--quiet")
    assert code == 0 and "epoch" not in err
