"""easyfsl side of benchmarks/protonet.py; runs in the peers venv (easyfsl 1.5.0), never imported by medmeta.

Usage: .venv-peers/bin/python benchmarks/_easyfsl_worker.py WORK_DIR

WORK_DIR (written by benchmarks/protonet.py) holds ``config.json``, ``images.npy`` (uint8, N x C x H x W),
``train_support.npy``/``train_query.npy`` and ``eval_support.npy``/``eval_query.npy`` (dataset indices per
episode, class-major), ``init.safetensors`` and ``trained.safetensors`` (Conv4 weights). Prints one JSON line:
``train_eps``, ``eval_s`` and ``accuracy``.

The backbone is medmeta's own Conv4 class (imported from ``<repo>/src`` so the architecture is the same
code), wrapped in easyfsl's ``PrototypicalNetworks``. ``easyfsl.utils`` and ``easyfsl.samplers`` import
pandas, which the peers venv does not have, so the training step follows easyfsl's README/notebook loop and
the evaluation reproduces ``easyfsl.utils.evaluate`` / ``evaluate_on_one_task`` statement for statement
(without tqdm). Images are normalised once up front and episodes are sliced from that tensor, which is
cheaper than easyfsl's per-item DataLoader: any advantage goes to easyfsl.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, os.environ.get("MEDMETA_PEERS_SHIM", str(REPO.parent / "shared" / "peers")))  # tv_cpu_shim
sys.path.insert(0, str(REPO / "src"))  # medmeta's Conv4 (torch-only module)

import torch  # noqa: E402
import tv_cpu_shim  # noqa: E402, F401  (before easyfsl.methods, which imports torchvision)
from easyfsl.methods import PrototypicalNetworks  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from medmeta.models.backbones import Conv4  # noqa: E402

_DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32}


def read_safetensors(path: Path) -> dict[str, Tensor]:
    """Minimal reader of the safetensors format (the peers venv lacks the package)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    body = memoryview(raw)[8 + n :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        array = np.frombuffer(body[begin:end], dtype=_DTYPES[info["dtype"]]).reshape(info["shape"])
        out[name] = torch.from_numpy(array.copy())
    return out


def episodes(images: Tensor, support: np.ndarray, query: np.ndarray, n_way: int, n_shot: int, n_query: int):  # type: ignore[no-untyped-def]
    """(support_images, support_labels, query_images, query_labels) per episode, class-major like easyfsl."""
    support_labels = torch.arange(n_way).repeat_interleave(n_shot)
    query_labels = torch.arange(n_way).repeat_interleave(n_query)
    for s, q in zip(support, query, strict=True):
        yield images[torch.from_numpy(s)], support_labels, images[torch.from_numpy(q)], query_labels


def build_model(state: dict[str, Tensor], cfg: dict) -> PrototypicalNetworks:  # type: ignore[type-arg]
    backbone = Conv4(in_channels=cfg["channels"], image_size=cfg["image_size"])
    backbone.load_state_dict(state, strict=True)
    return PrototypicalNetworks(backbone)


def train_step(model: PrototypicalNetworks, optimizer: torch.optim.Optimizer, s, sl, q, ql) -> float:  # type: ignore[no-untyped-def]
    """easyfsl's episodic training step (README / notebooks)."""
    optimizer.zero_grad()
    model.process_support_set(s, sl)
    scores = model(q)
    loss = nn.functional.cross_entropy(scores, ql)
    loss.backward()
    optimizer.step()
    return float(loss.item())


def main() -> None:
    work = Path(sys.argv[1])
    cfg = json.loads((work / "config.json").read_text())
    torch.set_num_threads(cfg["threads"])
    n_way, n_shot, n_query = cfg["n_way"], cfg["n_shot"], cfg["n_query"]
    raw = torch.from_numpy(np.load(work / "images.npy"))
    shape = (1, -1) + (1,) * (raw.ndim - 2)
    mean = torch.tensor(cfg["mean"]).view(shape)
    std = torch.tensor(cfg["std"]).view(shape)
    images = (raw.float() / 255.0 - mean) / std  # (N, C, H, W) normalised once

    # training throughput, from medmeta's initial weights
    model = build_model(read_safetensors(work / "init.safetensors"), cfg)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    train = list(
        episodes(
            images,
            np.load(work / "train_support.npy"),
            np.load(work / "train_query.npy"),
            n_way,
            n_shot,
            n_query,
        )
    )
    warmup = cfg["warmup"]
    for ep in train[:warmup]:
        train_step(model, optimizer, *ep)
    t0 = time.perf_counter()
    for ep in train[warmup:]:
        train_step(model, optimizer, *ep)
    train_s = time.perf_counter() - t0

    # evaluation with medmeta's trained weights: easyfsl.utils.evaluate, statement for statement
    model = build_model(read_safetensors(work / "trained.safetensors"), cfg)
    support_idx, query_idx = np.load(work / "eval_support.npy"), np.load(work / "eval_query.npy")
    t0 = time.perf_counter()
    total_predictions = 0
    correct_predictions = 0
    model.eval()
    with torch.no_grad():
        for support_images, support_labels, query_images, query_labels in episodes(
            images, support_idx, query_idx, n_way, n_shot, n_query
        ):
            model.process_support_set(support_images, support_labels)
            predictions = model(query_images).detach().data
            correct_predictions += (torch.max(predictions, 1)[1] == query_labels).sum().item()
            total_predictions += len(query_labels)
    eval_s = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "train_eps": (len(train) - warmup) / train_s,
                "eval_s": eval_s,
                "accuracy": correct_predictions / total_predictions,
            }
        )
    )


if __name__ == "__main__":
    main()
