"""The benchmark's representation axis: the raw-pixel baseline, frozen entries, self-supervised pretraining per
held-out domain (settings a and b) shared by the methods that start from it, with workers too."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from medmeta.bench import run
from medmeta.bench.cells import PretrainJob, TrainJob, enumerate_jobs
from medmeta.bench.executor import DependencyQueue
from medmeta.bench.jobs import eval_seed, load_benchmark_domains
from medmeta.bench.protocol import parse_protocol
from medmeta.errors import ConfigError
from medmeta.tasks.sampler import EpisodeSampler
from tests._helpers.bench import read_records, synthetic_folders, tiny_protocol, tiny_raw
from tests._helpers.paths import REPO

SSL = {
    "name": "ssl",
    "ssl": "simclr",
    "options": {"batch_size": 16, "hidden_dim": 32, "output_dim": 16},
    "train": {"epochs": 1},
    "max_images": 48,
}


def _raw(domains: list[str], **changes: Any) -> dict[str, Any]:
    return tiny_raw(domains, **changes)


@pytest.mark.parametrize(
    ("changes", "fragments"),
    [
        ({"methods": [{"name": "maml", "backbone": "pixels", "frozen": True}]}, ["frozen: true", "protonet"]),
        ({"methods": [{"name": "protonet", "frozen": True}]}, ["needs something already learned"]),
        ({"methods": [{"name": "protonet", "representation": "nope"}]}, ["representation 'nope'"]),
        (
            {
                "representations": [SSL],
                "methods": [{"name": "protonet", "representation": "ssl", "backbone": "resnet12"}],
            },
            ["brings its own backbone"],
        ),
        ({"representations": [SSL, SSL]}, ["representation name is used twice"]),
        ({"methods": [{"name": "protonet", "backbone": "pixels:0"}]}, ["pixels:G"]),
        ({"backbone": "vgg"}, ["unknown backbone 'vgg'"]),
        ({"representations": [{**SSL, "ssl": "mae"}]}, ["ssl"]),
        ({"representations": [{**SSL, "train": {"seed": 3}}]}, ["top-level 'seeds'"]),
    ],
)
def test_bad_representation_settings_are_one_clear_error(changes: dict, fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        parse_protocol(_raw(["a", "b"], **changes))
    message = str(err.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_protocols_without_the_new_fields_keep_their_fingerprint() -> None:
    raw = tiny_raw(["a", "b"])
    del raw["raw_pixels"]
    old = parse_protocol(raw)
    assert (
        old.fingerprint() == parse_protocol({**raw, "raw_pixels": {"enabled": True, "grid": 8}}).fingerprint()
    )
    assert old.fingerprint() != parse_protocol({**raw, "raw_pixels": {"enabled": False}}).fingerprint()
    assert [m.label for m in old.all_methods][-2:] == ["pixels_ncm", "pixels_logreg"]


def test_setting_b_pools_every_domain_once_setting_a_once_per_held_out_domain() -> None:
    reps = [{**SSL, "name": "a"}, {**SSL, "name": "b", "sees_held_out": True}]
    methods = [{"name": "protonet", "label": f"p_{r}", "representation": r} for r in ("a", "b")]
    p = parse_protocol(_raw(["x", "y", "z"], representations=reps, methods=methods, seeds=[0, 1]))
    jobs = enumerate_jobs(p)
    pre = [j for j in jobs if isinstance(j, PretrainJob)]
    assert [(j.representation.name, j.scope, j.domains, j.seed) for j in pre if j.seed == 0] == [
        ("a", "x", ("y", "z"), 0),
        ("a", "y", ("x", "z"), 0),
        ("a", "z", ("x", "y"), 0),
        ("b", "all", ("x", "y", "z"), 0),
    ]
    position = {j.key: i for i, j in enumerate(jobs)}
    for j in jobs:
        if isinstance(j, TrainJob):
            assert j.needs is not None and position[j.needs] < position[j.key]
            assert j.needs.startswith(f"pretrain|{j.method.representation}|")
            assert j.needs.endswith(f"|{j.seed}")


def test_the_dependency_queue_holds_a_job_until_what_it_needs_has_finished() -> None:
    p = parse_protocol(
        _raw(
            ["x", "y"],
            representations=[SSL],
            methods=[{"name": "protonet", "representation": "ssl"}],
            reference={"enabled": False},
        )
    )
    jobs = [j for j in enumerate_jobs(p) if not isinstance(j, TrainJob) or j.method.label == "protonet"]
    queue = DependencyQueue(jobs)
    first, second = queue.take(), queue.take()  # the two setting-(a) pretrainings
    assert {first, second} == {0, 1} and queue.take() is None and queue.waiting
    queue.finished(1)  # y's pretraining: its held-out y job may start, x's may not
    nxt = queue.take()
    assert nxt is not None and jobs[nxt].domain == "y"  # type: ignore[union-attr]
    assert queue.take() is None
    queue.finished(0)
    last = queue.take()
    assert last is not None and jobs[last].domain == "x" and not queue.waiting  # type: ignore[union-attr]


@pytest.mark.data
def test_raw_pixel_cells_are_nearest_class_means_of_pooled_pixels(data_dir: Path, tmp_path: Path) -> None:
    """Every episode's accuracy equals a hand-made nearest class mean on the images pooled to 4 x 4."""
    domains = ["breastmnist_resaved", "pneumoniamnist_modified"]
    p = tiny_protocol(
        domains,
        data={"domains": domains, "image_size": 28},
        raw_pixels={"grid": 4},
        methods=[{"name": "protonet", "label": "mine", "backbone": "pixels:4", "frozen": True}],
    )
    result = run(p, tmp_path / "run", data_dir=data_dir)
    records = read_records(tmp_path / "run")
    assert not [r for r in records if r["kind"] == "train"]  # frozen: nothing trained
    cells = {(r["method"], r["domain"], r["shots"]): r for r in records if r["kind"] == "cell"}
    assert {m for m, _, _ in cells} == {"mine", "pixels_ncm", "pixels_logreg"}
    splits = load_benchmark_domains(p, data_dir)
    for domain in domains:
        for k in p.eval.shots:
            record = cells[("pixels_ncm", domain, k)]
            sampler = EpisodeSampler(
                splits[domain].test,
                None,
                k,
                record["n_query"],
                seed=eval_seed(p, 0),
                n_episodes=p.eval.episodes,
            )
            hand = []
            for i in range(p.eval.episodes):
                e = sampler.episode(i)
                feats = [
                    F.adaptive_avg_pool2d(x.float() / 255, 4).flatten(1)
                    for x in (e.support_images, e.query_images)
                ]
                means = torch.stack([feats[0][e.support_labels == c].mean(0) for c in range(sampler.n_way)])
                hand.append((torch.cdist(feats[1], means).argmin(1) == e.query_labels).float().mean().item())
            np.testing.assert_allclose(record["per_episode"]["accuracy"], hand, atol=1e-6)
            assert cells[("mine", domain, k)]["per_episode"] == record["per_episode"]
    rows = list(csv.DictReader((tmp_path / "run" / "summary.csv").open()))
    assert {"pixels_ncm", "pixels_logreg"} <= {r["method"] for r in rows}
    assert result.outcome.trainings_run == 0


@pytest.fixture(scope="module")
def ssl_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    pytest.importorskip("lightly", reason="lightly is not installed (pip install 'medmeta[ssl]')")
    root = tmp_path_factory.mktemp("ssl")
    domains = synthetic_folders(root / "data")
    raw = tiny_raw(
        domains,
        representations=[{**SSL, "sees_held_out": True}],
        methods=[
            {"name": "protonet", "label": "frozen", "representation": "ssl", "frozen": True},
            {"name": "protonet", "label": "tuned", "representation": "ssl"},
        ],
    )
    run(parse_protocol(raw), root / "w1")
    return raw, root / "w1"


def test_one_pretraining_serves_every_held_out_domain_in_setting_b(
    ssl_run: tuple[dict[str, Any], Path],
) -> None:
    _, out = ssl_run
    records = read_records(out)
    (pre,) = [r for r in records if r["kind"] == "pretrain"]
    assert pre["scope"] == "all" and pre["images"] == 48 and len(pre["domains"]) == 2
    start = out / pre["checkpoint"]
    assert start.is_file()
    tuned = [r for r in records if r["kind"] == "train"]
    assert [r["method"] for r in tuned] == ["tuned", "tuned"]  # the frozen entry trains nothing
    for r in tuned:
        meta = json.loads((out / r["checkpoint"]).read_text())
        assert meta["backbone_start"]["checkpoint"] == str(start)
    cells = [r for r in records if r["kind"] == "cell"]
    assert len(cells) == 2 * 2 * 2
    frozen = {r["domain"]: r["metrics"]["accuracy"]["mean"] for r in cells if r["method"] == "frozen"}
    assert all(0.0 < v <= 1.0 for v in frozen.values())


def test_workers_wait_for_the_pretraining_and_give_the_same_summary(
    ssl_run: tuple[dict[str, Any], Path], tmp_path: Path
) -> None:
    raw, w1 = ssl_run
    result = run(parse_protocol(raw), tmp_path / "w2", workers=2)
    assert (tmp_path / "w2" / "summary.csv").read_text() == (w1 / "summary.csv").read_text()
    assert result.outcome.cells_run == 8
    resumed = run(parse_protocol(raw), tmp_path / "w2", workers=2)
    assert resumed.outcome.cells_run == 0 and resumed.outcome.cells_skipped == 8


def test_a_timm_resnet_is_pretrained_from_random_weights_at_the_protocols_size(tmp_path: Path) -> None:
    """`pretrained: false` + `input_size`: a self-supervised ResNet-18 from scratch (no hub), run at the
    protocol's 16 px instead of timm's 224; defaults leave existing fingerprints alone."""
    pytest.importorskip("lightly", reason="lightly is not installed (pip install 'medmeta[ssl]')")
    pytest.importorskip("timm", reason="timm is not installed (pip install 'medmeta[pretrained]')")
    from medmeta.config import make_pretrain_config

    rep = {**SSL, "sees_held_out": True, "backbone": "timm:resnet18", "pretrained": False, "input_size": 16}
    domains = synthetic_folders(tmp_path / "data")
    raw = tiny_raw(
        domains,
        representations=[rep],
        methods=[{"name": "protonet", "label": "frozen_r18", "representation": "ssl", "frozen": True}],
        eval={"shots": [2], "n_query": 4, "episodes": 4, "seed": 7},
    )
    protocol = parse_protocol(raw)
    section = protocol.representations[0].pretrain_section("conv4", 16, 3, 0)
    assert section["model"] == {"backbone": "timm:resnet18", "pretrained": False, "input_size": 16}
    model = make_pretrain_config(section).model
    assert (model.pretrained, model.input_size) == (False, 16)

    plain = {**SSL, "sees_held_out": True, "backbone": "timm:resnet18"}
    same = parse_protocol({**raw, "representations": [{**plain, "pretrained": True, "input_size": None}]})
    assert same.fingerprint() == parse_protocol({**raw, "representations": [plain]}).fingerprint()
    assert protocol.fingerprint() != same.fingerprint()
    shipped = yaml.safe_load((REPO / "configs" / "cross_domain_ssl.yaml").read_text())
    assert parse_protocol(shipped).fingerprint() == "9853015a3a0972e8"  # as before these fields existed

    run(protocol, tmp_path / "run")  # no network here: pretrained weights would fail to download
    records = read_records(tmp_path / "run")
    (pre,) = [r for r in records if r["kind"] == "pretrain"]
    meta = json.loads((tmp_path / "run" / pre["checkpoint"]).read_text())
    assert meta["backbone"] == "timm:resnet18"
    assert meta["backbone_record"]["preprocessing"]["size"] == 16
    cells = [r for r in records if r["kind"] == "cell"]
    assert len(cells) == 2 and all(0.0 <= r["metrics"]["accuracy"]["mean"] <= 1.0 for r in cells)
