"""A SuperLink and one SuperNode per site as separate processes over loopback; the server side never opens
an image: every ``open`` of the SuperLink and of the processes it starts (the ServerApp) is recorded by an
audit hook (PEP 578) installed through ``sitecustomize`` in their environment, which has no MEDMETA_DATA."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from medmeta.federated.engines import run_in_processes
from medmeta.federated.protocol import Job, serve
from medmeta.federated.sites import load_site
from tests._helpers.federated import TWO_SITES, DirectExchange, small_config

pytestmark = [pytest.mark.data, pytest.mark.slow]

HOOK = """
import os, sys
_log = open(os.path.join({folder!r}, "opens.%d.log" % os.getpid()), "a", buffering=1)
def _hook(event, args):
    if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        _log.write(os.fsdecode(args[0]) + "\\n")
sys.addaudithook(_hook)
"""


def test_server_processes_never_open_an_image_and_match_the_direct_result(
    data_dir: Path, tmp_path: Path
) -> None:
    cfg = small_config(data_dir)
    hooks, logs = tmp_path / "hook", tmp_path / "opens"
    hooks.mkdir()
    logs.mkdir()
    (hooks / "sitecustomize.py").write_text(HOOK.format(folder=str(logs)))
    server_env = {k: v for k, v in os.environ.items() if k != "MEDMETA_DATA"}
    server_env["PYTHONPATH"] = os.pathsep.join([str(hooks), server_env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep
    )
    job = Job("fedmeta_maml", "maml", None, "batch", None, cfg.model_dump(mode="json"))
    work = tmp_path / "work"
    result = run_in_processes(
        job, work / "result.json", work=work, data_dir=str(data_dir), server_env=server_env
    )

    opened = {}
    for log in logs.glob("opens.*.log"):
        opened[log.name] = log.read_text().splitlines()
    assert len(opened) >= 2, opened.keys()  # the SuperLink and the ServerApp process it started
    job_file = str(work / "job.json")
    assert any(job_file in paths for paths in opened.values()), "the ServerApp process was not audited"
    data_root = str(data_dir.resolve())
    for name, paths in opened.items():
        for p in paths:
            assert not os.path.abspath(p).startswith(data_root), f"{name} opened {p}"
            assert not p.lower().endswith((".npz", ".npy", ".png", ".jpg", ".jpeg")), f"{name} opened {p}"
    assert json.loads((work / "result.json").read_text()) == result

    sites = [load_site(name, cfg.data) for name in TWO_SITES]
    direct = serve(job, DirectExchange(sites))
    for name in TWO_SITES:
        assert result["sites"][name]["accuracy"] == direct["sites"][name]["accuracy"]
