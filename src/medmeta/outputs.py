"""Claiming output paths: the one place that decides whether a command may write where it was told.

Rule (STYLE §8): a command never deletes or overwrites what it did not create. Every command that writes
claims its output here before any work starts:

- a **symlink** at the output path is refused (output paths are never followed), and so is anything that
  is not a regular file or a folder (a FIFO, a device, a socket);
- the nearest existing parent must be a folder, and the folder must accept a new file (a real write
  test, so a read-only or full location fails here, in one line, rather than after training);
- an **existing** output is refused unless the caller says ``overwrite`` (or ``resume`` for a run
  folder). ``overwrite`` of a run folder removes only the files medmeta writes there (`RUN_FILES`); a
  run folder holding anything else is refused even then;
- a long run that resumes by itself (a benchmark) writes only into a new or empty folder or its own
  (`claim_resumable_folder`), and removes a sub-folder of its own only when no link lies on the way
  (`remove_run_subfolder`).

Checking has no side effect; creating folders and removing replaced files happen in separate steps, so a
command can check its output, then validate the rest of the run, and only then touch the disk.

Example:
    >>> folder = check_run_folder(Path("runs/a"), overwrite=False, resume=False)  # doctest: +SKIP
    >>> folder.prepare()  # creates runs/a, tests that it is writable  # doctest: +SKIP
    >>> folder.clear()  # with overwrite: removes medmeta's files of the earlier run  # doctest: +SKIP
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from medmeta.errors import OutputError

#: Checkpoints medmeta writes in a run folder (``NAME.json`` + ``NAME-<sha8>.safetensors``).
CHECKPOINT_STEMS = ("best", "last", "train_state")
#: The training state `--resume` continues from.
STATE_FILE = "train_state.json"
#: Results of a finished run: stale as soon as training goes on, so removed when a run resumes.
RESULT_FILES = ("results.json", "results.md")
_STEMS = "|".join(CHECKPOINT_STEMS)
#: Every file medmeta writes in a run folder, including the temporary files of an interrupted save.
RUN_FILES = re.compile(
    rf"(?:{_STEMS})\.json|(?:{_STEMS})-[0-9a-f]{{8}}\.safetensors|config\.yaml|history\.json"
    rf"|results\.(?:json|md)|\.?(?:{_STEMS}|config|history|results)[\w.-]*\.tmp"
)


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device file"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:  # e.g. a parent that is a file: ENOTDIR
        if exc.errno == errno.ENOTDIR:
            return None
        raise OutputError(f"cannot inspect {path}: {exc.strerror}") from None


def _refuse_special(path: Path, what: str) -> os.stat_result | None:
    """`path`'s lstat (None when missing); refuse a symlink or anything not a regular file or folder."""
    st = _lstat(path)
    if st is not None and not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise OutputError(
            f"{what} {path} is {_kind(st.st_mode)}: medmeta writes only regular files and folders and "
            "never through links; choose another path"
        )
    return st


def _check_parent(path: Path, what: str) -> None:
    """The nearest existing ancestor of `path` must be a folder (else nothing can be created under it)."""
    parent = Path(os.path.abspath(path)).parent
    while _lstat(parent) is None and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"cannot write {what} {path}: {parent} is a file, not a folder")


def _make_folder(folder: Path, what: str) -> None:
    """Create `folder` (and parents) and prove it accepts a new file."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".medmeta-write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"cannot write {what} {folder}: {exc.strerror or exc}") from None


def check_output_file(path: Path, *, overwrite: bool = False, what: str = "--out") -> Path:
    """Refuse an output file that cannot or may not be written; no side effect.

    Raises:
        OutputError: a symlink, FIFO, device or folder at `path`; an existing file without `overwrite`;
            a parent that is a file.
    """
    st = _refuse_special(path, what)
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise OutputError(f"{what} {path} is a folder: give a file name (for example {path / 'out.json'})")
    if st is not None and not overwrite:
        raise OutputError(
            f"{what} {path} already exists: pass --overwrite to replace it, or choose another path"
        )
    _check_parent(path, what)
    return path


def claim_output_file(path: Path, *, overwrite: bool = False, what: str = "--out") -> Path:
    """`check_output_file`, then create its folder and prove it writable; the file itself is not touched."""
    check_output_file(path, overwrite=overwrite, what=what)
    _make_folder(path.parent, what)
    return path


def claim_output_folder(path: Path, *, overwrite: bool = False, what: str = "--out") -> Path:
    """A folder that files are written into by name (masks, explanation pictures).

    A missing or empty folder is created; a non-empty one needs `overwrite` (same-named files are then
    replaced, nothing else is removed) and may hold only regular files and folders.

    Raises:
        OutputError: a symlink, FIFO, device or file at `path`, a non-empty folder without `overwrite`,
            a special file inside it, or a folder that cannot be created or written.
    """
    entries = _folder_entries(path, what)
    if entries and not overwrite:
        raise OutputError(
            f"{what} {path} already holds files ({_few(entries)}): pass --overwrite to write into it "
            "(same-named files are replaced), or choose another folder"
        )
    for name in entries:
        _refuse_special(path / name, f"{what} {path} holds")
    _check_parent(path, what)
    _make_folder(path, what)
    return path


def claim_resumable_folder(path: Path, *, marker: str, what: str = "--out") -> bool:
    """A folder a long run owns and resumes by name (a benchmark): new, empty, or its own run.

    The folder is the run's own when it holds `marker` (the file the run writes first); it is then
    resumed. A folder holding anything else and no `marker` is someone else's and is refused: a run
    appends, replaces and removes files by name inside its folder (checkpoints of a cut-short job are
    removed), which must never touch a file it did not write. A missing or empty folder is created.

    Returns:
        True when `path` holds `marker` (a run to resume), False for a new run.

    Raises:
        OutputError: a symlink, FIFO, device or file at `path` or `marker`, a non-empty folder without
            `marker`, or a folder that cannot be created or written.
    """
    entries = _folder_entries(path, what)
    _check_parent(path, what)
    if marker in entries:
        _refuse_folder_at_file(path, marker, what)
        _make_folder(path, what)
        return True
    if entries:
        raise OutputError(
            f"{what} {path} already holds files ({_few(entries)}) and no run of this command ({marker}): "
            "a run writes only into a new or empty folder, or resumes its own; choose another folder"
        )
    _make_folder(path, what)
    return False


def remove_run_subfolder(root: Path, folder: Path) -> None:
    """Remove `folder`, which a run wrote inside its own run folder `root` (the checkpoints of a job cut
    short), never through a link: a symbolic link or a file anywhere from `root` down to `folder` is refused.
    A missing `folder` is nothing to do.

    Raises:
        OutputError: `folder` is not inside `root`, or a link or non-folder lies on the way.
    """
    try:
        parts = folder.relative_to(root).parts
        if not parts or ".." in parts:
            raise ValueError
    except ValueError:
        raise OutputError(
            f"{folder} is not inside the run folder {root}: medmeta removes nothing else"
        ) from None
    path = root
    for part in parts:
        path = path / part
        st = _lstat(path)
        if st is None:
            return
        if not stat.S_ISDIR(st.st_mode):
            kind = "a file" if stat.S_ISREG(st.st_mode) else _kind(st.st_mode)
            raise OutputError(
                f"{path} is {kind} where the run keeps its own checkpoint folders: medmeta removes only "
                "folders it wrote and never through links; move it out of the run folder"
            )
    shutil.rmtree(folder)


def _folder_entries(path: Path, what: str) -> list[str]:
    """The names in folder `path` ([] when it does not exist yet); a link, special file or file there is
    refused."""
    st = _refuse_special(path, what)
    if st is not None and not stat.S_ISDIR(st.st_mode):
        raise OutputError(f"{what} {path} is a file, not a folder: choose a folder path")
    return _entries(path) if st is not None else []


def _refuse_folder_at_file(path: Path, name: str, what: str) -> None:
    """`path / name`, where medmeta writes a file, must be a regular file or missing."""
    st = _refuse_special(path / name, f"{what} {path} holds")
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise OutputError(f"{what} {path} holds a folder named {name}, where medmeta writes a file: move it")


def _entries(folder: Path) -> list[str]:
    try:
        return sorted(os.listdir(folder))
    except OSError as exc:
        raise OutputError(f"cannot read folder {folder}: {exc.strerror}") from None


def _few(names: list[str], n: int = 3) -> str:
    shown = ", ".join(names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


@dataclass(frozen=True)
class RunFolder:
    """A checked run folder (see `check_run_folder`).

    Attributes:
        path: the folder.
        resume: True when it holds a training state to continue from.
        replace: medmeta's files of an earlier run that `clear` removes (``overwrite``).
    """

    path: Path
    resume: bool = False
    replace: tuple[str, ...] = ()

    def prepare(self) -> Path:
        """Create the folder and prove it writable (nothing existing is touched)."""
        _make_folder(self.path, "--out")
        return self.path

    def clear(self) -> None:
        """Remove the earlier run's files (``overwrite``), or its stale results (``resume``).

        Each file is checked again just before removal: only regular files are unlinked.
        """
        names = RESULT_FILES if self.resume else self.replace
        for name in names:
            target = self.path / name
            st = _lstat(target)
            if st is not None and stat.S_ISREG(st.st_mode):
                target.unlink(missing_ok=True)


def check_run_folder(path: Path, *, overwrite: bool = False, resume: bool = False) -> RunFolder:
    """Decide whether a training run may use folder `path`; no side effect.

    - missing or empty: a new run;
    - non-empty, neither flag: refused, naming ``--resume`` and ``--overwrite``;
    - ``resume``: continue from its training state (`STATE_FILE`); a folder with medmeta files but no
      state is refused (a missing or empty folder simply starts a new run);
    - ``overwrite``: medmeta's files (`RUN_FILES`) are replaced; any other file or folder in it is refused.

    Raises:
        OutputError: as above, or a symlink/special file at `path`, or a file in the way.
    """
    if overwrite and resume:
        raise OutputError("--resume and --overwrite exclude each other: pass one of them")
    st = _refuse_special(path, "--out")
    if st is not None and not stat.S_ISDIR(st.st_mode):
        raise OutputError(
            f"--out {path} is a file, not a folder: a run needs a folder (choose another --out)"
        )
    _check_parent(path, "--out")
    entries = _entries(path) if st is not None else []
    if not entries:
        return RunFolder(path)
    ours = [n for n in entries if RUN_FILES.fullmatch(n)]
    for name in ours:
        _refuse_folder_at_file(path, name, "--out")
    if resume:
        if STATE_FILE in entries:
            return RunFolder(path, resume=True)
        if ours:
            raise OutputError(
                f"--resume: {path} holds no training state ({STATE_FILE}), only {_few(ours)}: pass "
                "--overwrite to train again from the start, or choose another --out"
            )
        return RunFolder(path)
    if not overwrite:
        raise OutputError(
            f"--out {path} already holds a run ({_few(entries)}): pass --resume to continue it, --overwrite "
            "to replace it, or choose another --out"
        )
    foreign = [n for n in entries if n not in ours]
    if foreign:
        raise OutputError(
            f"--overwrite replaces only the files medmeta writes in a run folder, but {path} also holds "
            f"{_few(foreign)}: move them away or choose another --out"
        )
    return RunFolder(path, replace=tuple(ours))


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` to `path` through a temporary file beside it, renamed over it (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path
