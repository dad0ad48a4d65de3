"""Self-supervised pretraining: the pooled images, seeded view batches, the loop's after-step hook, the
pretrain checkpoint, and a resumed run ending with the weights of an uninterrupted one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from medmeta.config import PretrainConfig, make_pretrain_config
from medmeta.data.datasets import ImageDataset
from medmeta.errors import ConfigError, DataError
from medmeta.pipeline import default_normalization
from medmeta.train.checkpoint import load_checkpoint
from medmeta.train.self_supervised import UnlabelledImages, ViewBatches

pytest.importorskip("lightly", reason="lightly is not installed (pip install 'medmeta[ssl]')")
from medmeta.pipeline.pretrain import pretrain


def domain(n: int, name: str, size: int = 16, seed: int = 0) -> ImageDataset:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 1, size, size), dtype=np.uint8)
    return ImageDataset(images=images, labels=np.zeros(n, dtype=np.int64), class_names=("c",), domain=name)


def tiny_cfg(method: str = "simclr", epochs: int = 3, **train: Any) -> PretrainConfig:
    return make_pretrain_config(
        {
            "data": {"domains": ["synthetic"], "image_size": 16, "channels": 1, "max_images": 24},
            "model": {"backbone": "conv4"},
            "ssl": {
                "method": method,
                "batch_size": 8,
                "steps_per_epoch": 2,
                "hidden_dim": 16,
                "output_dim": 8,
                "bottleneck_dim": 4,
                "memory_bank_size": 16,
                "local_crops": 1,
            },
            "train": {"epochs": epochs, "device": "cpu", **train},
        }
    )


def test_the_pool_counts_images_per_domain_and_chooses_max_images_with_the_seed() -> None:
    a, b = domain(10, "a"), domain(6, "b")
    pool = UnlabelledImages.build([a, b])
    assert len(pool) == 16 and pool.images_per_domain() == {"a": 10, "b": 6}
    assert torch.equal(pool.gather(np.array([11, 0])), torch.from_numpy(np.stack([b.images[1], a.images[0]])))
    few = UnlabelledImages.build([a, b], max_images=5, seed=1)
    assert len(few) == 5 and sum(few.images_per_domain().values()) == 5
    assert np.array_equal(few.pick, UnlabelledImages.build([a, b], max_images=5, seed=1).pick)


def test_volumes_and_a_single_image_are_refused_in_one_line() -> None:
    volume = ImageDataset(
        images=np.zeros((3, 1, 4, 4, 4), np.uint8),
        labels=np.zeros(3, np.int64),
        class_names=("c",),
        domain="v",
    )
    with pytest.raises(DataError, match="v holds 3-D volumes"):
        UnlabelledImages.build([volume])
    with pytest.raises(DataError, match="at least 2 images"):
        UnlabelledImages.build([domain(1, "one")])


def test_batch_b_depends_only_on_the_seed_and_b() -> None:
    pool = UnlabelledImages.build([domain(20, "a")])
    cfg = tiny_cfg("dino")
    first = ViewBatches.from_config(pool, cfg, prepare=default_normalization(1))
    second = ViewBatches.from_config(pool, cfg, prepare=default_normalization(1))
    a, b = first.batch(3, torch.device("cpu")), second.batch(3, torch.device("cpu"))
    assert len(a) == 3 and a[0].shape == (8, 1, 16, 16)  # 2 global views + 1 local view
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], first.batch(4, torch.device("cpu"))[0])
    assert not torch.equal(a[0], a[1])  # two different views of the same images
    simclr = ViewBatches.from_config(pool, tiny_cfg("simclr"), prepare=default_normalization(1))
    assert len(simclr.batch(0, torch.device("cpu"))) == 2


def test_an_epoch_is_one_pass_unless_steps_per_epoch_is_set() -> None:
    pool = UnlabelledImages.build([domain(20, "a")])
    cfg = tiny_cfg().model_copy(update={"ssl": tiny_cfg().ssl.model_copy(update={"steps_per_epoch": None})})
    assert ViewBatches.from_config(pool, cfg, prepare=default_normalization(1)).steps_per_epoch == 3


def test_pretrain_writes_a_pretrain_checkpoint_holding_the_backbone(tmp_path: Path) -> None:
    method, result, _ = pretrain(tiny_cfg(epochs=1), out_dir=tmp_path)
    state, meta = load_checkpoint(tmp_path / "best.json")
    assert meta["kind"] == "pretrain" and meta["ssl"] == "simclr" and meta["backbone"] == "conv4"
    assert meta["images_per_domain"] == {"synthetic": 24} and meta["input"]["channels"] == 1
    assert meta["normalization"] == {"mean": [0.5], "std": [0.25]}
    for k, v in method.backbone.state_dict().items():
        assert torch.equal(state[f"backbone.{k}"], v), k
    assert (tmp_path / "config.yaml").is_file() and len(result.history) == 1


@pytest.mark.parametrize("name", ["moco", "dino"])
def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(name: str, tmp_path: Path) -> None:
    class StopAt3:
        def start(self, description: str, total: int) -> None:
            if description == "epoch 3/3":
                raise KeyboardInterrupt

        def advance(self, n: int = 1, **info: Any) -> None:
            pass

        def stop(self) -> None:
            pass

    cfg = tiny_cfg(name, lr_schedule="cosine")
    whole, _, _ = pretrain(cfg, out_dir=tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        pretrain(cfg, out_dir=tmp_path / "cut", progress=StopAt3())
    assert len(json.loads((tmp_path / "cut" / "history.json").read_text())) == 2
    resumed, _, _ = pretrain(cfg, out_dir=tmp_path / "cut", resume=True)
    a, b = whole.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_bad_pretrain_values_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"ssl\.method='mae'"):
        make_pretrain_config({"ssl": {"method": "mae"}})
    with pytest.raises(ConfigError, match=r"augment\.crop_scale"):
        make_pretrain_config({"augment": {"crop_scale": [0.9, 0.2]}})
    with pytest.raises(ConfigError, match=r"data\.domains"):
        make_pretrain_config({"data": {"domains": []}})


def test_the_config_shown_in_docs_ssl_md_is_valid() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "ssl.md").read_text()
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    cfg = make_pretrain_config(yaml.safe_load(block), source="docs/ssl.md")
    assert cfg.ssl.method == "byol" and cfg.data.domains == ["blood_pbc", "brain_tumor_mri@train"]
