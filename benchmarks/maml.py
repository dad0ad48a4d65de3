"""medmeta MAML vs learn2learn 0.2.0 MAML: same Conv4, weights and tasks, one run, one JSON line per config.

Configs: second and first order x 1 and 5 shots x 1 and 5 inner steps; 5-way, 15 queries per class,
meta-batch 4, inner lr 0.4, Adam (lr 1e-3) outer step, Conv4 (64 channels) + linear head on 28x28 grey
blood-cell images (blood_pbc under ``$MEDMETA_DATA``, default ``<repo>/../shared/data``; else the synthetic set).

Each library runs in its own subprocess, one after the other (never two at once), so each peak memory
(``VmHWM`` of the process: imports, model, data and training) is its own: medmeta with this
interpreter, learn2learn with the peers venv's (``benchmarks/_peers.py``). learn2learn runs its canonical
loop (``clone``, ``adapt`` per step, ``backward`` per task). Both get ``--threads`` torch threads; medmeta
uses them as it does by default (``task_threads=0``: the tasks of a meta-batch on concurrent threads with
one intra-op thread each, in both orders on Conv4's compiled fused path; second order through PyTorch's
ops, ``MEDMETA_KERNELS=torch``, one task at a time with intra-op parallelism, to stay within
learn2learn's memory), learn2learn through intra-op parallelism. To time one task at a time:
``--medmeta-options '{"task_threads": 1}'``.

Per config: a warm-up meta-iteration, then timed ones; ``*_its_per_s`` is 1 / median time. The meta-
gradients of the first iteration (same weights, same tasks) are compared: ``grad_max_abs_diff``.
Also printed: ``*_base_mib`` (process peak before the first iteration) and the load average, since the
machine may be shared.

Usage: python benchmarks/maml.py [--iters 5] [--threads 2] [--only second] [--dataset blood_pbc]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
N_WAY, N_QUERY, META_BATCH, INNER_LR, SIZE = 5, 15, 4, 0.4, 28
CONFIGS = [(order, shots, steps) for order in ("second", "first") for shots in (1, 5) for steps in (1, 5)]


def _peak_mib() -> float:
    """This process's own peak resident memory since it started (``VmHWM``).

    Not ``ru_maxrss``: Linux carries that across ``fork`` + ``exec``, so a worker would report its parent's
    peak (the orchestrator's torch import) when that is larger than its own.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _time(step: Any, warmup: int, iters: int, budget_s: float) -> float:
    """1 / median seconds of `step()` over `iters` timed calls (at least 2; fewer when over budget)."""
    for _ in range(warmup):
        step()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < iters and (len(times) < 2 or time.perf_counter() - start < budget_s):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return 1.0 / statistics.median(times)


def _conv4() -> torch.nn.Module:
    sys.path.insert(0, str(REPO / "src"))
    from medmeta.models.backbones import Conv4  # torch-only module, importable in the peers venv

    return Conv4(in_channels=1, hidden=64, image_size=SIZE)


def worker(lib: str, work: Path, order: str, shots: int, steps: int, args: argparse.Namespace) -> None:
    """One library, one config: prints ``{"its_per_s", "peak_mib", "base_mib"}``, saves first gradients."""
    torch.set_num_threads(args.threads)
    if lib == "l2l":
        sys.path.insert(0, str(REPO / "benchmarks"))
        from _peers import import_shim

        import_shim()
        import learn2learn as l2l
    else:
        from medmeta._accel.allocator import keep_freed_memory
        from medmeta.methods.gradient_based.maml import MAML, MAMLOptions
        from medmeta.tasks.episode import Episode

        keep_freed_memory()  # as the CLI does at start: an entry point may, the library never does
    tasks = torch.load(work / f"tasks_{shots}.pt", weights_only=True)
    init = torch.load(work / "init.pt", weights_only=True)
    backbone = _conv4()
    first_order = order == "first"
    if lib == "l2l":
        model = torch.nn.Sequential(backbone, torch.nn.Linear(backbone.out_features, N_WAY))
        model.load_state_dict(
            {
                (
                    "0." + k.removeprefix("backbone.")
                    if k.startswith("backbone.")
                    else "1." + k.removeprefix("head.")
                ): v
                for k, v in init.items()
            }
        )
        maml = l2l.algorithms.MAML(model, lr=INNER_LR, first_order=first_order)
        params = list(maml.parameters())

        def meta_loss_backward() -> None:
            for xs, ys, xq, yq in tasks:
                learner = maml.clone()
                for _ in range(steps):
                    learner.adapt(F.cross_entropy(learner(xs), ys))
                (F.cross_entropy(learner(xq), yq) / len(tasks)).backward()

        names = [
            ("backbone." + n[2:] if n.startswith("0.") else "head." + n[2:])
            for n, _ in model.named_parameters()
        ]
    else:
        extra = json.loads(args.medmeta_options)
        options = MAMLOptions(
            n_way=N_WAY, inner_steps=steps, inner_lr=INNER_LR, first_order=first_order, **extra
        )
        method = MAML(backbone, options)
        method.load_state_dict(init)
        episodes = [Episode(xs, ys, xq, yq, torch.arange(N_WAY)) for xs, ys, xq, yq in tasks]
        params = list(method.parameters())

        def meta_loss_backward() -> None:
            method.batch_loss(episodes).backward()

        names = [n for n, _ in method.named_parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    base = _peak_mib()
    meta_loss_backward()
    torch.save(
        {n: p.grad.detach().clone() for n, p in zip(names, params, strict=True)}, work / f"grad_{lib}.pt"
    )
    optimizer.zero_grad(set_to_none=True)

    def meta_iteration() -> None:
        meta_loss_backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    its = _time(meta_iteration, args.warmup, args.iters, args.budget)
    print(json.dumps({"its_per_s": its, "peak_mib": _peak_mib(), "base_mib": base}))


def prepare(work: Path, dataset: str) -> str:
    """Write ``init.pt`` (Conv4 + head weights) and ``tasks_{1,5}.pt`` (4 normalised episodes each)."""
    from medmeta.data.registry import load_dataset
    from medmeta.data.synthetic import make_synthetic
    from medmeta.errors import MedmetaError
    from medmeta.methods.gradient_based.maml import MAML, MAMLOptions
    from medmeta.pipeline import default_normalization
    from medmeta.tasks.sampler import EpisodeSampler

    root = os.environ.get("MEDMETA_DATA") or str(REPO.parent / "shared" / "data")
    try:
        data = load_dataset(dataset, root=root, image_size=SIZE, channels=1)
        source = dataset
    except MedmetaError:
        data = make_synthetic(image_size=SIZE, channels=1)
        source = f"synthetic ({dataset} not found under MEDMETA_DATA)"
    torch.manual_seed(0)
    method = MAML(_conv4(), MAMLOptions(n_way=N_WAY))
    torch.save(
        {
            k: v.detach().clone()
            for k, v in method.state_dict().items()
            if k.startswith(("backbone.", "head."))
        },
        work / "init.pt",
    )
    norm = default_normalization(1)
    for shots in (1, 5):
        sampler = EpisodeSampler(data, N_WAY, shots, N_QUERY, seed=7)
        tasks = []
        for i in range(META_BATCH):
            ep = sampler.episode(i).map_images(norm)
            tasks.append((ep.support_images, ep.support_labels, ep.query_images, ep.query_labels))
        torch.save(tasks, work / f"tasks_{shots}.pt")
    return source


def run_worker(
    python: Path | str, lib: str, work: Path, cfg: tuple[str, int, int], args: argparse.Namespace
) -> dict[str, float]:
    order, shots, steps = cfg
    cmd = [str(python), str(Path(__file__).resolve()), "--worker", lib, "--work", str(work)]
    cmd += ["--config", f"{order},{shots},{steps}", "--threads", str(args.threads)]
    cmd += ["--iters", str(args.iters), "--warmup", str(args.warmup), "--budget", str(args.budget)]
    cmd += ["--medmeta-options", args.medmeta_options]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        sys.exit(f"{lib} worker failed for {cfg}:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=5, help="timed meta-iterations per library and config")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--budget", type=float, default=60.0, help="stop timing after this many seconds (>= 2 iterations)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=["second", "first"], help="run one order only")
    parser.add_argument("--dataset", default="blood_pbc")
    parser.add_argument(
        "--medmeta-options", default="{}", help="extra MAMLOptions as JSON, e.g. '{\"task_threads\": 1}'"
    )
    parser.add_argument("--skip-l2l", action="store_true", help="time medmeta only (no ratios)")
    parser.add_argument("--worker", choices=["medmeta", "l2l"], help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        order, shots, steps = args.config.split(",")
        worker(args.worker, args.work, order, int(shots), int(steps), args)
        return

    sys.path.insert(0, str(REPO / "benchmarks"))
    from _peers import peers_python

    l2l_python = peers_python()
    with tempfile.TemporaryDirectory(prefix="medmeta-maml-bench-") as tmp:
        work = Path(tmp)
        source = prepare(work, args.dataset)
        for cfg in CONFIGS:
            if args.only and cfg[0] != args.only:
                continue
            load = os.getloadavg()[0]
            mm = run_worker(sys.executable, "medmeta", work, cfg, args)
            if args.skip_l2l:
                print(json.dumps({"config": cfg, "options": args.medmeta_options, **mm}), flush=True)
                continue
            l2 = run_worker(l2l_python, "l2l", work, cfg, args)
            g_mm = torch.load(work / "grad_medmeta.pt", weights_only=True)
            g_l2 = torch.load(work / "grad_l2l.pt", weights_only=True)
            diff = max(float((g_mm[n] - g_l2[n]).abs().max()) for n in g_l2)
            order, shots, steps = cfg
            line = {
                "order": order,
                "shots": shots,
                "inner_steps": steps,
                "medmeta_its_per_s": round(mm["its_per_s"], 3),
                "l2l_its_per_s": round(l2["its_per_s"], 3),
                "speed_ratio": round(mm["its_per_s"] / l2["its_per_s"], 2),
                "medmeta_peak_mib": round(mm["peak_mib"]),
                "l2l_peak_mib": round(l2["peak_mib"]),
                "memory_ratio": round(mm["peak_mib"] / l2["peak_mib"], 2),
                "grad_max_abs_diff": float(f"{diff:.3g}"),
                "grad_max_abs": float(f"{max(float(g.abs().max()) for g in g_l2.values()):.3g}"),
                "medmeta_base_mib": round(mm["base_mib"]),
                "l2l_base_mib": round(l2["base_mib"]),
                "threads": args.threads,
                "loadavg_1m": round(load, 2),
                "data": source,
                "medmeta_options": json.loads(args.medmeta_options),
            }
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
