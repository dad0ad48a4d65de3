"""medmeta SimCLR pretraining vs a plain lightly/torch loop: same Conv4, heads, loss and images, one JSON line.

medmeta: ``medmeta.train.loop.fit`` over ``ViewBatches`` (seeded batched views in torch: one affine resampling
per view, brightness/contrast, blur, noise) with ``SimCLR`` (lightly's ``SimCLRProjectionHead`` and
``NTXentLoss``). The peer: the loop lightly's SimCLR example writes (views made image by image with
torchvision transforms of the same kinds, as a DataLoader's collate would, then backbone, head, loss, Adam),
with the same backbone, head, loss, batch size and initial weights. Both use ``--threads`` torch threads.

Per library: ``--warmup`` steps, then ``--steps`` timed steps; ``*_images_per_s`` is the batch size over the
median step time (views made + forward + backward + optimiser step). ``*_views_ms`` is the median time to
make one batch's two views alone. Data: blood_pbc (RGB) under ``$MEDMETA_DATA`` (default
``<repo>/../shared/data``), else the synthetic set.

Usage: python benchmarks/ssl_pretrain.py [--steps 10] [--batch 64] [--size 64] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from medmeta.config import make_pretrain_config
from medmeta.data.registry import load_dataset
from medmeta.methods.self_supervised import SimCLR
from medmeta.models.backbones import Conv4
from medmeta.pipeline import default_normalization
from medmeta.train.loop import fit
from medmeta.train.self_supervised import UnlabelledImages, ViewBatches

REPO = Path(__file__).resolve().parents[1]


class StepTimes:
    """A progress hook that records the time of every finished step."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def start(self, description: str, total: int) -> None:
        self.stamps.append(time.perf_counter())

    def advance(self, n: int = 1, **info: Any) -> None:
        self.stamps.append(time.perf_counter())

    def stop(self) -> None:
        pass


def peer_views(images: torch.Tensor, cfg: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Two views per image, image by image, with torchvision (what a lightly transform does per sample)."""
    from torchvision.transforms import v2

    a = cfg.augment
    size = images.shape[-1]
    transform = v2.Compose(
        [
            v2.RandomResizedCrop(size, scale=a.crop_scale, antialias=True),
            v2.RandomHorizontalFlip(a.hflip),
            v2.RandomVerticalFlip(a.vflip),
            v2.RandomRotation(a.rotation),
            v2.ColorJitter(brightness=a.brightness, contrast=a.contrast),
            v2.RandomApply([v2.GaussianBlur(5, sigma=a.blur_sigma)], p=a.blur),
            v2.GaussianNoise(sigma=a.noise, clip=True),
            v2.Normalize([0.5] * images.shape[1], [0.25] * images.shape[1]),
        ]
    )
    x = images.float() / 255.0
    return (
        torch.stack([transform(img) for img in x]),
        torch.stack([transform(img) for img in x]),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dataset", default="blood_pbc")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = os.environ.get("MEDMETA_DATA") or str(REPO.parent / "shared" / "data")
    try:
        data = load_dataset(args.dataset, root=root, image_size=args.size, channels=3)
        source_name = args.dataset
    except ValueError:
        data = load_dataset("synthetic", image_size=args.size, channels=3)
        source_name = f"synthetic ({args.dataset} not found under MEDMETA_DATA)"
    steps = args.warmup + args.steps
    cfg = make_pretrain_config(
        {
            "data": {"image_size": args.size},
            "ssl": {"method": "simclr", "batch_size": args.batch, "steps_per_epoch": steps},
            "train": {"epochs": 1, "device": "cpu", "lr": 1e-3},
        }
    )
    torch.manual_seed(0)
    backbone = Conv4(3, image_size=args.size)
    method = SimCLR(backbone, backbone.out_features, cfg.ssl)
    peer_model = copy.deepcopy(method)  # the same initial backbone and head
    pool = UnlabelledImages.build([data])
    batches = ViewBatches.from_config(pool, cfg, prepare=default_normalization(3))

    # medmeta: the one training loop
    times = StepTimes()
    fit(method, batches, cfg.train, progress=times)
    medmeta_step = statistics.median(b - a for a, b in itertools.pairwise(times.stamps[args.warmup :]))
    views_ms = []
    for b in range(args.steps):
        t = time.perf_counter()
        batches.batch(b, torch.device("cpu"))
        views_ms.append(1000 * (time.perf_counter() - t))

    # the peer: lightly's example loop, with its own per-image views
    from lightly.loss import NTXentLoss

    backbone_p, head_p = peer_model.backbone, peer_model.projection_head
    criterion = NTXentLoss(temperature=cfg.ssl.temperature)
    params = list(backbone_p.parameters()) + list(head_p.parameters())
    optimizer = torch.optim.Adam(params, lr=cfg.train.lr)
    generator = torch.Generator().manual_seed(0)
    peer_times, peer_views_ms = [], []
    backbone_p.train()
    head_p.train()
    for s in range(steps):
        t = time.perf_counter()
        pick = torch.randperm(len(data), generator=generator)[: args.batch].numpy()
        x0, x1 = peer_views(torch.from_numpy(data.images[pick]), cfg)
        made = time.perf_counter()
        loss = criterion(head_p(backbone_p(x0)), head_p(backbone_p(x1)))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if s >= args.warmup:
            peer_times.append(time.perf_counter() - t)
            peer_views_ms.append(1000 * (made - t))
    import lightly

    print(
        json.dumps(
            {
                "benchmark": "ssl_simclr_conv4",
                "data": source_name,
                "batch": args.batch,
                "size": args.size,
                "channels": 3,
                "threads": args.threads,
                "steps": args.steps,
                "medmeta_images_per_s": round(args.batch / medmeta_step, 1),
                "peer_images_per_s": round(args.batch / statistics.median(peer_times), 1),
                "medmeta_views_ms": round(statistics.median(views_ms), 1),
                "peer_views_ms": round(statistics.median(peer_views_ms), 1),
                "lightly": lightly.__version__,
                "torch": torch.__version__,
                "loadavg_1m": round(os.getloadavg()[0], 2),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
