"""`medmeta benchmark --workers N`: same numbers as one process, resumable, errors and Ctrl-C handled."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image

from medmeta.bench import run
from medmeta.bench.protocol import Protocol
from medmeta.cli.main import main
from medmeta.data.synthetic import make_synthetic
from medmeta.errors import ConfigError
from tests._helpers.bench import read_records, synthetic_folders, tiny_protocol, tiny_raw
from tests._helpers.paths import REPO

WORKERS_2 = ("--quiet", "--workers", "2")


@pytest.fixture(scope="module")
def sequential(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], Path]:
    """Tiny folder domains and a finished one-process run of `tiny_protocol` on them."""
    root = tmp_path_factory.mktemp("workers")
    domains = synthetic_folders(root / "data")
    run(tiny_protocol(domains), root / "w1")
    return domains, root / "w1"


@pytest.fixture(scope="module")
def longer(sequential: tuple[list[str], Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-process run of `tiny_protocol` with `LONGER_TRAIN` (the runs that get signals)."""
    out = tmp_path_factory.mktemp("longer") / "w1"
    run(tiny_protocol(sequential[0], train=LONGER_TRAIN), out)
    return out


def summary(out: Path) -> str:
    return (out / "summary.csv").read_text()


def untimed(value: Any) -> Any:
    """`value` without its timings (keys naming seconds), at any depth."""
    if isinstance(value, dict):
        return {k: untimed(v) for k, v in value.items() if "seconds" not in k}
    if isinstance(value, list):
        return [untimed(v) for v in value]
    return value


def numbers(records: list[dict]) -> list[str]:
    """The records as JSON without their timings, in job order (as JSON, NaN equals NaN)."""
    return [json.dumps(untimed(r)) for r in records]


def test_two_workers_give_the_same_summary_and_records(
    sequential: tuple[list[str], Path], tmp_path: Path
) -> None:
    domains, w1 = sequential
    result = run(tiny_protocol(domains), tmp_path / "w2", workers=2)
    assert summary(tmp_path / "w2") == summary(w1)
    assert result.outcome.cells_run == 8 and result.outcome.trainings_run == 4
    assert numbers(result.outcome.records) == numbers(run(tiny_protocol(domains), w1).outcome.records)


def test_a_run_stopped_by_the_parent_resumes_with_workers(
    sequential: tuple[list[str], Path], tmp_path: Path
) -> None:
    domains, w1 = sequential
    out = tmp_path / "stopped"

    class Stop(Exception):
        pass

    def stop(record: dict) -> None:
        raise Stop

    with pytest.raises(Stop):
        run(tiny_protocol(domains), out, workers=2, on_record=stop)
    before = read_records(out)  # whole JSON lines only
    cells = [r for r in before if r["kind"] == "cell"]
    trained = [r for r in before if r["kind"] == "train"]
    assert len(cells) == 1 and len(trained) >= 1  # that cell's training at least
    again = run(tiny_protocol(domains), out, workers=2)
    assert again.outcome.resumed and again.outcome.cells_skipped == 1 and again.outcome.cells_run == 7
    assert again.outcome.trainings_run == 4 - len(trained)  # reported trainings are reused, in a worker
    assert summary(out) == summary(w1)


def _mismatched_reference_config(tmp_path: Path) -> Path:
    """A protocol whose held-out domain has train/test split folders with different classes: its
    supervised reference fails (ConfigError) inside the job, after the parent's checks passed."""
    domains = synthetic_folders(tmp_path / "data")
    ds = make_synthetic(image_size=16, channels=3, n_per_class=30)
    odd = tmp_path / "data" / "odd"
    for split, classes in (("train", (0, 1, 2)), ("test", (0, 1, 6))):
        for c in classes:
            folder = odd / split / ds.class_names[c]
            folder.mkdir(parents=True)
            for j, i in enumerate(ds.indices_of_class(c)):
                Image.fromarray(ds.images[i].transpose(1, 2, 0)).save(folder / f"{j}.png")
    raw = tiny_raw([*domains, str(odd)], methods=["protonet"])
    raw["data"]["held_out"] = [str(odd)]
    config = tmp_path / "odd.yaml"
    config.write_text(yaml.safe_dump(raw))
    return config


def test_an_error_in_a_worker_is_the_same_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _mismatched_reference_config(tmp_path)
    lines = []
    for workers in ("1", "2"):
        with pytest.raises(SystemExit) as info:
            main(
                ["benchmark", str(config), "--out", str(tmp_path / workers), "--quiet", "--workers", workers]
            )
        err = capsys.readouterr().err.strip()
        assert info.value.code == 2
        assert err.startswith("error:") and len(err.splitlines()) == 1, err
        lines.append(err)
    assert lines[0] == lines[1] and "differ from test classes" in lines[0]


def test_a_dead_worker_stops_the_run_and_a_clean_exit_is_reported() -> None:
    from types import SimpleNamespace

    from medmeta.bench.workers import _check_alive
    from medmeta.errors import TrainingError

    def procs(*codes: int | None) -> list:
        return [SimpleNamespace(exitcode=c, name=f"w{i}") for i, c in enumerate(codes)]

    assert _check_alive(procs(None, 0)) is False and _check_alive(procs(0, 0)) is True
    with pytest.raises(TrainingError, match=r"worker w1 exited with code -9 .*rerun the same command"):
        _check_alive(procs(None, -9))


def test_workers_must_be_positive(sequential: tuple[list[str], Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="workers must be at least 1"):
        run(tiny_protocol(sequential[0]), tmp_path / "x", workers=0)


def _workers_in_session(sid: int) -> list[str]:
    """Command lines of the multiprocessing workers in session `sid` (not its resource tracker)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(fields[3]) == sid and "spawn_main" in cmdline:  # after the name: state ppid pgrp session
            found.append(cmdline)
    return found


#: meta-training long enough (a few seconds per job) for a signal sent after the first record to land mid-run
#: on a fast machine too; the tiny protocol's whole run can finish within one polling interval
LONGER_TRAIN = {"epochs": 2, "episodes_per_epoch": 60, "val_episodes": 4, "threads": 1}


def _start_in_own_group(domains: list[str], tmp_path: Path, out: Path) -> subprocess.Popen[bytes]:
    """`medmeta benchmark --workers 2` on the tiny protocol with `LONGER_TRAIN` in its own process group (like
    a terminal job), returned once its first training is recorded (or it ended; stderr is piped)."""
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_raw(domains, train=LONGER_TRAIN)))
    proc = subprocess.Popen(
        [sys.executable, "-m", "medmeta.cli.main", "benchmark", str(config), "--out", str(out), *WORKERS_2],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        # a terminal job gets Ctrl-C; a shell's background job (`make test &`, nohup) starts with SIGINT
        # ignored, which Python then keeps ignoring: give the run the terminal's default
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    results = out / "results.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if results.is_file() and '"kind": "train"' in results.read_text():
            break
        time.sleep(0.02)
    return proc


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="lists processes through /proc (Linux)")
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_an_interrupt_stops_the_workers_and_the_rerun_finishes(
    how: str, sequential: tuple[list[str], Path], longer: Path, tmp_path: Path
) -> None:
    domains, _ = sequential
    out = tmp_path / "interrupted"
    proc = _start_in_own_group(domains, tmp_path, out)
    if how == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the parent and its workers
    else:
        proc.send_signal(signal.SIGTERM)  # the parent only: it must stop its workers
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    last = err.decode().strip().splitlines()[-1]
    assert last.startswith("interrupted: finished cells are kept in") and last.endswith("to resume"), err
    assert _workers_in_session(proc.pid) == [], "worker processes outlived the interrupted run"
    before = read_records(out)
    assert before and len([r for r in before if r["kind"] == "cell"]) < 8

    again = run(tiny_protocol(domains, train=LONGER_TRAIN), out, workers=2)
    assert again.outcome.cells_skipped + again.outcome.cells_run == 8
    assert summary(out) == summary(longer)


def _named_semaphores() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob("sem.*")}


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="POSIX named semaphores live in /dev/shm (Linux)")
def test_a_run_killed_with_its_whole_group_leaves_no_semaphore_behind(
    sequential: tuple[list[str], Path], longer: Path, tmp_path: Path
) -> None:
    """`kill -9 -- -PGID` skips every cleanup: the workers must share nothing that outlives them."""
    domains, _ = sequential
    out = tmp_path / "killed"
    before = _named_semaphores()
    proc = _start_in_own_group(domains, tmp_path, out)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # parent, workers and multiprocessing's resource tracker
    proc.communicate(timeout=30)
    assert _named_semaphores() - before == set()
    again = run(tiny_protocol(domains, train=LONGER_TRAIN), out, workers=2)
    assert again.outcome.resumed
    assert summary(out) == summary(longer)


def test_dry_run_names_the_workers(sequential: tuple[list[str], Path], tmp_path: Path, capsys) -> None:
    config = tmp_path / "tiny.yaml"
    protocol: Protocol = tiny_protocol(sequential[0])
    config.write_text(yaml.safe_dump(protocol.as_config()))
    with pytest.raises(SystemExit) as done:
        main(["benchmark", str(config), "--dry-run", "--workers", "2"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "2 workers: roughly" in out and "wall time (rough" in out
