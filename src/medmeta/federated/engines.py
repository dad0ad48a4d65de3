"""Where a federated job runs: Flower's simulation engine (one process, Ray actors as sites), or a
SuperLink, one SuperNode per site and ``flwr run``, all separate processes talking gRPC over loopback.

The processes engine is a real deployment on one machine: the SuperLink runs the ServerApp in its own
subprocess, with no data directory in its environment; each SuperNode knows only its own site
(``--node-config "site='NAME' data-dir='DIR'"``). Outside tests, the same commands run across machines
(docs/federated.md).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from medmeta._optional import OptionalDependencyError, optional_import
from medmeta.errors import MedmetaError
from medmeta.federated.protocol import Job

FEATURE = "federated learning (Flower)"
#: a whole job (all rounds) must finish within this many seconds in the processes engine
JOB_TIMEOUT = 6 * 3600.0


def quiet_flower_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """An environment for Flower processes: telemetry off (no call home from a hospital's machine), and
    this interpreter's scripts folder first on PATH: the SuperLink starts ``flower-superexec`` by name,
    which an environment that was never activated (``.venv/bin/python -m ...``) would not find."""
    out = dict(os.environ if env is None else env)
    out["FLWR_TELEMETRY_ENABLED"] = "0"
    scripts = str(Path(sys.executable).parent)
    out["PATH"] = os.pathsep.join([scripts, out.get("PATH", "")]).rstrip(os.pathsep)
    return out


def run_in_simulation(job: Job, result: Path, *, data_dir: str | None, threads: int = 1) -> dict[str, Any]:
    """Run `job` in Flower's simulation engine (Ray backend, one CPU per site at a time); its result dict.

    Raises:
        OptionalDependencyError: flwr (or Ray) is not installed.
        MedmetaError: the server wrote no result (a site failed; the log says why).
    """
    from medmeta.federated.flower_apps import make_client_app, make_server_app, site_from_partition

    simulation = optional_import("flwr.simulation", FEATURE)
    if importlib.util.find_spec("ray") is None:
        raise OptionalDependencyError(
            f"{FEATURE} in the simulation engine needs the optional package 'ray': run `pip install "
            "'medmeta[federated]'` (or use --engine processes)"
        )
    server = make_server_app(lambda _context: (job, result))
    client = make_client_app(site_from_partition(data_dir), threads=threads)
    n_sites = len(job.cfg.data.sites)
    cpus = max(1, min(n_sites, os.cpu_count() or 1))
    backend = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": cpus, "num_gpus": 0, "include_dashboard": False, "address": "local"},
    }
    simulation.run_simulation(
        server_app=server, client_app=client, num_supernodes=n_sites, backend_config=backend
    )
    if not result.is_file():
        raise MedmetaError(f"the simulated server wrote no result for {job.strategy}: see the log above")
    return dict(json.loads(result.read_text(encoding="utf-8")))


def free_port() -> int:
    """A TCP port on 127.0.0.1 free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tool(name: str) -> str:
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if found is None:
        raise MedmetaError(
            f"{name} is not on PATH: install the extra with `pip install 'medmeta[federated]'`"
        )
    return found


APP_PYPROJECT = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "medmeta-federated"
version = "1.0.0"
license = "Apache-2.0"
description = "medmeta federated few-shot learning (components live in the installed medmeta package)"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "medmeta"

[tool.flwr.app.components]
serverapp = "medmeta.federated.flower_apps:server_app"
clientapp = "medmeta.federated.flower_apps:client_app"

[tool.flwr.app.config]
job-file = ""
"""


def write_flower_app(folder: Path) -> Path:
    """A Flower App folder whose components are medmeta's ServerApp and ClientApp (for ``flwr run``)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(APP_PYPROJECT, encoding="utf-8")
    return folder


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise MedmetaError(f"{what} exited with code {proc.returncode} before listening: see its log")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise MedmetaError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f} s: see its log")


def _submitted(stdout: bytes) -> bool:
    """Whether ``flwr run --format json`` reported success (it exits 0 either way)."""
    try:
        return bool(json.loads(stdout.decode("utf-8", "replace")).get("success"))
    except (ValueError, AttributeError):
        return False


def run_in_processes(
    job: Job,
    result: Path,
    *,
    work: Path,
    data_dir: str | None,
    threads: int = 1,
    server_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run `job` on a SuperLink and one SuperNode per site, separate processes on 127.0.0.1.

    Args:
        job: the strategy's run.
        result: where the ServerApp writes its result JSON.
        work: a folder this run owns: the Flower App, the job file, ``FLWR_HOME``, each process's log.
        data_dir: the sites' data root (given to the SuperNodes only; the SuperLink's environment has no
            ``MEDMETA_DATA``).
        threads: torch threads of each site's process.
        server_env: the SuperLink's environment (default: this process's without ``MEDMETA_DATA``).

    Raises:
        MedmetaError: a process did not start, or the run failed (the logs in `work` say why).
    """
    optional_import("flwr", FEATURE)
    work.mkdir(parents=True, exist_ok=True)
    home = work / "flwr_home"
    home.mkdir(exist_ok=True)
    port, health = free_port(), free_port()  # flwr 1.42: Fleet, Control and Runtime APIs share one port
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "medmeta"\n\n[superlink.medmeta]\naddress = "127.0.0.1:{port}"\ninsecure = true\n',
        encoding="utf-8",
    )
    app_dir = write_flower_app(work / "app")
    job_file = work / "job.json"
    job_file.write_text(json.dumps({"job": job.to_json(), "result": str(result)}), encoding="utf-8")
    base = quiet_flower_env()
    base["FLWR_HOME"] = str(home)
    senv = quiet_flower_env(server_env) if server_env is not None else dict(base)
    senv.pop("MEDMETA_DATA", None)
    senv["FLWR_HOME"] = str(home)
    cenv = dict(base, OMP_NUM_THREADS=str(threads or 1))
    procs: list[subprocess.Popen[bytes]] = []
    logs = []

    def start(cmd: list[str], env: dict[str, str], log: str) -> subprocess.Popen[bytes]:
        f = open(work / log, "wb")  # noqa: SIM115 (closed below)
        logs.append(f)
        p = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=work)
        procs.append(p)
        return p

    try:
        link = start(
            [
                _tool("flower-superlink"),
                "--insecure",
                "--disable-runtime-dependency-installation",
                "--host=127.0.0.1",
                f"--port={port}",
                f"--health-server-address=127.0.0.1:{health}",
            ],
            senv,
            "superlink.log",
        )
        _wait_port(port, link, "flower-superlink")
        for i, name in enumerate(job.cfg.data.sites):
            node_config = f"site='{name}'" + (f" data-dir='{data_dir}'" if data_dir else "")
            start(
                [
                    _tool("flower-supernode"),
                    "--insecure",
                    f"--superlink=127.0.0.1:{port}",
                    "--host=127.0.0.1",
                    f"--port={free_port()}",
                    f"--node-config={node_config}",
                ],
                cenv,
                f"supernode_{i}.log",
            )
        run = subprocess.run(
            [
                _tool("flwr"),
                "run",
                str(app_dir),
                "medmeta",
                "--run-config",
                f"job-file='{job_file}'",
                "--format",
                "json",
            ],
            env=base,
            cwd=work,
            capture_output=True,
            timeout=120,
        )
        (work / "flwr_run.log").write_bytes(run.stdout + run.stderr)
        if run.returncode != 0 or not _submitted(run.stdout):
            raise MedmetaError(f"flwr run did not submit the run: see {work / 'flwr_run.log'}")
        deadline = time.monotonic() + JOB_TIMEOUT
        while not result.is_file():
            if link.poll() is not None:
                raise MedmetaError(
                    f"flower-superlink exited with code {link.returncode}: see {work / 'superlink.log'}"
                )
            if time.monotonic() > deadline:
                raise MedmetaError(
                    f"{job.strategy} did not finish within {JOB_TIMEOUT:.0f} s: see the logs in {work}"
                )
            time.sleep(1.0)
        return dict(json.loads(result.read_text(encoding="utf-8")))
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        for f in logs:
            f.close()
