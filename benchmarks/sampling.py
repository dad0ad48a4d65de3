"""Episode sampling throughput: 5-way 5-shot 15-query episodes at 64x64 on one thread.

Prints one JSON line with ``episodes_per_s`` (medmeta). For comparison in the same run it also times the
approach of easyfsl/learn2learn-style samplers in plain torch (per-item dataset indexing and stacking),
re-implemented here as ``per_item_episodes_per_s`` so that no peer venv is needed.

Usage: python benchmarks/sampling.py [--episodes 3000] [--dataset blood_pbc]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from medmeta.data.registry import load_dataset
from medmeta.data.synthetic import make_synthetic
from medmeta.tasks.sampler import EpisodeSampler


def per_item_sampling(images: np.ndarray, by_class: list[np.ndarray], n: int, seed: int) -> None:
    """What a map-style Dataset + batch sampler + collate does: one tensor per item, then stack."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        classes = rng.choice(len(by_class), 5, replace=False)
        items = []
        for c in classes:
            for i in rng.choice(by_class[c], 20, replace=False):
                items.append(torch.from_numpy(images[i]))  # __getitem__
        torch.stack(items)  # collate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--episodes", type=int, default=3000)
    parser.add_argument("--dataset", default="blood_pbc")
    args = parser.parse_args()
    torch.set_num_threads(1)
    try:
        ds = load_dataset(args.dataset, image_size=64)
        source = args.dataset
    except ValueError:
        ds = make_synthetic(image_size=64)
        source = "synthetic (MEDMETA_DATA has no " + args.dataset + ")"
    sampler = EpisodeSampler(ds, 5, 5, 15, seed=0)
    for i in range(50):  # warm-up
        sampler.episode(i)
    t0 = time.perf_counter()
    for i in range(args.episodes):
        sampler.episode(i)
    medmeta_s = time.perf_counter() - t0
    by_class = [ds.indices_of_class(c) for c in range(ds.n_classes)]
    t0 = time.perf_counter()
    per_item_sampling(ds.images, by_class, args.episodes, seed=0)
    per_item_s = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "benchmark": "sampling",
                "dataset": source,
                "episode": "5-way 5-shot 15-query 3x64x64 uint8",
                "threads": 1,
                "episodes": args.episodes,
                "episodes_per_s": round(args.episodes / medmeta_s, 1),
                "per_item_episodes_per_s": round(args.episodes / per_item_s, 1),
                "speed_ratio": round(per_item_s / medmeta_s, 2),
                "target_episodes_per_s": 2000,
                "cpu_count": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
