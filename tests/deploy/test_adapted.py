"""Adapted checkpoints: round trips for several methods, refusals, and the support-set checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from medmeta.deploy import adapt, load_adapted, load_model, load_support, load_trained, predict
from medmeta.deploy.adapted import AdaptedModel, TrainedModel
from medmeta.errors import CheckpointError, DataError
from medmeta.train.checkpoint import load_checkpoint, save_checkpoint, sign
from tests._helpers.deploy import png_folder, untrained_checkpoint


def test_adapted_checkpoint_round_trip_gives_the_same_probabilities(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    support = png_folder(tmp_path / "support")
    adapted = adapt(tiny_checkpoint, support, out=tmp_path / "adapted")
    loaded = load_adapted(tmp_path / "adapted.json")
    assert isinstance(load_model(tmp_path / "adapted.json"), AdaptedModel)
    assert isinstance(load_model(tiny_checkpoint), TrainedModel)
    assert loaded.class_names == ("class0", "class1", "class2")
    assert loaded.support_files[0] == "class0/0.png"
    queries = torch.from_numpy(load_support(support, image_size=32, channels=3).images)
    torch.testing.assert_close(adapted.probabilities(queries), loaded.probabilities(queries))
    meta = json.loads((tmp_path / "adapted.json").read_text())
    for key in ("method", "backbone", "config", "class_names", "input", "normalization", "medmeta_version"):
        assert key in meta, key
    assert meta["input"]["image_size"] == 32 and meta["input"]["channels"] == 3
    assert meta["source_checkpoint"]["sha256"] == json.loads(tiny_checkpoint.read_text())["sha256"]


@pytest.mark.parametrize(
    ("method", "options"),
    [("maml", {"n_way": 3, "inner_steps": 1, "eval_steps": 2}), ("finetune", {"steps": 3}), ("matching", {})],
)
def test_every_kind_of_method_is_rebuilt_exactly_from_its_adapted_checkpoint(
    tmp_path: Path, method: str, options: dict[str, object]
) -> None:
    ckpt = untrained_checkpoint(tmp_path, method, options)
    support = png_folder(tmp_path / "support", per_class=2, size=16)
    adapted = adapt(ckpt, support, out=tmp_path / "adapted")
    loaded = load_adapted(tmp_path / "adapted")
    images = adapted.support_images
    torch.testing.assert_close(adapted.logits(images), loaded.logits(images))


def test_maml_predicts_each_image_independently_of_the_others(tmp_path: Path) -> None:
    ckpt = untrained_checkpoint(tmp_path, "maml", {"n_way": 3, "inner_steps": 1})
    adapted = adapt(ckpt, png_folder(tmp_path / "support", per_class=2, size=16))
    images = adapted.support_images
    torch.testing.assert_close(adapted.logits(images)[:2], adapted.logits(images[:2]))
    torch.testing.assert_close(adapted.logits(images)[:1], adapted.logits(images[:1]))


def test_a_meta_trained_checkpoint_is_not_an_adapted_one(tiny_checkpoint: Path) -> None:
    with pytest.raises(
        CheckpointError, match="meta-trained checkpoint, not an adapted one: run `medmeta adapt"
    ):
        load_adapted(tiny_checkpoint)


def test_truncated_adapted_weights_are_refused(tmp_path: Path, tiny_checkpoint: Path) -> None:
    adapt(tiny_checkpoint, png_folder(tmp_path / "s"), out=tmp_path / "adapted")
    weights = tmp_path / json.loads((tmp_path / "adapted.json").read_text())["weights"]
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated or altered"):
        load_adapted(tmp_path / "adapted.json")


def test_truncated_adapted_json_is_refused(tmp_path: Path, tiny_checkpoint: Path) -> None:
    adapt(tiny_checkpoint, png_folder(tmp_path / "s"), out=tmp_path / "adapted")
    path = tmp_path / "adapted.json"
    path.write_text(path.read_text()[:200])
    with pytest.raises(CheckpointError, match="truncated or not JSON"):
        load_adapted(path)


def test_an_adapted_checkpoint_from_another_version_is_refused(tmp_path: Path, tiny_checkpoint: Path) -> None:
    adapt(tiny_checkpoint, png_folder(tmp_path / "s"), out=tmp_path / "adapted")
    path = tmp_path / "adapted.json"
    meta = json.loads(path.read_text())
    meta["adapted_version"] = 99
    path.write_text(json.dumps(sign(meta)))  # re-signed: the version check itself is what is tested
    with pytest.raises(CheckpointError, match=r"version 99 .* adapt again with this medmeta"):
        load_adapted(path)


@pytest.mark.parametrize(
    ("field", "edit"),
    [
        ("class_names", lambda v: list(reversed(v))),
        ("image_shape", lambda v: [v[0], 64, 64]),
        ("normalization", lambda v: {**v, "mean": [0.0] * len(v["mean"])}),
    ],
)
def test_an_adapted_checkpoint_whose_description_was_edited_is_refused_naming_the_field(
    tmp_path: Path, tiny_checkpoint: Path, field: str, edit: Any
) -> None:
    adapt(tiny_checkpoint, png_folder(tmp_path / "s"), out=tmp_path / "adapted")
    path = tmp_path / "adapted.json"
    meta = json.loads(path.read_text())
    meta[field] = edit(meta[field])
    path.write_text(json.dumps(meta, indent=2))
    with pytest.raises(CheckpointError, match=f"edited after it was saved \\(changed '{field}'\\)"):
        load_model(path)


def test_a_predictor_that_cannot_be_rebuilt_is_refused(tmp_path: Path, tiny_checkpoint: Path) -> None:
    adapt(tiny_checkpoint, png_folder(tmp_path / "s"), out=tmp_path / "ok")
    state, meta = load_checkpoint(tmp_path / "ok.json")
    state["adapted.support_logits"] = state["adapted.support_logits"] + 1.0  # what the weights cannot give
    keep = {k: v for k, v in meta.items() if k not in ("format", "format_version", "weights", "sha256")}
    save_checkpoint(tmp_path / "bad", state, keep)
    with pytest.raises(CheckpointError, match="disagrees with the stored one"):
        load_adapted(tmp_path / "bad.json")


def test_a_class_with_too_few_images_is_refused(tmp_path: Path) -> None:
    support = png_folder(tmp_path / "s", per_class=2)
    with pytest.raises(
        DataError, match=r"too few readable images for class\(es\) class0 \(2\), class1 \(2\)"
    ):
        load_support(support, image_size=32, channels=3, min_shots=3)


def test_an_empty_class_folder_is_refused(tmp_path: Path) -> None:
    support = png_folder(tmp_path / "s")
    (support / "empty_class").mkdir()
    (support / "empty_class" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"class folder .*empty_class holds no image"):
        load_support(support, image_size=32, channels=3)


def test_a_single_class_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="needs at least two class folders"):
        load_support(png_folder(tmp_path / "s", classes=1), image_size=32, channels=3)


def test_a_split_folder_is_refused_with_the_split_to_use(tmp_path: Path) -> None:
    png_folder(tmp_path / "s" / "train")
    png_folder(tmp_path / "s" / "test")
    with pytest.raises(DataError, match=r"split into test, train: give one split"):
        load_support(tmp_path / "s", image_size=32, channels=3)


def test_mixed_sizes_channels_and_bit_depths_become_the_model_input(tmp_path: Path) -> None:
    root = tmp_path / "s"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    Image.fromarray(np.full((50, 70, 3), 200, np.uint8)).save(root / "a" / "rgb.png")
    Image.fromarray(np.full((30, 30), 9000, np.uint16)).save(root / "a" / "grey16.png")
    Image.fromarray(np.full((100, 40), 30, np.uint8)).save(root / "b" / "grey.jpg")
    ds = load_support(root, image_size=32, channels=3)
    assert ds.images.shape == (3, 3, 32, 32) and ds.images.dtype == np.uint8
    grey1 = load_support(root, image_size=24, channels=1)
    assert grey1.images.shape == (3, 1, 24, 24)


def test_unreadable_queries_are_skipped_and_reported(tmp_path: Path, tiny_checkpoint: Path) -> None:
    model = adapt(tiny_checkpoint, png_folder(tmp_path / "s"))
    queries = png_folder(tmp_path / "q", per_class=1)
    (queries / "class0" / "broken.png").write_bytes(b"\x89PNG not really")
    result = predict(model, queries)
    assert len(result) == 3
    assert [Path(p).name for p, _ in result.skipped] == ["broken.png"]
    assert "cannot read image" in result.skipped[0][1]
    with pytest.raises(DataError, match=r"broken\.png"):
        predict(model, queries, skip_bad=False)


def test_predictions_csv_has_one_row_per_image_and_a_probability_per_class(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    model = adapt(tiny_checkpoint, png_folder(tmp_path / "s"))
    files = sorted((png_folder(tmp_path / "q", per_class=2)).rglob("*.png"))
    result = predict(model, files, out=tmp_path / "p.csv")
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert lines[0] == "file,predicted_class,p_class0,p_class1,p_class2"
    assert len(lines) == 1 + len(files)
    rows = [ln.split(",") for ln in lines[1:]]
    assert [r[0] for r in rows] == [str(f) for f in files]
    for r in rows:
        probs = [float(x) for x in r[2:]]
        assert abs(sum(probs) - 1) < 1e-4
        assert r[1] == f"class{int(np.argmax(probs))}"
    assert result.predicted_names() == [r[1] for r in rows]


def test_the_base_model_of_an_adapted_checkpoint_can_be_adapted_again(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    adapt(tiny_checkpoint, png_folder(tmp_path / "s"), out=tmp_path / "adapted")
    base = load_trained(tmp_path / "adapted.json")
    again = adapt(base, png_folder(tmp_path / "s2", classes=2))
    assert again.class_names == ("class0", "class1")


def test_a_meta_trained_checkpoint_describes_the_model_it_holds(tiny_checkpoint: Path) -> None:
    meta = json.loads(tiny_checkpoint.read_text())
    assert meta["method"] == "protonet" and meta["backbone"] == "conv4"
    assert meta["input"] == {"channels": 3, "image_size": 32}
    assert meta["normalization"] == {"mean": [0.5] * 3, "std": [0.25] * 3}
    assert meta["config"]["method"]["name"] == "protonet" and meta["medmeta_version"]
    assert len(next(iter(meta["train_classes"].values()))) == 8


def test_an_adapted_checkpoint_still_loads_as_its_meta_trained_method(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    from medmeta.pipeline import load_method

    adapt(tiny_checkpoint, png_folder(tmp_path / "s"), out=tmp_path / "adapted")
    method, _cfg, meta = load_method(tmp_path / "adapted.json")
    original, _c, _m = load_method(tiny_checkpoint)
    assert meta["kind"] == "adapted"
    for (k, a), (_, b) in zip(method.state_dict().items(), original.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, msg=k)
