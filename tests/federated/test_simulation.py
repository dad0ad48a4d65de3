"""A short federated run on two real sites in Flower's simulation engine, end to end through the report."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from medmeta.federated.protocol import Job, serve
from medmeta.federated.run import run_federated
from medmeta.federated.sites import load_site
from tests._helpers.federated import TWO_SITES, DirectExchange, small_config

pytestmark = [pytest.mark.data, pytest.mark.slow]


def test_simulation_run_matches_the_sites_called_directly_and_writes_the_table(
    data_dir: Path, tmp_path: Path
) -> None:
    cfg = small_config(data_dir, site_only=["maml"])
    out = tmp_path / "fed"
    result = run_federated(cfg, out=out, command="medmeta federated (test)")
    assert [r["strategy"] for r in result.rows] == ["fedmeta_maml", "site_only/maml"]
    fed = result.rows[0]
    assert fed["n_way"] == 2 and len(fed["history"]) == 1
    # the same job with the sites called in this process: Flower's transport changes nothing
    sites = [load_site(name, cfg.data) for name in TWO_SITES]
    job = Job("fedmeta_maml", "maml", None, "batch", None, cfg.model_dump(mode="json"))
    direct = serve(job, DirectExchange(sites))
    for name in TWO_SITES:
        acc = fed["sites"][name]["accuracy"]["2"]
        assert len(acc) == 4 and all(0.0 <= a <= 1.0 for a in acc)
        assert acc == direct["sites"][name]["accuracy"]["2"]
    assert fed["history"] == direct["history"]
    rows = list(csv.DictReader((out / "federated.csv").open()))
    assert {(r["row"], r["site"]) for r in rows} == {
        (s, n) for s in ("fedmeta_maml", "site_only/maml") for n in TWO_SITES
    }
    assert "| fedmeta_maml |" in (out / "federated.md").read_text()
    assert json.loads((out / "federated.json").read_text())["sites"][TWO_SITES[0]]["train_images"] == len(
        sites[0].train
    )
