"""Frozen-feature evaluation with a pretrained-size backbone: 1,000 5-way 5-shot 15-query episodes, ProtoNet
on timm's ResNet-18 at 128 px (blood_pbc under ``$MEDMETA_DATA``; else the synthetic set).

Issue 18's target: evaluating the episodes takes no longer than embedding the images once plus 5 s on 2
cores. Printed in one JSON line: ``embed_s`` (every image of the set through the backbone once),
``eval_s`` (``medmeta.eval.evaluate`` with its embedding cache: embeds what the episodes use, then scores
all episodes from the cache), ``overhead_s = eval_s - embed_s`` and ``target_met``; and, in the same run,
what evaluating episode by episode costs (the way easyfsl's and learn2learn's evaluation loops run: each
episode's support and query images through the backbone), timed on ``--naive-episodes`` episodes and
extrapolated to all of them (``naive_eval_s``). Weights are random (``--no-pretrained``): speed does not
depend on their values, and this machine cannot download them.

Usage: python benchmarks/frozen_eval.py [--episodes 1000] [--size 128] [--threads 2] [--backbone timm:resnet18]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from medmeta.config import ModelConfig
from medmeta.data.registry import load_dataset
from medmeta.data.synthetic import make_synthetic
from medmeta.errors import MedmetaError
from medmeta.eval.cache import embed_images
from medmeta.eval.evaluate import evaluate
from medmeta.methods.metric.protonet import ProtoNet
from medmeta.models.factory import make_backbone
from medmeta.pipeline import default_normalization
from medmeta.tasks.sampler import EpisodeSampler


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--naive-episodes", type=int, default=20)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dataset", default="blood_pbc")
    parser.add_argument("--backbone", default="timm:resnet18")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    try:
        data = load_dataset(args.dataset, image_size=args.size, channels=3)
        source = args.dataset
    except MedmetaError:
        data = make_synthetic(image_size=args.size, channels=3)
        source = f"synthetic (no {args.dataset} under MEDMETA_DATA)"
    norm = default_normalization(3)
    torch.manual_seed(0)
    # the network runs at the images' side (not its weights' 224): input_size moves its preprocessing there
    model = ModelConfig(backbone=args.backbone, pretrained=False, input_size=args.size)
    backbone = make_backbone(model, in_channels=3, spatial_dims=2, image_size=args.size, normalization=norm)
    method = ProtoNet(backbone).eval()
    sampler = EpisodeSampler(data, 5, 5, 15, seed=2, n_episodes=args.episodes)

    t0 = time.perf_counter()
    embed_images(method, data.images, prepare=norm)
    embed_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    result = evaluate(method, sampler, prepare=norm)
    eval_s = time.perf_counter() - t0

    n_naive = min(args.naive_episodes, args.episodes)
    t0 = time.perf_counter()
    evaluate(method, sampler, prepare=norm, n_episodes=n_naive, use_cache=False)
    naive_eval_s = (time.perf_counter() - t0) * args.episodes / n_naive

    print(
        json.dumps(
            {
                "benchmark": "frozen_eval",
                "dataset": source,
                "images": len(data),
                "backbone": args.backbone,
                "size": args.size,
                "episodes": args.episodes,
                "threads": args.threads,
                "embed_s": round(embed_s, 2),
                "eval_s": round(eval_s, 2),
                "overhead_s": round(eval_s - embed_s, 2),
                "target_met": eval_s <= embed_s + 5.0,
                "naive_eval_s": round(naive_eval_s, 1),
                "speedup_vs_naive": round(naive_eval_s / eval_s, 1),
                "accuracy": round(100 * result.accuracy, 2),
                "cpu_count": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
