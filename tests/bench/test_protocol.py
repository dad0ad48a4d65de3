"""Benchmark configs: the shipped ones validate, and every bad value gives one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medmeta.bench.cells import TrainJob, cell_cost, enumerate_cells, enumerate_jobs, job_cost
from medmeta.bench.protocol import check_domains, load_protocol, parse_protocol
from medmeta.errors import ConfigError
from tests._helpers.bench import tiny_raw
from tests._helpers.paths import REPO

DOMAINS = ["blood_pbc", "brain_tumor_mri", "breastmnist_resaved", "pneumoniamnist_modified"]


def test_cross_domain_config_is_the_full_protocol() -> None:
    p = load_protocol(REPO / "configs" / "cross_domain.yaml")
    assert p.data.domains == DOMAINS
    assert p.eval.shots == [1, 5, 10]
    assert p.eval.n_query == 15 and p.eval.episodes >= 600
    assert len(p.seeds) == 3
    cells = enumerate_cells(p)
    assert len(cells) == len(p.all_methods) * 4 * 3 * 3
    assert {"pixels_ncm", "pixels_logreg"} <= {m.label for m in p.all_methods}
    trainings = [j for j in enumerate_jobs(p) if hasattr(j, "cells") and not j.method.frozen]
    assert len(trainings) == len(p.methods) * 4 * 3  # the raw-pixel entries train nothing


def test_the_representation_companion_shares_cross_domains_data_and_test_episodes() -> None:
    full = load_protocol(REPO / "configs" / "cross_domain.yaml")
    ssl = load_protocol(REPO / "configs" / "cross_domain_ssl.yaml")
    assert ssl.data == full.data and ssl.eval == full.eval and ssl.seeds == full.seeds[:1]
    assert {r.name: r.sees_held_out for r in ssl.representations} == {"simclr_a": False, "simclr_b": True}
    pretrainings = [
        j for j in enumerate_jobs(ssl) if not hasattr(j, "cells") and j.key.startswith("pretrain")
    ]
    assert len(pretrainings) == 4 + 1  # setting (a) once per held-out domain, (b) once


def test_the_ceiling_companion_trains_cross_domains_references_and_nothing_else() -> None:
    """Its references are cross_domain's (same data, budgets, reference, episodes, seeds), each also tested in
    the few-shot episodes; its only method is the raw pixels, which trains nothing."""
    full = load_protocol(REPO / "configs" / "cross_domain.yaml")
    ceiling = load_protocol(REPO / "configs" / "cross_domain_ceiling.yaml")
    for section in ("data", "episodes", "train", "eval", "reference", "seeds", "backbone"):
        assert getattr(ceiling, section) == getattr(full, section), section
    assert ceiling.reference.enabled and ceiling.reference.few_shot
    jobs = enumerate_jobs(ceiling)
    assert not [j for j in jobs if hasattr(j, "cells") and not j.method.frozen]
    assert len([j for j in jobs if j.key.startswith("reference")]) == 4 * 3


def test_the_zero_head_companion_differs_from_cross_domain_only_in_its_methods() -> None:
    """Its rows compare with cross_domain's: same domains, splits, budgets, test episodes and seeds."""
    full = load_protocol(REPO / "configs" / "cross_domain.yaml")
    zero = load_protocol(REPO / "configs" / "cross_domain_zero_head.yaml")
    for section in ("data", "episodes", "train", "eval"):
        assert getattr(zero, section) == getattr(full, section), section
    assert (zero.seeds, zero.backbone, zero.reference.enabled) == (full.seeds, full.backbone, False)
    twins = {m.label: m for m in full.methods}
    for m in zero.methods:
        twin = twins[m.name]
        assert m.label == f"{m.name}_zero_head" and m.train == twin.train
        assert m.options == {**twin.options, "zero_head": True}


def test_the_calibration_companion_repeats_cross_domain_cells_for_its_methods() -> None:
    """Its cells are cross_domain's (same data, budgets, episodes, first seed) with ECE before and after."""
    full = load_protocol(REPO / "configs" / "cross_domain.yaml")
    cal = load_protocol(REPO / "configs" / "cross_domain_calibration.yaml")
    for section in ("data", "episodes", "train"):
        assert getattr(cal, section) == getattr(full, section), section
    assert cal.eval.model_dump(exclude={"calibration_episodes", "loo_episodes"}) == full.eval.model_dump(
        exclude={"calibration_episodes", "loo_episodes"}
    )
    assert cal.eval.calibration_episodes > 0 and cal.eval.loo_episodes == cal.eval.episodes
    assert cal.seeds == full.seeds[:1]
    twins = {m.label: m for m in full.methods}
    assert all(m == twins[m.label] for m in cal.methods)


def test_the_model_based_protocol_is_quick_with_mann_and_meta_lstm_beside_protonet_and_maml() -> None:
    """Same data and test episodes as quick.yaml, so its rows compare with ProtoNet and MAML on identical episodes."""
    quick = load_protocol(REPO / "configs" / "quick.yaml")
    p = load_protocol(REPO / "configs" / "model_based.yaml")
    assert p.data == quick.data and p.eval == quick.eval and p.episodes == quick.episodes
    assert [m.name for m in p.methods][:4] == ["protonet", "maml", "mann", "meta_lstm"]


def test_jobs_run_seed_by_seed_and_cost_follows_ways_and_shots() -> None:
    p = load_protocol(REPO / "configs" / "cross_domain.yaml")
    jobs = enumerate_jobs(p)
    seeds = [j.seed for j in jobs]
    assert seeds == sorted(seeds)  # the whole first-seed table comes first
    maml = next(j for j in jobs if isinstance(j, TrainJob) and j.method.name == "maml")
    eight, two = {maml.domain: 8}, {maml.domain: 2}
    assert cell_cost(p, maml, 10, eight) > cell_cost(p, maml, 1, eight) > cell_cost(p, maml, 1, two)
    assert (
        job_cost(p, maml, eight)
        > job_cost(p, maml, two)
        > job_cost(p, maml, two) - sum(cell_cost(p, maml, c.shots, two) for c in maml.cells)
    )


def test_medmnist_config_names_its_held_out_sets() -> None:
    p = load_protocol(REPO / "configs" / "medmnist.yaml")
    assert len(p.data.domains) == 11  # the twelve 2D sets but chestmnist (multi-label)
    assert "chestmnist" not in p.data.domains
    assert p.data.held_out and set(p.data.held_out) <= set(p.data.domains)
    assert p.data.image_size == 28
    # the organ views share classes: holding one out keeps the others out of training
    assert "organcmnist" not in p.training_domains("organamnist")


def test_quick_config_is_small() -> None:
    p = load_protocol(REPO / "configs" / "quick.yaml")
    assert p.data.domains == DOMAINS
    assert len(enumerate_cells(p)) <= 40  # 3 methods + the raw-pixel baseline's 2, 4 domains, 2 shots


def test_method_names_alone_become_entries_labelled_by_name() -> None:
    p = parse_protocol(tiny_raw(["a", "b"]))
    assert [m.label for m in p.methods] == ["protonet", "simpleshot"]
    assert p.held_out_domains == ["a", "b"]
    assert p.training_domains("a") == ["b"]


@pytest.mark.parametrize(
    ("changes", "fragments"),
    [
        ({"methods": ["protonett"]}, ["unknown method 'protonett'", "choose one of", "protonet"]),
        ({"methods": [{"name": "protonet", "options": {"distance": "manhattan"}}]}, ["distance"]),
        ({"eval": {"shots": [0, 5]}}, ["eval.shots", "positive"]),
        ({"eval": {"shots": [5, 5]}}, ["listed twice"]),
        ({"eval": {"shots": []}}, ["eval.shots"]),
        ({"seeds": [1, 1]}, ["seed is listed twice"]),
        ({"data": {"domains": ["a", "b"], "held_out": ["c"]}}, ["held_out names ['c']"]),
        ({"data": {"domains": ["a"]}}, ["data.domains"]),
        ({"data": {"domains": ["a", "b"], "related": [["a", "b"]]}}, ["leaves no training domain"]),
        ({"train": {"seed": 3}}, ["top-level 'seeds'"]),
        ({"train": {"epochs": 0}}, ["train.epochs"]),
        ({"methods": [{"name": "protonet", "train": {"lr": -1}}]}, ["methods 'protonet' train", "lr"]),
        ({"methods": ["protonet", "protonet"]}, ["used twice", "label"]),
        ({"reference": {"method": "protonet"}}, ["reference.method", "transfer baseline"]),
        ({"backbone": "vit"}, ["backbone"]),
        ({"colour": "red"}, ["colour"]),
    ],
)
def test_bad_protocol_values_raise_one_clear_error(changes: dict, fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        parse_protocol(tiny_raw(["a", "b"], **changes), source="bench.yaml")
    message = str(info.value)
    assert message.startswith("invalid bench.yaml") and "\n" not in message
    for f in fragments:
        assert f in message, f"{f!r} not in {message!r}"


def test_unknown_domain_is_named_with_the_available_ones(tmp_path: Path) -> None:
    p = parse_protocol(tiny_raw(["synthetic", "no_such_set"]))
    with pytest.raises(ConfigError, match=r"unknown domain 'no_such_set'.*available: .*synthetic"):
        check_domains(p, tmp_path)


def test_missing_or_broken_config_files_are_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_protocol(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_protocol(bad)
    bad.write_text(yaml.safe_dump(["a list"]))
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_protocol(bad)


def test_fingerprint_ignores_the_data_root_but_not_the_protocol() -> None:
    a = parse_protocol(tiny_raw(["a", "b"]))
    b = parse_protocol(tiny_raw(["a", "b"], data={"domains": ["a", "b"], "image_size": 16, "data_dir": "/x"}))
    c = parse_protocol(tiny_raw(["a", "b"], seeds=[0, 1]))
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_the_config_written_to_reports_reads_back_to_the_same_protocol() -> None:
    p = load_protocol(REPO / "configs" / "cross_domain.yaml")
    again = parse_protocol(yaml.safe_load(yaml.safe_dump(p.as_config())))
    assert again == p and again.fingerprint() == p.fingerprint()


def test_a_field_added_later_leaves_earlier_fingerprints_alone() -> None:
    """`data.dedupe` at its default does not enter the hash, so run folders from before it still resume."""
    raw = yaml.safe_load((REPO / "configs" / "cross_domain.yaml").read_text())
    before = parse_protocol(raw).fingerprint()
    raw["data"]["dedupe"] = False
    assert parse_protocol(raw).fingerprint() == before
    raw["data"]["dedupe"] = True
    assert parse_protocol(raw).fingerprint() != before


def test_a_run_folder_of_cross_domain_from_before_reference_few_shot_still_resumes() -> None:
    """The fingerprint the code of 732dec9 (before ``reference.few_shot``) gave configs/cross_domain.yaml."""
    raw = yaml.safe_load((REPO / "configs" / "cross_domain.yaml").read_text())
    assert parse_protocol(raw).fingerprint() == "9d08045186e7a32e"
    raw["reference"]["few_shot"] = False
    assert parse_protocol(raw).fingerprint() != "9d08045186e7a32e"


@pytest.mark.data
def test_dedupe_drops_near_copies_before_the_domains_are_split(data_dir: Path) -> None:
    from medmeta.bench.domains import load_domains
    from medmeta.data.near_duplicates import near_duplicates

    domains = ["brain_tumor_mri", "breastmnist_resaved"]
    plain = parse_protocol(tiny_raw(domains, data={"domains": domains, "image_size": 16, "channels": 1}))
    deduped = parse_protocol(
        tiny_raw(domains, data={"domains": domains, "image_size": 16, "channels": 1, "dedupe": True})
    )
    names = check_domains(plain, data_dir)
    a = load_domains(plain, names, data_dir)["brain_tumor_mri"]
    b = load_domains(deduped, names, data_dir)["brain_tumor_mri"]
    assert len(b.test.images) < len(a.test.images) - 200
    assert near_duplicates(b.test).groups == [] and near_duplicates(a.test).groups != []
