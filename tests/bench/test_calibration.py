"""Calibrated ECE in the benchmark: a temperature per (trained model, shots) fitted on the training domains'
validation episodes only, recorded with each cell; accuracy untouched."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from medmeta.bench import run
from medmeta.bench.summary import REFERENCES
from medmeta.eval.calibration import fit_pooled_temperature, fit_temperature
from tests._helpers.bench import read_records, tiny_protocol


def test_groups_of_different_widths_fit_one_temperature_as_if_each_were_alone() -> None:
    """Padding a 2-way group with a -inf column leaves its NLL as it was: a 2-way-only fit equals the padded
    fit when the 3-way group is scaled to agree."""
    g = torch.Generator().manual_seed(1)
    z2 = 3 * torch.randn(300, 2, generator=g)
    y2 = torch.multinomial(torch.softmax(z2 / 2.0, -1), 1, generator=g)[:, 0]
    alone = fit_temperature(z2, y2)
    padded = fit_pooled_temperature([z2], [y2])
    assert padded == pytest.approx(alone, rel=1e-6)
    z3 = 3 * torch.randn(300, 3, generator=g)
    y3 = torch.multinomial(torch.softmax(z3 / 2.0, -1), 1, generator=g)[:, 0]
    assert 1.5 < fit_pooled_temperature([z2, z3], [y2, y3]) < 2.6


@pytest.mark.data
def test_cells_record_a_temperature_fitted_away_from_the_test_domain(data_dir: Path, tmp_path: Path) -> None:
    domains = ["breastmnist_resaved", "pneumoniamnist_modified"]
    p = tiny_protocol(
        domains,
        data={"domains": domains, "image_size": 16},
        eval={
            "shots": [1, 3],
            "n_query": 5,
            "episodes": 30,
            "seed": 7,
            "calibration_episodes": 20,
            "loo_episodes": 10,
        },
    )
    run(p, tmp_path / "run", data_dir=data_dir)
    cells = [r for r in read_records(tmp_path / "run") if r["kind"] == "cell"]
    assert all(r["temperature"] is not None and 0.05 <= r["temperature"] <= 50 for r in cells)
    # the spread scale: fitted on the same validation episodes, for supports that can be held out
    assert {r["method_name"] for r in cells} <= {"protonet", "simpleshot"}
    for r in cells:
        if r["shots"] == 1:
            assert r["spread_scale"] is None and r["pooled_ece_loo_spread"] is None
        else:
            assert r["spread_scale"] > 0 and len(r["loo_temperatures_spread"]) == 10
            assert 0 <= r["pooled_ece_loo_spread"] <= 1
            assert np.isfinite(r["per_episode"]["ece_loo_spread"]).sum() == 10
    for r in cells:
        assert len(r["per_episode"]["ece_calibrated"]) == 30
        assert np.isfinite(r["per_episode"]["ece_calibrated"]).all()
    rows = list(csv.DictReader((tmp_path / "run" / "summary.csv").open()))
    assert all(row["ece_calibrated"] != "" for row in rows if row["method"] not in REFERENCES)
    assert "ECE cal. %" in (tmp_path / "run" / "report.md").read_text()
    assert "ECE LOO spread %" in (tmp_path / "run" / "report.md").read_text()
    assert all(
        row["ece_loo_spread"] != "" for row in rows if row["method"] not in REFERENCES and row["shots"] == "3"
    )

    off = tiny_protocol(
        domains,
        data={"domains": domains, "image_size": 16},
        eval={"shots": [1], "n_query": 5, "episodes": 12, "seed": 7, "calibration_episodes": 0},
    )
    run(off, tmp_path / "off", data_dir=data_dir)
    for r in read_records(tmp_path / "off"):
        if r["kind"] == "cell":
            assert r["temperature"] is None and all(math.isnan(v) for v in r["per_episode"]["ece_calibrated"])
