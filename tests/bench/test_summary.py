"""Summary rows from result records: pooled seeds, CIs, best and tied methods, CSV text."""

from __future__ import annotations

import csv
import io
import math

import numpy as np
import pytest

from medmeta.bench.evaluation import METRICS, class_confusion
from medmeta.bench.summary import REFERENCE, REFERENCE_FEATURES, Row, mark_column, summarize, summary_csv
from medmeta.eval.metrics import mean_ci
from tests._helpers.bench import tiny_protocol


def cell(method: str, domain: str, shots: int, seed: int, acc: list[float]) -> dict:
    values = {m: list(acc) for m in METRICS}
    values["ece"] = [1 - a for a in acc]
    return {
        "kind": "cell",
        "key": f"cell|{method}|{domain}|{shots}|{seed}",
        "method": method,
        "domain": domain,
        "shots": shots,
        "seed": seed,
        "n_way": 2,
        "n_query": 5,
        "episodes": len(acc),
        "per_episode": values,
    }


def test_seeds_are_pooled_and_the_ci_is_over_all_their_episodes() -> None:
    p = tiny_protocol(["a", "b"], seeds=[0, 1], data={"domains": ["a", "b"], "held_out": ["a"]})
    s0, s1 = [0.5, 0.6, 0.7], [0.9, 0.8, 1.0]
    rows = summarize(p, [cell("protonet", "a", 1, 1, s1), cell("protonet", "a", 1, 0, s0)])
    assert len(rows) == 1
    r = rows[0]
    assert (r.method, r.domain, r.shots, r.seeds, r.episodes) == ("protonet", "a", 1, 2, 6)
    pooled = np.array(s0 + s1)
    assert r.metrics["accuracy"][0] == pytest.approx(pooled.mean())
    assert r.metrics["accuracy"][1] == pytest.approx(1.96 * pooled.std(ddof=1) / math.sqrt(6))


def row(method: str, mean: float, ci: float) -> Row:
    return Row(method, "a", 1, 2, 5, 1, 10, {m: (mean, ci) for m in METRICS})


def test_best_is_marked_and_overlapping_cis_are_ties() -> None:
    rows = [row("x", 0.80, 0.02), row("y", 0.77, 0.02), row("z", 0.70, 0.02)]
    mark_column(rows, "accuracy")
    assert [r.marks.get("accuracy", "") for r in rows] == ["best", "tie", ""]
    mark_column(rows, "ece")  # lower is better
    assert [r.marks.get("ece", "") for r in rows] == ["", "", "best"]


def test_a_lone_best_has_no_tie() -> None:
    rows = [row("x", 0.9, 0.01), row("y", 0.5, 0.01)]
    mark_column(rows, "accuracy")
    assert [r.marks.get("accuracy", "") for r in rows] == ["best", ""]


def test_csv_has_one_line_per_row_with_reference_last_per_domain() -> None:
    p = tiny_protocol(["a", "b"], data={"domains": ["a", "b"], "held_out": ["a"]})
    ref = {
        "kind": "reference",
        "key": "reference|a|0",
        "domain": "a",
        "seed": 0,
        "classes": ["u", "v"],
        "n_test": 4,
        "per_image_correct": [1, 1, 0, 1],
        "metrics": {m: {"mean": 0.75, "ci95": float("nan")} for m in METRICS},
    }
    records = [cell("protonet", "a", 1, 0, [0.5, 0.7]), cell("simpleshot", "a", 3, 0, [0.6, 0.6]), ref]
    lines = list(csv.DictReader(io.StringIO(summary_csv(summarize(p, records)))))
    assert [(x["method"], x["shots"]) for x in lines] == [
        ("protonet", "1"),
        ("simpleshot", "3"),
        (REFERENCE, "all"),
    ]
    assert float(lines[0]["accuracy"]) == pytest.approx(0.6)
    assert lines[0]["accuracy_mark"] == "best"
    mean, ci = mean_ci([1, 1, 0, 1])
    assert float(lines[2]["accuracy"]) == pytest.approx(mean)
    assert float(lines[2]["accuracy_ci95"]) == pytest.approx(ci, abs=1e-6)
    assert lines[2]["auc_ci95"] == ""


def test_the_references_features_get_a_row_per_shots_pooled_over_seeds_and_never_marked_best() -> None:
    p = tiny_protocol(["a", "b"], seeds=[0, 1], data={"domains": ["a", "b"], "held_out": ["a"]})

    def ref(seed: int, acc1: list[float], acc3: list[float]) -> dict:
        few = [cell("x", "a", k, seed, acc) | {"shots": k} for k, acc in ((1, acc1), (3, acc3))]
        return {
            "kind": "reference",
            "key": f"reference|a|{seed}",
            "domain": "a",
            "seed": seed,
            "classes": ["u", "v"],
            "n_test": 2,
            "per_image_correct": [1, 0],
            "metrics": {m: {"mean": 0.5, "ci95": float("nan")} for m in METRICS},
            "few_shot": [
                {k: f[k] for k in ("shots", "n_way", "n_query", "episodes", "per_episode")} for f in few
            ],
        }

    records = [
        cell("protonet", "a", 1, 0, [0.5, 0.7]),
        cell("protonet", "a", 3, 0, [0.6, 0.6]),
        ref(1, [1.0, 0.8], [1.0, 1.0]),
        ref(0, [0.9, 0.9], [0.7, 0.9]),
    ]
    rows = summarize(p, records)
    assert [(r.method, r.shots) for r in rows] == [
        ("protonet", 1),
        (REFERENCE_FEATURES, 1),
        ("protonet", 3),
        (REFERENCE_FEATURES, 3),
        (REFERENCE, "all"),
    ]
    one = rows[1]
    assert (one.seeds, one.episodes) == (2, 4)
    assert one.metrics["accuracy"][0] == pytest.approx(np.mean([0.9, 0.9, 1.0, 0.8]))
    assert one.seed_accuracy == pytest.approx({0: 0.9, 1: 0.9})
    assert one.marks == {} and rows[0].marks["accuracy"] == "best"  # a ceiling, not a competitor
    assert rows[3].metrics["accuracy"][0] == pytest.approx(0.9)


def test_confusion_maps_episode_labels_to_dataset_classes() -> None:
    import torch

    # two episodes of 2 classes; episode 2 lists dataset classes in the other order
    logits = torch.tensor([[[2.0, 0.0], [0.0, 2.0]], [[2.0, 0.0], [2.0, 0.0]]])  # (T=2, n_query=2, n_way=2)
    target = torch.tensor([[0, 1], [0, 1]])
    classes = np.array([[0, 1], [1, 0]])
    cm = class_confusion(logits, target, classes, 2)
    # episode 1: both right; episode 2: true 1 -> pred 1 (right), true 0 -> pred 1 (wrong)
    assert cm.tolist() == [[1, 1], [0, 2]]


def test_each_seed_keeps_its_own_mean_and_the_csv_their_spread() -> None:
    p = tiny_protocol(["a", "b"], seeds=[0, 1], data={"domains": ["a", "b"], "held_out": ["a"]})
    rows = summarize(p, [cell("protonet", "a", 1, 1, [0.9, 0.7]), cell("protonet", "a", 1, 0, [0.5, 0.7])])
    assert rows[0].seed_accuracy == pytest.approx({0: 0.6, 1: 0.8})
    assert rows[0].seed_sd == pytest.approx(np.std([0.6, 0.8], ddof=1))
    line = next(csv.DictReader(io.StringIO(summary_csv(rows))))
    assert float(line["accuracy_seed_sd"]) == pytest.approx(np.std([0.6, 0.8], ddof=1), abs=1e-6)
    one = summarize(p, [cell("protonet", "a", 1, 0, [0.5, 0.7])])
    assert math.isnan(one[0].seed_sd)
    assert next(csv.DictReader(io.StringIO(summary_csv(one))))["accuracy_seed_sd"] == ""


def test_seed_table_counts_the_seeds_where_the_pooled_best_is_best_alone() -> None:
    from medmeta.bench.report import seed_table

    p = tiny_protocol(["a", "b"], seeds=[0, 1, 2], data={"domains": ["a", "b"], "held_out": ["a"]})
    records = [
        # protonet: 0.60 / 0.90 / 0.60 -> pooled 0.70, best; simpleshot 0.65 / 0.65 / 0.65
        cell("protonet", "a", 1, 0, [0.6, 0.6]),
        cell("protonet", "a", 1, 1, [0.9, 0.9]),
        cell("protonet", "a", 1, 2, [0.6, 0.6]),
        *[cell("simpleshot", "a", 1, s, [0.65, 0.65]) for s in range(3)],
    ]
    rows = summarize(p, records)
    assert rows[0].marks["accuracy"] == "best"
    table = seed_table(p, rows)
    assert table is not None
    header, body = table
    assert header == ["method", "a 1-shot", "a 3-shot"]  # the protocol's shots are 1 and 3
    assert body[0] == ["protonet", "sd 17.32: 60.0 / 90.0 / 60.0", "—"]
    assert body[1] == ["simpleshot", "sd 0.00: 65.0 / 65.0 / 65.0", "—"]
    assert body[-1] == ["▲ also best in its seeds", "protonet: 1 of 3", "—"]
    assert seed_table(p, summarize(p, records[:1])) is None  # one seed: no spread to show


def test_the_spread_over_support_draws_is_the_per_episode_accuracy_spread() -> None:
    p = tiny_protocol(["a", "b"], seeds=[0, 1], data={"domains": ["a", "b"], "held_out": ["a"]})
    s0, s1 = [0.5, 0.6, 0.7, 0.2], [0.9, 0.8, 1.0, 0.4]
    (r,) = summarize(p, [cell("protonet", "a", 1, 0, s0), cell("protonet", "a", 1, 1, s1)])
    values = np.array(s0 + s1)
    sd, p10, p90 = r.episode_spread
    assert sd == pytest.approx(np.std(values, ddof=1))
    assert (p10, p90) == pytest.approx((np.percentile(values, 10), np.percentile(values, 90)))
    header = summary_csv([r]).splitlines()[0]
    assert header.endswith("accuracy_seed_sd,accuracy_episode_sd,accuracy_p10,accuracy_p90")
