"""Named local weights: recorded with the SHA-256 of their files, verified when used."""

from __future__ import annotations

from pathlib import Path

import pytest

from medmeta.errors import CheckpointError, ConfigError, OutputError
from medmeta.models.pretrained.hashing import sha256_file
from medmeta.models.pretrained.registry import import_weights, list_weights, resolve_weights


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MEDMETA_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def weight_folder(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "model.safetensors").write_bytes(b"weights")
    (root / "config.json").write_text("{}")
    (root / "README.md").write_text("not hashed")
    return root


def test_a_folder_is_recorded_with_the_sha256_of_its_weights_and_configs(tmp_path: Path, home: Path) -> None:
    folder = weight_folder(tmp_path / "w")
    record = import_weights(folder, "tiny")
    assert record.sha256 == {
        "config.json": sha256_file(folder / "config.json"),
        "model.safetensors": sha256_file(folder / "model.safetensors"),
    }
    assert (home / "weights" / "tiny.json").is_file()
    assert resolve_weights("tiny") == (folder.resolve(), record)
    assert [r.name for r in list_weights()] == ["tiny"]


def test_a_path_that_is_not_a_name_resolves_to_itself(tmp_path: Path) -> None:
    folder = weight_folder(tmp_path / "w")
    assert resolve_weights(str(folder)) == (folder, None)


def test_a_changed_or_missing_file_is_refused_when_the_name_is_used(tmp_path: Path) -> None:
    folder = weight_folder(tmp_path / "w")
    import_weights(folder, "tiny")
    (folder / "model.safetensors").write_bytes(b"other weights")
    with pytest.raises(CheckpointError, match="changed since it was imported"):
        resolve_weights("tiny")
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="is missing"):
        resolve_weights("tiny")


def test_bad_names_pickles_taken_names_and_unknown_references_are_refused(tmp_path: Path) -> None:
    folder = weight_folder(tmp_path / "w")
    with pytest.raises(ConfigError, match="must be 1-64 letters"):
        import_weights(folder, "../escape")
    (tmp_path / "x.pth").write_bytes(b"pickle")
    with pytest.raises(ConfigError, match="pickle file"):
        import_weights(tmp_path / "x.pth", "x")
    with pytest.raises(ConfigError, match=r"holds no \.safetensors"):
        (tmp_path / "empty").mkdir()
        import_weights(tmp_path / "empty", "empty")
    import_weights(folder, "tiny")
    with pytest.raises(OutputError, match="already exists"):
        import_weights(folder, "tiny")
    assert import_weights(folder, "tiny", overwrite=True).name == "tiny"
    with pytest.raises(ConfigError, match="neither a file or folder nor a name"):
        resolve_weights("nothing")
