"""`code_version`: medmeta's version plus the git commit (and uncommitted changes) of a checkout."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from medmeta import __version__, provenance


@pytest.fixture(autouse=True)
def fresh() -> None:
    provenance.code_version.cache_clear()


def git(repo: Path, *args: str) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t")
    env["GIT_COMMITTER_EMAIL"] = "t@t"
    out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, env=env, check=True)
    return out.stdout.strip()


def test_a_checkout_gives_its_commit_and_says_when_tracked_sources_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src" / "medmeta"
    src.mkdir(parents=True)
    (src / "a.py").write_text("x = 1\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "one")
    monkeypatch.setattr(provenance, "_REPO", tmp_path)
    commit = git(tmp_path, "rev-parse", "--short", "HEAD")
    assert provenance.code_version() == f"{__version__}+git.{commit}"
    (tmp_path / "notes.txt").write_text("untracked files do not count")
    provenance.code_version.cache_clear()
    assert provenance.code_version() == f"{__version__}+git.{commit}"
    (src / "a.py").write_text("x = 2\n")
    provenance.code_version.cache_clear()
    assert provenance.code_version() == f"{__version__}+git.{commit}.dirty"


def test_outside_a_checkout_only_the_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(provenance, "_REPO", tmp_path)
    assert provenance.code_version() == __version__


def test_a_run_stamp_names_the_command_the_code_and_a_utc_time() -> None:
    import datetime

    import torch

    stamp = provenance.run_stamp("medmeta continual --config c.yaml")
    assert stamp["command"] == "medmeta continual --config c.yaml"
    assert stamp["medmeta_version"] == __version__ and stamp["torch_version"] == torch.__version__
    assert stamp["code"] == provenance.code_version() and stamp["code"].startswith(__version__)
    when = datetime.datetime.fromisoformat(stamp["date"])
    assert when.utcoffset() == datetime.timedelta(0)
    assert abs((datetime.datetime.now(datetime.UTC) - when).total_seconds()) < 60
