"""``medmeta score``: an adapted model on a labelled folder of real brain MRI, its metrics against the
predictions, support images left out, and one-line errors."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests._helpers.cli import assert_one_line_error, run

CLASSES = ("glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor")


def brain_support(data_dir: Path, root: Path, per_class: int, classes: tuple[str, ...] = CLASSES) -> Path:
    """The first `per_class` brain MRI training images of each class as ``root/CLASS/*``."""
    brain = data_dir / "classification" / "brain_tumor_mri"
    for cls in classes:
        (root / cls).mkdir(parents=True)
        for f in sorted((brain / "train" / cls).glob("*.jpg"))[:per_class]:
            shutil.copy(f, root / cls / f.name)
    return root


@pytest.mark.data
def test_score_matches_the_predictions_and_leaves_support_images_out(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    brain = data_dir / "classification" / "brain_tumor_mri"
    support, labelled = tmp_path / "support", tmp_path / "labelled"
    for cls in CLASSES:
        (support / cls).mkdir(parents=True)
        (labelled / cls).mkdir(parents=True)
        train = sorted((brain / "train" / cls).glob("*.jpg"))
        for f in train[:5]:
            shutil.copy(f, support / cls / f.name)
        for f in sorted((brain / "test" / cls).glob("*.jpg"))[:6]:
            shutil.copy(f, labelled / cls / f.name)
    shutil.copy(sorted((brain / "train" / "no_tumor").glob("*.jpg"))[0], labelled / "no_tumor" / "copy.jpg")
    code, _, err = run(
        capsys, "adapt", "--backbone", "pixels", "--image-size", "32", "--channels", "1",
        "--support", str(support), "--out", str(tmp_path / "model"),
    )  # fmt: skip
    assert code == 0, err
    code, out, err = run(
        capsys, "score", "--model", str(tmp_path / "model.json"), "--images", str(labelled),
        "--out", str(tmp_path / "scores.csv"),
    )  # fmt: skip
    assert code == 0, err
    assert "left out" in err and "copy.jpg" in err and "support images" in err
    rows = list(csv.DictReader((tmp_path / "scores.csv").open()))
    assert len(rows) == 4 * 6 and not any(r["file"].endswith("copy.jpg") for r in rows)
    correct = np.array([int(r["correct"]) for r in rows])
    assert all((r["true_class"] == r["predicted_class"]) == bool(int(r["correct"])) for r in rows)
    assert f"scored 24 image(s) of {labelled}: accuracy {100 * correct.mean():.1f}%" in out
    recalls = {c: np.mean([int(r["correct"]) for r in rows if r["true_class"] == c]) for c in CLASSES}
    assert f"balanced accuracy {100 * np.mean(list(recalls.values())):.1f}%" in out
    for c in CLASSES:
        assert f"{c} {100 * recalls[c]:.1f}%" in out
    probs = np.array([[float(r[f"p_{c}"]) for c in CLASSES] for r in rows])
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)

    (labelled / "unknown_class").mkdir()
    shutil.copy(sorted((brain / "test" / "no_tumor").glob("*.jpg"))[0], labelled / "unknown_class" / "a.jpg")
    code, _, err = run(
        capsys, "score", "--model", str(tmp_path / "model.json"), "--images", str(labelled),
        "--out", str(tmp_path / "s2.csv"),
    )  # fmt: skip
    assert_one_line_error(code, err, "unknown_class", "does not know", "glioma_tumor")
    assert not (tmp_path / "s2.csv").exists()
    code, _, err = run(
        capsys, "score", "--model", str(tmp_path / "model.json"), "--images", str(support),
        "--out", str(tmp_path / "scores.csv"),
    )  # fmt: skip
    assert_one_line_error(code, err, "already exists", "--overwrite")


@pytest.mark.data
def test_predict_names_support_images_and_evaluate_refuses_an_adapted_model(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    support = brain_support(data_dir, tmp_path / "support", 3, CLASSES[:2])
    code, _, err = run(
        capsys, "adapt", "--backbone", "pixels", "--image-size", "32", "--support", str(support),
        "--out", str(tmp_path / "model"),
    )  # fmt: skip
    assert code == 0, err
    code, _, err = run(
        capsys, "predict", "--model", str(tmp_path / "model.json"), "--images", str(support / CLASSES[0]),
        "--out", str(tmp_path / "p.csv"),
    )  # fmt: skip
    assert code == 0, err
    assert err.count("is one of the model's support images") == 3
    code, _, err = run(
        capsys, "evaluate", "--model", str(tmp_path / "model.json"), "--test", "brain_tumor_mri"
    )
    assert_one_line_error(code, err, "adapted to its own support set", "medmeta score")


@pytest.mark.data
def test_adapt_loo_predicts_each_support_image_from_the_others(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The leave-one-out count equals nearest class means computed by hand without each image."""
    from medmeta.deploy.adapted import load_adapted
    from medmeta.deploy.stability import leave_one_out

    support = brain_support(data_dir, tmp_path / "support", 4)
    code, out, err = run(
        capsys, "adapt", "--backbone", "pixels:4", "--image-size", "32", "--support", str(support),
        "--out", str(tmp_path / "model"), "--loo",
    )  # fmt: skip
    assert code == 0, err
    model = load_adapted(tmp_path / "model.json")
    x = model.base.normalization(model.support_images).reshape(16, 3, 4, 8, 4, 8).mean(dim=(3, 5)).flatten(1)
    y = model.support_labels
    hand = 0
    for i in range(16):
        keep = torch.arange(16) != i
        means = torch.stack([x[keep & (y == c)].mean(0) for c in range(4)])
        hand += int(torch.cdist(x[i : i + 1], means).argmin() == y[i])
    loo = leave_one_out(model)
    assert loo.held_out == 16 and loo.correct == hand
    low, high = loo.interval()
    assert low <= loo.accuracy <= high
    assert f"leave-one-out on the support: {hand}/16 correct" in out


def test_temperature_scaling_finds_the_temperature_that_generated_the_labels() -> None:
    """Labels drawn from softmax(z / 2.5): the fitted T is close to 2.5, and NLL is lowest there."""
    from medmeta.eval.calibration import fit_temperature, nll

    g = torch.Generator().manual_seed(0)
    z = 4 * torch.randn(4000, 5, generator=g)
    y = torch.multinomial(torch.softmax(z / 2.5, -1), 1, generator=g)[:, 0]
    t = fit_temperature(z, y)
    assert abs(t - 2.5) < 0.2
    assert nll(z, y, t) <= min(nll(z, y, 1.0), nll(z, y, 2.0), nll(z, y, 3.0))
    with pytest.raises(ValueError, match="n >= 2"):
        fit_temperature(z[:1], y[:1])


@pytest.mark.data
def test_adapt_calibrates_on_leave_one_out_predictions_and_predict_uses_it(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from medmeta.deploy.adapted import load_adapted
    from medmeta.deploy.stability import leave_one_out
    from medmeta.eval.calibration import fit_temperature

    support = brain_support(data_dir, tmp_path / "support", 5)
    args = ["adapt", "--backbone", "pixels", "--image-size", "32", "--support", str(support)]
    code, out, err = run(capsys, *args, "--out", str(tmp_path / "cal"))
    assert code == 0, err
    assert "probabilities calibrated: temperature" in out
    code, _, err = run(capsys, *args, "--out", str(tmp_path / "raw"), "--no-calibrate")
    assert code == 0, err
    cal, raw = load_adapted(tmp_path / "cal.json"), load_adapted(tmp_path / "raw.json")
    assert raw.temperature == 1.0
    loo = leave_one_out(raw)
    assert cal.temperature == pytest.approx(fit_temperature(loo.logits, torch.from_numpy(loo.true)))
    queries = torch.from_numpy(np.stack([cal.support_images[0].numpy()]))
    torch.testing.assert_close(cal.logits(queries), raw.logits(queries))  # same model, same argmax
    torch.testing.assert_close(
        cal.probabilities(queries), torch.softmax(raw.logits(queries) / cal.temperature, -1)
    )


@pytest.mark.data
def test_a_trained_protonet_records_its_spread_scale_and_adapt_shrinks_the_fit_towards_it(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], tiny_checkpoint: Path
) -> None:
    """`train` fits the spread scale on its validation episodes and signs it into best.json; `adapt`
    shrinks the support's leave-one-out fit towards scale x spread (`medmeta.eval.spread`)."""
    import json

    from medmeta.deploy.adapted import load_adapted
    from medmeta.deploy.stability import leave_one_out
    from medmeta.errors import CheckpointError
    from medmeta.eval.calibration import fit_temperature
    from medmeta.eval.spread import spread_temperature
    from medmeta.train.checkpoint import amend_checkpoint, load_checkpoint

    _, meta = load_checkpoint(tiny_checkpoint)  # verified: the amended description is signed
    scale = meta["calibration"]["spread_scale"]
    assert scale > 0 and meta["calibration"]["episodes"] >= 4

    support = brain_support(data_dir, tmp_path / "support", 5)
    code, out, err = run(
        capsys, "adapt", "--model", str(tiny_checkpoint), "--support", str(support), "--out", str(tmp_path / "m")
    )  # fmt: skip
    assert code == 0, err
    assert f"shrunk towards the support's spread times the scale fitted in training ({scale:.3g})" in out
    model = load_adapted(tmp_path / "m.json")
    loo = leave_one_out(model)
    z, y = loo.logits, torch.from_numpy(loo.true)
    assert model.temperature == pytest.approx(spread_temperature(z, y, scale), rel=1e-6)
    assert model.temperature != pytest.approx(fit_temperature(z, y), rel=1e-3)

    # the amended field is covered by the checksum like every other, and the file's own fields cannot be amended
    copy = tmp_path / "copy"
    shutil.copytree(tiny_checkpoint.parent, copy)
    with pytest.raises(ValueError, match="cannot change"):
        amend_checkpoint(copy / "best.json", {"sha256": "0" * 64})
    edited = json.loads((copy / "best.json").read_text())
    edited["calibration"]["spread_scale"] = 1000.0
    (copy / "best.json").write_text(json.dumps(edited))
    with pytest.raises(CheckpointError, match="calibration"):
        load_checkpoint(copy / "best.json")
