"""`medmeta benchmark --executor ray | slurm`: the local executor's numbers, a killed worker, missing extras."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from medmeta.bench import Protocol, run
from medmeta.bench.cells import TrainJob, enumerate_jobs
from medmeta.bench.executor import RayOptions, SlurmOptions, run_jobs
from medmeta.bench.jobs import Finished
from medmeta.bench.runner import Message
from medmeta.bench.schedule import Recorder, RunOutcome
from medmeta.bench.store import ResultsStore
from medmeta.cli.benchmark_cmd import cluster_options
from medmeta.cli.main import main
from medmeta.errors import ConfigError, TrainingError
from tests._helpers.bench import read_records, synthetic_folders, tiny_protocol, tiny_raw
from tests._helpers.paths import shared_data_dir

REAL = ["breastmnist_resaved", "pneumoniamnist_modified"]


def real_protocol() -> Protocol:
    """Two real 2-class domains and ProtoNet: 2 jobs (a training and its 2 cells) of a few seconds."""
    return tiny_protocol(REAL, methods=["protonet"], reference={"enabled": False})


def untimed(value: Any) -> Any:
    """`value` without its timings (keys naming seconds), at any depth."""
    if isinstance(value, dict):
        return {k: untimed(v) for k, v in value.items() if "seconds" not in k}
    if isinstance(value, list):
        return [untimed(v) for v in value]
    return value


def numbers(records: list[dict[str, Any]]) -> list[str]:
    """Records as JSON without their timings, in job order (as JSON, NaN equals NaN)."""
    return [json.dumps(untimed(r)) for r in records]


@pytest.fixture(scope="module")
def root() -> Path:
    path = shared_data_dir()
    if not (path / "classification").is_dir():
        pytest.skip(f"real data not found at {path}: set MEDMETA_DATA to the shared data folder")
    return path


@pytest.fixture(scope="module")
def local(root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    """The local executor's run of `real_protocol` (one process) and its records."""
    out = tmp_path_factory.mktemp("local") / "run"
    return out, run(real_protocol(), out, data_dir=root).outcome.records


@pytest.fixture(scope="module")
def ray_instance() -> Iterator[Any]:
    """A Ray on this machine for the module (2 CPUs, no dashboard), shut down afterwards."""
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'medmeta[distributed]')")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=128 * 1024**2, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def _parent(pid: int) -> int:
    """The parent process id of `pid` (0 when it is gone)."""
    try:
        return int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def busy_ray_workers() -> list[int]:
    """Process ids of this test's Ray actors that are running a job (Ray names an actor's process after
    the method it runs; the local Ray's raylet, their parent, was started by this process)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if not cmdline.startswith(b"ray::RayJobRunner.run"):
            continue
        ancestor = int(proc.name)
        while ancestor > 1 and ancestor != os.getpid():
            ancestor = _parent(ancestor)
        if ancestor == os.getpid():
            found.append(int(proc.name))
    return found


@pytest.mark.data
def test_ray_executor_gives_the_local_summary_byte_for_byte(
    root: Path, local: tuple[Path, list[dict[str, Any]]], ray_instance: Any, tmp_path: Path
) -> None:
    result = run(real_protocol(), tmp_path / "ray", data_dir=root, workers=2, executor=RayOptions())
    assert (tmp_path / "ray" / "summary.csv").read_bytes() == (local[0] / "summary.csv").read_bytes()
    assert numbers(result.outcome.records) == numbers(local[1])
    assert result.outcome.cells_run == 4 and result.outcome.jobs_rerun == 0


@pytest.mark.data
@pytest.mark.skipif(not Path("/proc/self/cmdline").is_file(), reason="finds Ray's workers through /proc")
def test_a_ray_worker_killed_mid_run_has_its_job_rerun_and_nothing_counted_twice(
    root: Path, local: tuple[Path, list[dict[str, Any]]], ray_instance: Any, tmp_path: Path
) -> None:
    out = tmp_path / "killed"
    killed: list[int] = []

    def kill_busy_workers(record: dict[str, Any]) -> None:
        if not killed:  # after the first cell: that job has a training and a cell recorded, the other runs
            killed.extend(busy_ray_workers())
            for pid in killed:
                os.kill(pid, signal.SIGKILL)

    result = run(
        real_protocol(), out, data_dir=root, workers=2, executor=RayOptions(), on_record=kill_busy_workers
    )
    assert killed, "no Ray worker was running a job at the first cell"
    assert result.outcome.jobs_rerun >= 1
    keys = [r["key"] for r in read_records(out)]
    assert len(keys) == len(set(keys)) == 4 + 2  # cells and trainings, each once
    assert (out / "summary.csv").read_bytes() == (local[0] / "summary.csv").read_bytes()
    assert numbers(result.outcome.records) == numbers(local[1])
    again = run(real_protocol(), out, data_dir=root, workers=2, executor=RayOptions())
    assert again.outcome.resumed and again.outcome.cells_run == 0 and again.outcome.cells_skipped == 4
    assert (out / "summary.csv").read_bytes() == (local[0] / "summary.csv").read_bytes()


@pytest.mark.data
def test_submitit_jobs_give_the_local_summary_byte_for_byte(
    root: Path, local: tuple[Path, list[dict[str, Any]]], tmp_path: Path
) -> None:
    pytest.importorskip("submitit", reason="submitit is not installed (pip install 'medmeta[distributed]')")
    out = tmp_path / "slurm"
    options = SlurmOptions(cluster="local", time_min=10)
    result = run(real_protocol(), out, data_dir=root, workers=2, executor=options)
    assert (out / "summary.csv").read_bytes() == (local[0] / "summary.csv").read_bytes()
    assert numbers(result.outcome.records) == numbers(local[1])
    assert len(list((out / "submitit").glob("*_log.out"))) == 2  # one submitit job per benchmark job


class LosingEngine:
    """An engine whose worker dies `deaths` times in job 0 after its training record, then runs it whole."""

    retries = 2

    def __init__(self, deaths: int, train: dict[str, Any], cell: dict[str, Any]) -> None:
        self.deaths, self.train, self.cell = deaths, train, cell
        self.submitted: list[Finished] = []
        self._messages: list[Message] = []

    def start(self) -> None:
        pass

    def free_slots(self) -> int:
        return 0 if self._messages else 1

    def submit(self, index: int, job: object, finished: Finished) -> None:
        self.submitted.append(finished)
        start: list[Message] = [("start", index, None), ("record", index, self.train)]
        if len(self.submitted) <= self.deaths:
            self._messages = [*start, ("lost", index, "killed")]
        else:
            self._messages = [*start, ("record", index, self.cell), ("done", index, None)]

    def poll(self, timeout: float) -> list[Message]:
        messages, self._messages = self._messages, []
        return messages

    def close(self) -> None:
        pass


@pytest.mark.parametrize("deaths", [2, 3])
def test_a_lost_job_runs_again_from_the_store_until_the_retries_run_out(deaths: int, tmp_path: Path) -> None:
    protocol = tiny_protocol(["a", "b"], methods=["protonet"], eval={"shots": [1]})
    job = next(j for j in enumerate_jobs(protocol) if isinstance(j, TrainJob))
    (cell,) = job.cells
    train, record = {"kind": "train", "key": job.key}, {"kind": "cell", "key": cell.key}
    store = ResultsStore(tmp_path)
    recorder = Recorder(store, RunOutcome(out=tmp_path, records=[], resumed=False), None, None)
    engine = LosingEngine(deaths, train, record)
    if deaths > engine.retries:
        with pytest.raises(TrainingError, match=r"lost 3 times \(killed\): rerun the same command to resume"):
            run_jobs(engine, [job], recorder, None)
        return
    assert run_jobs(engine, [job], recorder, None) == deaths
    assert engine.submitted[0] == Finished()
    assert engine.submitted[1].train is not None and engine.submitted[1].train["key"] == job.key
    assert [r["key"] for r in store.records] == [job.key, cell.key]  # the repeated training record: once


def test_executor_options_of_another_executor_are_refused() -> None:
    with pytest.raises(ConfigError, match="--ray-address is an option of another executor"):
        cluster_options("slurm", "auto", None, None, None, None, "slurm")
    with pytest.raises(ConfigError, match="--executor must be local, ray or slurm, got 'spark'"):
        cluster_options("spark", None, None, None, None, None, "slurm")
    assert cluster_options("slurm", None, "cpu", 30, 2, None, "slurm") == SlurmOptions("cpu", 30, 2)


def test_slurm_without_sbatch_is_one_line_naming_the_local_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("submitit", reason="submitit is not installed (pip install 'medmeta[distributed]')")
    monkeypatch.setenv("PATH", str(tmp_path))
    domains = synthetic_folders(tmp_path / "data")
    with pytest.raises(ConfigError, match=r"needs Slurm's sbatch on PATH.*--slurm-cluster local"):
        run(tiny_protocol(domains), tmp_path / "run", executor=SlurmOptions())
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("module", "executor"), [("ray", "ray"), ("submitit", "slurm")])
def test_a_missing_engine_is_one_line_naming_the_distributed_extra(
    module: str,
    executor: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now fails as if it were not installed
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_raw(synthetic_folders(tmp_path / "data"))))
    with pytest.raises(SystemExit) as info:
        main(["benchmark", str(config), "--out", str(tmp_path / "run"), "--quiet", "--executor", executor])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2
    assert len(err.splitlines()) == 1, err
    assert err == (
        f"error: --executor {executor} needs the optional package '{module}': "
        "run `pip install 'medmeta[distributed]'`"
    )
    assert not (tmp_path / "run").exists()
