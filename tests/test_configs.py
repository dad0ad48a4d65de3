"""The YAML configs shipped in configs/ validate, and config errors name the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medmeta.config import apply_overrides, load_config, load_continual_config, make_config
from medmeta.errors import ConfigError
from medmeta.pipeline import train_method
from medmeta.pipeline.checks import check_method_config


# seg_*.yaml are segmentation configs (SegConfig), validated in tests/seg/test_config.py; benchmark
# protocols (a top-level `methods:` list) are validated in tests/bench/test_protocol.py, segmentation
# benchmark protocols (task: segmentation) in tests/bench/test_seg_benchmark.py; continual*.yaml are
# `medmeta continual` configs and federated*.yaml `medmeta federated` configs, validated below
def _is_run_config(path: Path) -> bool:
    return not path.name.startswith(("seg_", "continual")) and "methods" not in yaml.safe_load(
        path.read_text()
    )


CONFIGS = sorted(
    p for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.yaml") if _is_run_config(p)
)


def test_every_config_is_validated_somewhere() -> None:
    """Run configs here; the others by the suites named above, which must cover all of them."""
    others = {p.name for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")} - {
        p.name for p in CONFIGS
    }
    assert others == {
        "seg_cross.yaml",
        "seg_setting2.yaml",
        "quick.yaml",
        "cross_domain.yaml",
        "cross_domain_zero_head.yaml",
        "cross_domain_ssl.yaml",
        "cross_domain_ceiling.yaml",
        "medmnist.yaml",
        "bench_seg_cross.yaml",
        "cross_domain_calibration.yaml",
        "model_based.yaml",
        "continual.yaml",
        "federated.yaml",
    }


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_validates(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.data.train


def test_the_continual_config_is_three_stages_of_real_domains_with_every_strategy() -> None:
    cfg = load_continual_config(Path(__file__).resolve().parents[1] / "configs" / "continual.yaml")
    assert len(cfg.data.stages) == 3 and cfg.data.dedupe
    assert cfg.strategies == ["naive", "replay", "prototypes", "joint"]
    assert cfg.replay.policies == ["reservoir", "class_balanced"]


def test_the_federated_config_is_four_real_domains_as_sites_with_every_strategy_and_dp() -> None:
    from medmeta.config.federated import STRATEGIES, load_federated_config

    cfg = load_federated_config(Path(__file__).resolve().parents[1] / "configs" / "federated.yaml")
    assert len(cfg.data.sites) == 4 and tuple(cfg.strategies) == STRATEGIES
    assert cfg.centralised and cfg.site_only and cfg.dp.epsilon is not None


def test_overrides_set_nested_keys_without_touching_the_input() -> None:
    raw = {"train": {"epochs": 3}}
    out = apply_overrides(raw, {"train.lr": 0.1, "eval.episodes": 7})
    assert out == {"train": {"epochs": 3, "lr": 0.1}, "eval": {"episodes": 7}}
    assert raw == {"train": {"epochs": 3}}


def test_an_unknown_field_is_named() -> None:
    with pytest.raises(ConfigError, match=r"train\.epoch"):
        make_config({"train": {"epoch": 3}})


def test_an_unknown_method_lists_the_registered_ones() -> None:
    cfg = make_config({"method": {"name": "nope"}})  # the config is a leaf: the registry checks it
    with pytest.raises(ConfigError, match=r"unknown method 'nope'; choose one of .*protonet"):
        check_method_config(cfg)
    with pytest.raises(ConfigError, match=r"unknown method 'nope'"):
        train_method(cfg)


def test_a_bad_method_option_is_named() -> None:
    with pytest.raises(ConfigError, match=r"method 'protonet': .*distanse"):
        check_method_config(make_config({"method": {"name": "protonet", "options": {"distanse": "cosine"}}}))


def test_a_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "x.yaml")


def test_invalid_yaml_is_reported_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(bad)


def test_a_benchmark_protocol_given_as_a_run_config_names_the_command() -> None:
    quick = Path(__file__).resolve().parents[1] / "configs" / "quick.yaml"
    with pytest.raises(ConfigError, match=r"benchmark protocol .*medmeta benchmark .*quick\.yaml"):
        load_config(quick)
