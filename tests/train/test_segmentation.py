"""Training every trainable segmenter briefly on real data, checkpoints, evaluation rows and the table."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import ClassVar, Literal

import pytest
import torch

from medmeta.config import SegConfig, make_seg_config
from medmeta.errors import CheckpointError, ConfigError, TrainingError
from medmeta.eval.segmentation import evaluate_segmenter, results_markdown
from medmeta.methods.segmentation import SEG_METHODS
from medmeta.methods.segmentation.base import FewShotSegmenter
from medmeta.methods.segmentation.baselines import SupportMean
from medmeta.pipeline.checks import check_segmenter_config
from medmeta.pipeline.segmentation import (
    CHECKPOINT_KIND,
    build_segmenter,
    load_seg_data,
    load_segmenter,
    train_segmenter,
    training_episodes,
)
from medmeta.tasks.segmentation import MaskSupport, SegEpisode, SegEpisodeSampler
from medmeta.train.checkpoint import save_checkpoint
from tests._helpers.segmentation import SMALL

TRAINABLE = [n for n, c in sorted(SEG_METHODS.items()) if c.training_source != "none"]


def config(root: Path, name: str, **train: object) -> SegConfig:
    return make_seg_config(
        {
            "data": {
                "data_dir": str(root),
                "image_size": 32,
                "train": ["ct", "em"],
                "test": ["ct:liver,spleen"],
            },
            "episodes": {"n_shot": 1, "n_query": 1},
            "method": {"name": name, "options": SMALL.get(name, {})},
            "train": {"epochs": 1, "episodes_per_epoch": 2, "val_episodes": 1, "device": "cpu", **train},
            "eval": {"episodes": 2, "shots": [1], "n_query": 1},
        }
    )


@pytest.mark.parametrize("name", TRAINABLE)
def test_training_saves_a_checkpoint_that_predicts_the_same(
    name: str, seg_root: Path, tmp_path: Path
) -> None:
    cfg = config(seg_root, name)
    data = load_seg_data(cfg)
    assert not set(data.train) & set(data.test)
    model = build_segmenter(cfg)
    meta = {"kind": CHECKPOINT_KIND, "method": name, "config": cfg.model_dump(mode="json")}
    result = train_segmenter(
        model, training_episodes(model, data, cfg), cfg.train, val_episodes=None, out_dir=tmp_path, meta=meta
    )
    assert result.best_checkpoint == tmp_path / "best.json" and len(result.history) == 1
    loaded, loaded_cfg, _ = load_segmenter(tmp_path / "best.json")
    assert loaded_cfg == cfg
    s = data.test["ct:liver"]
    with torch.no_grad():
        a = model.eval().adapt(MaskSupport(s.images[:1], s.masks[:1])).predict(s.images[1:3])
        b = loaded.adapt(MaskSupport(s.images[:1], s.masks[:1])).predict(s.images[1:3])
    torch.testing.assert_close(a, b)


def test_self_supervised_training_uses_superpixels_not_labels(seg_root: Path) -> None:
    cfg = config(seg_root, "ssl_alpnet")
    model = build_segmenter(cfg)
    source = training_episodes(model, load_seg_data(cfg), cfg)
    assert source(0).structure == "superpixel"


def test_evaluation_rows_and_table_cover_every_structure_and_shot(seg_root: Path) -> None:
    cfg = config(seg_root, "support_mean")
    data = load_seg_data(cfg, with_train=False)
    rows = evaluate_segmenter(
        SupportMean(), data.test, [1, 2], n_query=1, episodes=3, seed=0, method="support_mean"
    )
    assert [(r["structure"], r["n_shot"]) for r in rows] == [
        ("ct:liver", 1),
        ("ct:liver", 2),
        ("ct:spleen", 1),
        ("ct:spleen", 2),
    ]
    assert all(0.0 <= r["dice"] <= 1.0 and r["episodes"] == 3 for r in rows)
    again = evaluate_segmenter(
        SupportMean(), data.test, [1, 2], n_query=1, episodes=3, seed=0, method="support_mean"
    )
    assert rows == [r | {"adapt_seconds": a["adapt_seconds"]} for r, a in zip(again, rows, strict=True)]
    table = results_markdown(rows)
    assert "| support_mean | 2 |" in table and "ct:spleen" in table


def test_a_structure_too_small_for_the_shots_is_reported_not_sampled(seg_root: Path) -> None:
    cfg = config(seg_root, "support_mean")
    data = load_seg_data(cfg, with_train=False)
    rows = evaluate_segmenter(SupportMean(), data.test, [40], n_query=1, episodes=1, seed=0, method="m")
    assert all(r["episodes"] == 0 and "samples" in r["note"] for r in rows)
    assert "n/a" in results_markdown(rows)


def test_a_baseline_cannot_be_trained() -> None:
    with pytest.raises(TrainingError, match="no trainable parameter"):
        train_segmenter(SupportMean(), lambda i: None, make_seg_config({}).train)  # type: ignore[arg-type,return-value]


class _Diverging(FewShotSegmenter):
    training_source: ClassVar[Literal["labels", "superpixels", "none"]] = "labels"

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))

    def adapt(self, support: MaskSupport) -> SupportMean:  # type: ignore[override]
        raise NotImplementedError

    def episode_loss(self, episode: SegEpisode) -> torch.Tensor:
        return self.w * float("nan")


def test_a_nan_loss_stops_training_with_advice(seg_root: Path) -> None:
    cfg = config(seg_root, "panet")
    data = load_seg_data(cfg)
    with pytest.raises(TrainingError, match=r"lower train\.lr"):
        train_segmenter(_Diverging(), training_episodes(PANetLike(), data, cfg), cfg.train)


def PANetLike() -> FewShotSegmenter:
    return SEG_METHODS["panet"].from_options(SMALL["panet"])


def test_unknown_method_and_bad_options_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"unknown segmentation method 'unet'; choose one of .*alpnet"):
        check_segmenter_config(make_seg_config({"method": {"name": "unet"}}))
    with pytest.raises(ConfigError, match="inner_stepz"):
        check_segmenter_config(make_seg_config({"method": {"name": "maml", "options": {"inner_stepz": 3}}}))
    with pytest.raises(ConfigError, match="unknown segmentation method 'unet'"):
        build_segmenter(make_seg_config({"method": {"name": "unet"}}))


def test_a_classification_checkpoint_is_not_loaded_as_a_segmenter(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "best", {"w": torch.zeros(1)}, {"method": "protonet"})
    with pytest.raises(CheckpointError, match="not a segmentation checkpoint"):
        load_segmenter(path)


def test_the_table_can_show_hd95_and_rejects_other_metrics(seg_root: Path) -> None:
    cfg = config(seg_root, "support_mean")
    data = load_seg_data(cfg, with_train=False)
    rows = evaluate_segmenter(SupportMean(), data.test, [1], n_query=1, episodes=2, seed=0, method="m")
    assert f"{rows[0]['hd95']:.1f} ±" in results_markdown(rows, "hd95")
    with pytest.raises(ValueError, match="metric must be dice or hd95"):
        results_markdown(rows, "iou")


def _panet_run(root: Path, **train: object) -> tuple[dict[str, torch.Tensor], list[dict[str, float]]]:
    """Two epochs of a tiny PANet on CT structures (seed 3, meta-batches of 2, 1 validation episode)."""
    cfg = make_seg_config(
        {
            "data": {"data_dir": str(root), "image_size": 32, "train": ["ct"], "test": ["ct:liver"]},
            "episodes": {"n_shot": 1, "n_query": 1},
            "method": {"name": "panet", "options": SMALL["panet"]},
            "train": {
                "epochs": 2,
                "episodes_per_epoch": 2,
                "meta_batch": 2,
                "val_episodes": 1,
                "device": "cpu",
                "seed": 3,
                **train,
            },
        }
    )
    data = load_seg_data(cfg)
    model = build_segmenter(cfg)
    val = SegEpisodeSampler({k: s for k, s in data.train.items() if len(s) >= 2}, 1, 1, 4)
    result = train_segmenter(model, training_episodes(model, data, cfg), cfg.train, val_episodes=val)
    return model.state_dict(), result.history


def _weights_hash(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k, v in sorted(state.items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def test_a_default_segmentation_run_reproduces_the_weights_of_the_former_segmentation_loop(
    seg_root: Path,
) -> None:
    # 3e433a76786b8c7b: the same run through seg/train.py's fit_segmenter before segmentation training moved
    # to medmeta.train.loop.fit (commit f4fa3b4, one CPU thread); the history matched it too
    state, history = _panet_run(seg_root)
    assert _weights_hash(state) == "3e433a76786b8c7b"
    assert [round(r["train_loss"], 4) for r in history] == [4.3663, 5.346]


def test_a_cosine_lr_schedule_changes_a_segmentation_run(seg_root: Path) -> None:
    # no validation: both runs keep their last epoch (the first epoch's single step is the same in both)
    constant, constant_history = _panet_run(seg_root, val_episodes=0)
    cosine, cosine_history = _panet_run(seg_root, val_episodes=0, lr_schedule="cosine")
    assert [r["lr"] for r in constant_history] == [1e-3, 1e-3]
    assert [r["lr"] for r in cosine_history] == pytest.approx([5e-4, 0.0], abs=1e-12)
    assert any(not torch.equal(constant[k], cosine[k]) for k in constant)
