"""medmeta ProtoNet vs easyfsl PrototypicalNetworks: same Conv4 weights, same episodes, one run.

5-way 5-shot 15-query episodes of 3x64x64 blood-cell images (blood_pbc, all 8 classes; the synthetic set
with a note when MEDMETA_DATA has no blood_pbc). medmeta uses its Euclidean distance (easyfsl's) and runs
here; easyfsl runs in the peers venv (``$MEDMETA_PEERS_VENV``, default ``<repo>/.venv-peers``) through
``benchmarks/_easyfsl_worker.py``, one after the other, never at the same time. Weights (safetensors),
images and episode indices go through a temporary directory.

- Training: both start from the same initial weights and train on the same episodes (Adam, lr 1e-3);
  medmeta through its training loop (`medmeta.train.loop.fit`), easyfsl through its episodic step. A few
  warm-up episodes are not timed.
- Evaluation: both load medmeta's trained weights, in eval mode (batch-norm running statistics, so the
  support/query batching does not matter), on the same 1,000 episodes. medmeta's time is one
  `medmeta.eval.evaluate` call (sampling, embedding cache, all five metrics); easyfsl's is its evaluate loop.

Prints one JSON line: ``medmeta_train_eps``, ``easyfsl_train_eps``, ``train_speed_ratio`` (medmeta /
easyfsl), ``medmeta_eval_s``, ``easyfsl_eval_s``, ``eval_speed_ratio`` (easyfsl / medmeta) and
``accuracy_diff`` (medmeta minus easyfsl, in points). Targets: train ratio >= 1, eval ratio >= 20,
``|accuracy_diff| <= 0.1``.

Usage: python benchmarks/protonet.py [--train-episodes 40] [--eval-episodes 1000] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from medmeta._accel.allocator import keep_freed_memory
from medmeta.config import TrainConfig
from medmeta.data.registry import load_dataset
from medmeta.data.synthetic import make_synthetic
from medmeta.errors import MedmetaError
from medmeta.eval.evaluate import evaluate
from medmeta.methods.metric.protonet import ProtoNet, ProtoNetOptions
from medmeta.models.backbones import Conv4
from medmeta.pipeline import default_normalization
from medmeta.tasks.sampler import EpisodeSampler, MultiDomainSampler
from medmeta.train.loop import fit
from medmeta.train.sources import EpisodicBatches

REPO = Path(__file__).resolve().parents[1]
N_WAY, N_SHOT, N_QUERY, SIZE = 5, 5, 15, 64


def peers_python() -> Path:
    venv = Path(os.environ.get("MEDMETA_PEERS_VENV", REPO / ".venv-peers"))
    python = venv / "bin" / "python"
    if not python.exists():
        sys.exit(
            f"no peers venv at {venv}: build it with ../shared/peers/setup-peers.sh or set MEDMETA_PEERS_VENV"
        )
    return python


def indices(sampler: EpisodeSampler, episodes: range) -> tuple[np.ndarray, np.ndarray]:
    pairs = [sampler.indices(i)[:2] for i in episodes]
    return np.stack([s for s, _ in pairs]), np.stack([q for _, q in pairs])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train-episodes", type=int, default=40, help="timed training episodes")
    parser.add_argument("--warmup", type=int, default=3, help="untimed training episodes first")
    parser.add_argument("--eval-episodes", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dataset", default="blood_pbc")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as the CLI does at start: an entry point may, the library never does
    python = peers_python()

    try:
        data = load_dataset(args.dataset, image_size=SIZE, channels=3)
        source = args.dataset
    except MedmetaError:
        data = make_synthetic(image_size=SIZE, channels=3)
        source = f"synthetic (no {args.dataset} under MEDMETA_DATA)"
    norm = default_normalization(3)

    torch.manual_seed(0)
    backbone = Conv4(in_channels=3, image_size=SIZE)
    init_state = {k: v.detach().clone().contiguous() for k, v in backbone.state_dict().items()}
    method = ProtoNet(backbone, ProtoNetOptions(distance="euclidean"))

    # training: episode i of fit is episode i of the single domain's sampler
    n_train = args.warmup + args.train_episodes
    train_sampler = MultiDomainSampler([data], N_WAY, N_SHOT, N_QUERY, seed=1, n_episodes=n_train)
    cfg = TrainConfig(epochs=1, episodes_per_epoch=args.warmup, val_episodes=0, device="cpu", lr=1e-3)
    fit(
        copy.deepcopy(method), EpisodicBatches(train_sampler, cfg, prepare=norm), cfg
    )  # warm-up on a copy, same episodes
    cfg = TrainConfig(epochs=1, episodes_per_epoch=n_train, val_episodes=0, device="cpu", lr=1e-3)
    t0 = time.perf_counter()
    result = fit(method, EpisodicBatches(train_sampler, cfg, prepare=norm), cfg)
    medmeta_train_eps = n_train / (time.perf_counter() - t0)
    del result

    # evaluation on the same 1,000 episodes
    eval_sampler = EpisodeSampler(data, N_WAY, N_SHOT, N_QUERY, seed=2, n_episodes=args.eval_episodes)
    t0 = time.perf_counter()
    evaluated = evaluate(method, eval_sampler, prepare=norm)
    medmeta_eval_s = time.perf_counter() - t0

    with tempfile.TemporaryDirectory(prefix="medmeta-bench-") as tmp:
        work = Path(tmp)
        save_file(init_state, str(work / "init.safetensors"))
        trained = {k: v.detach().clone().contiguous() for k, v in method.backbone.state_dict().items()}
        save_file(trained, str(work / "trained.safetensors"))
        np.save(work / "images.npy", data.images)
        for name, sampler, episodes in (
            ("train", train_sampler.samplers[0], range(n_train)),
            ("eval", eval_sampler, range(args.eval_episodes)),
        ):
            support, query = indices(sampler, episodes)
            np.save(work / f"{name}_support.npy", support)
            np.save(work / f"{name}_query.npy", query)
        (work / "config.json").write_text(
            json.dumps(
                {
                    "n_way": N_WAY,
                    "n_shot": N_SHOT,
                    "n_query": N_QUERY,
                    "channels": 3,
                    "image_size": SIZE,
                    "mean": list(norm.mean),
                    "std": list(norm.std),
                    "lr": 1e-3,
                    "threads": args.threads,
                    "warmup": args.warmup,
                }
            )
        )
        worker = REPO / "benchmarks" / "_easyfsl_worker.py"
        done = subprocess.run(
            [str(python), str(worker), str(work)], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            sys.exit(f"easyfsl worker failed:\n{done.stderr}")
        peer = json.loads(done.stdout.strip().splitlines()[-1])

    print(
        json.dumps(
            {
                "benchmark": "protonet",
                "dataset": source,
                "episode": f"{N_WAY}-way {N_SHOT}-shot {N_QUERY}-query 3x{SIZE}x{SIZE}",
                "threads": args.threads,
                "train_episodes": args.train_episodes,
                "eval_episodes": args.eval_episodes,
                "medmeta_train_eps": round(medmeta_train_eps, 2),
                "easyfsl_train_eps": round(peer["train_eps"], 2),
                "train_speed_ratio": round(medmeta_train_eps / peer["train_eps"], 2),
                "medmeta_eval_s": round(medmeta_eval_s, 2),
                "easyfsl_eval_s": round(peer["eval_s"], 2),
                "eval_speed_ratio": round(peer["eval_s"] / medmeta_eval_s, 1),
                "medmeta_accuracy": round(100 * evaluated.accuracy, 2),
                "easyfsl_accuracy": round(100 * peer["accuracy"], 2),
                "accuracy_diff": round(100 * (evaluated.accuracy - peer["accuracy"]), 3),
                "medmeta_accuracy_ci95": round(100 * evaluated.ci95, 2),
                "cpu_count": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
