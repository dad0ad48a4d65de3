"""Named local weights: ``medmeta weights import PATH --name NAME`` records a weight file or folder with the
SHA-256 of every file in it, so a run can say ``--weights NAME`` and name exactly what it started from.

Records are JSON files under ``$MEDMETA_HOME/weights/`` (default ``~/.medmeta/weights/``): medmeta's own
folder, nothing else is written. The weights stay where they are; using a name re-hashes its files and
refuses ones that changed since the import.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from medmeta.errors import CheckpointError, ConfigError
from medmeta.models.pretrained.hashing import sha256_file
from medmeta.models.pretrained.sources import PICKLE_SUFFIXES, convert_command
from medmeta.outputs import claim_output_file

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
#: files of a weight folder that are hashed (and so may not change): weights and the configs beside them
_HASHED = (".safetensors", ".json", ".txt")


def weights_home() -> Path:
    """``$MEDMETA_HOME/weights`` (default ``~/.medmeta/weights``)."""
    root = os.environ.get("MEDMETA_HOME")
    return (Path(root) if root else Path.home() / ".medmeta") / "weights"


@dataclass(frozen=True)
class WeightsRecord:
    """A named weight file or folder.

    Attributes:
        name: the name runs use (``--weights NAME``).
        path: absolute path of the file or folder.
        sha256: SHA-256 per file (file name, relative to the folder for a folder).
    """

    name: str
    path: str
    sha256: dict[str, str]

    def verify(self) -> Path:
        """The path, after checking every recorded file still has its SHA-256.

        Raises:
            CheckpointError: a file is missing or changed.
        """
        path = Path(self.path)
        for rel, digest in self.sha256.items():
            f = path if path.is_file() and rel == path.name else path / rel
            if not f.is_file():
                raise CheckpointError(
                    f"weights '{self.name}': {f} is missing; restore it, or import the weights again with "
                    f"`medmeta weights import PATH --name {self.name} --overwrite`"
                )
            if sha256_file(f) != digest:
                raise CheckpointError(
                    f"weights '{self.name}': {f} changed since it was imported (SHA-256 differs); restore it, "
                    f"or import it again with `medmeta weights import PATH --name {self.name} --overwrite`"
                )
        return path


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(_HASHED))


def import_weights(path: str | Path, name: str, *, overwrite: bool = False) -> WeightsRecord:
    """Record `path` (a ``.safetensors`` file, or a folder holding one) under `name`.

    Raises:
        ConfigError: a bad name, a missing path, a pickle file or a folder without safetensors.
        OutputError: the name is taken (without `overwrite`) or the record cannot be written.
    """
    if not NAME.match(name):
        raise ConfigError(
            f"weights name '{name}' must be 1-64 letters, digits, '.', '_' or '-' (starting with a letter "
            "or digit)"
        )
    source = Path(path).expanduser()
    if not source.exists():
        raise ConfigError(f"weights {source} not found: give a .safetensors file or a folder holding one")
    source = source.resolve()
    if source.is_file() and source.name.lower().endswith(PICKLE_SUFFIXES):
        raise ConfigError(
            f"{source} is a pickle file, which medmeta never loads; convert it to safetensors first: "
            f"{convert_command(source, source.with_suffix('.safetensors').name)}"
        )
    if source.is_file() and not source.name.endswith(".safetensors"):
        raise ConfigError(f"{source} is not a .safetensors file: give a .safetensors file or a folder")
    files = _files(source)
    if not any(f.name.endswith(".safetensors") for f in files):
        raise ConfigError(f"folder {source} holds no .safetensors file: give the folder of the weights")
    record = WeightsRecord(
        name=name,
        path=str(source),
        sha256={(f.name if source.is_file() else str(f.relative_to(source))): sha256_file(f) for f in files},
    )
    target = claim_output_file(weights_home() / f"{name}.json", overwrite=overwrite, what="weights name")
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(json.dumps(asdict(record), indent=2) + "\n")
    tmp.replace(target)
    return record


def recorded_weights(name: str) -> WeightsRecord | None:
    """The record of `name`, or None when no such name was imported.

    Raises:
        CheckpointError: the record exists but is not a valid record.
    """
    if not NAME.match(name):
        return None
    f = weights_home() / f"{name}.json"
    if not f.is_file():
        return None
    try:
        data = json.loads(f.read_text())
        return WeightsRecord(name=str(data["name"]), path=str(data["path"]), sha256=dict(data["sha256"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"weights record {f} is unreadable ({exc}): import the weights again") from None


def resolve_weights(ref: str) -> tuple[Path, WeightsRecord | None]:
    """A run's ``weights``: a name recorded by `import_weights` (verified), else a local path.

    Raises:
        ConfigError: neither a recorded name nor an existing file or folder.
        CheckpointError: a recorded file changed or is missing.
    """
    record = recorded_weights(ref)
    if record is not None:
        return record.verify(), record
    path = Path(ref).expanduser()
    if path.exists():
        return path, None
    raise ConfigError(
        f"weights '{ref}' is neither a file or folder nor a name recorded by `medmeta weights import` "
        f"(records in {weights_home()}): give the path of the weights, or import them first"
    )


def list_weights() -> list[WeightsRecord]:
    """Every recorded name, sorted."""
    home = weights_home()
    if not home.is_dir():
        return []
    records = [recorded_weights(f.stem) for f in sorted(home.glob("*.json"))]
    return [r for r in records if r is not None]
