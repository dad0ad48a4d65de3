"""`ContinualConfig`: defaults, one-line errors naming the field, and YAML files with flag overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from medmeta.config import load_continual_config, make_continual_config
from medmeta.errors import ConfigError

STAGES = {"stages": ["blood_pbc", "brain_tumor_mri"]}


def test_defaults_run_every_strategy_over_three_seeds() -> None:
    cfg = make_continual_config({"data": STAGES})
    assert cfg.strategies == ["naive", "replay", "prototypes", "joint"]
    assert cfg.train.seeds == [0, 1, 2] and cfg.data.shots == [5]
    assert cfg.replay.policies == ["class_balanced"] and cfg.replay.buffer == 50
    assert cfg.checkpoint is None and cfg.model.backbone == "conv4" and cfg.data.image_size is None


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (
            {"data": {"stages": ["blood_pbc"]}},
            r"data\.stages=\['blood_pbc'\]: List should have at least 2 items",
        ),
        ({"data": {**STAGES, "shots": [5, 5]}}, r"data\.shots=\[5, 5\]: Value error, shots 5 listed twice"),
        ({"data": {**STAGES, "shots": [0]}}, r"shots must be at least 1"),
        ({"data": STAGES, "strategies": ["naive", "naive"]}, r"strategy naive listed twice"),
        ({"data": STAGES, "strategies": ["ewc"]}, r"strategies\.0='ewc'"),
        ({"data": STAGES, "replay": {"policies": ["fifo"]}}, r"replay\.policies\.0='fifo'"),
        ({"data": STAGES, "replay": {"buffer": 0}}, r"replay\.buffer=0"),
        ({"data": STAGES, "train": {"seeds": [1, 1]}}, r"seed 1 listed twice"),
        ({"data": STAGES, "train": {"steps": 0}}, r"train\.steps=0"),
        ({"data": STAGES, "train": {"epochs": 3}}, r"train\.epochs=3: Extra inputs are not permitted"),
        ({"data": STAGES, "checkpoint": "run/best.json", "model": {"backbone": "resnet12"}}, "not both"),
        ({}, r"data: Field required"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_field(data: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make_continual_config(data)


def test_a_yaml_file_is_read_and_flags_override_it(tmp_path: Path) -> None:
    path = tmp_path / "continual.yaml"
    path.write_text("data:\n  stages: [blood_pbc, brain_tumor_mri]\n  shots: [5, 10]\ntrain: {steps: 40}\n")
    cfg = load_continual_config(path, {"train.steps": 7, "replay.policies": ["reservoir"]})
    assert cfg.data.shots == [5, 10] and cfg.train.steps == 7 and cfg.replay.policies == ["reservoir"]
    with pytest.raises(ConfigError, match="not found"):
        load_continual_config(tmp_path / "missing.yaml")
