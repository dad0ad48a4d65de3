"""Distributed meta-training throughput: second-order MAML meta-iterations/s, one process vs two under torchrun.

Config: 5-way 1-shot 15-query blood-cell episodes (blood_pbc under ``$MEDMETA_DATA``, default
``<repo>/../shared/data``; 28x28 grey), Conv4 (64 channels) + linear head, 5 inner SGD steps (lr 0.4),
second order, meta-batch 4, Adam (lr 1e-3). Each run is the real training loop (`medmeta.train.loop.fit`,
no validation, nothing written) in fresh processes; a meta-iteration is one optimiser step, timed between
the progress hook's calls, the first `--warmup` ones dropped; ``*_its_per_s`` is 1 / median.

Runs, one after the other (never two at once), `--repeats` times in turn:

- ``one_1t``: one process, one torch thread (its tasks one after another);
- ``one_2t``: one process, two torch threads (medmeta's default on 2 cores: `task_threads` auto);
- ``two_1t``: ``torchrun --nproc-per-node 2``, one thread per rank, two tasks per rank (gloo on loopback).

``scaling_efficiency`` = two_1t / (2 x one_1t): 1.0 would be perfect scaling over the one-thread process;
``speedup_vs_one_2t`` compares with what one process already gets from both cores. The load average before
and after is printed, since the machine may be shared; each run's best repeat is the least disturbed one.
``cpu_efficiency`` = one_1t's CPU seconds per meta-iteration / (2 x a rank's under two_1t): the
distributed overhead in work, which other processes on the machine disturb less than wall time.

Usage: python benchmarks/distributed.py [--iters 12] [--warmup 2] [--repeats 2] [--meta-batch 4]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RUNS = {"one_1t": (1, 1), "one_2t": (1, 2), "two_1t": (2, 1)}  # name: (processes, threads per process)


class StepClock:
    """A progress hook that records the wall and CPU time (this process's) of every optimiser step."""

    def __init__(self) -> None:
        self.times: list[tuple[float, float]] = []

    def start(self, description: str, total: int) -> None:
        self.advance()

    def advance(self, n: int = 1, **info: Any) -> None:
        self.times.append((time.perf_counter(), time.process_time()))

    def stop(self) -> None:
        """Nothing to close."""


def worker(args: argparse.Namespace) -> None:
    """One run (one rank of it under torchrun): rank 0 prints ``{"step_seconds": [...]}``."""
    import torch

    from medmeta.config import TrainConfig
    from medmeta.data.registry import load_dataset
    from medmeta.data.transforms import Normalization
    from medmeta.methods import build_method
    from medmeta.methods.inner_loop import InnerLoopMethod
    from medmeta.models.backbones import Conv4
    from medmeta.tasks.sampler import MultiDomainSampler
    from medmeta.train.distributed import from_env, process_group
    from medmeta.train.loop import fit
    from medmeta.train.sources import EpisodicBatches

    torch.set_num_threads(args.threads)
    run = from_env()
    data_dir = Path(os.environ.get("MEDMETA_DATA", REPO.parent / "shared" / "data"))
    ds = load_dataset(args.dataset, root=data_dir, image_size=28, channels=1)
    steps = args.warmup + args.iters
    cfg = TrainConfig(
        epochs=1,
        episodes_per_epoch=steps * args.meta_batch,
        meta_batch=args.meta_batch,
        val_episodes=0,
        device="cpu",
    )
    torch.manual_seed(0)
    options = {"n_way": 5, "inner_steps": 5, "inner_lr": 0.4, "first_order": False}
    method = build_method("maml", Conv4(in_channels=1, image_size=28), options)
    sampler = MultiDomainSampler([ds], 5, 1, 15, seed=0)
    source = EpisodicBatches(sampler, cfg, prepare=Normalization(mean=(0.5,), std=(0.25,)))
    clock = StepClock()
    if run is None:
        fit(method, source, cfg, progress=clock, save_state=False, save_last=False)
    else:
        with process_group(run, torch.device("cpu")):
            fit(method, source, cfg, progress=clock, save_state=False, save_last=False, distributed=run)
    if run is None or run.is_main:
        pairs = list(zip(clock.times, clock.times[1:], strict=False))[args.warmup :]
        print(
            json.dumps(
                {
                    "step_seconds": [b[0] - a[0] for a, b in pairs],
                    "step_cpu_seconds": [b[1] - a[1] for a, b in pairs],
                    "fused_kernels": isinstance(method, InnerLoopMethod) and method.fused_training(),
                }
            )
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Step times (wall and rank 0's CPU) of run `name` in fresh processes."""
    processes, threads = RUNS[name]
    flags = [
        "--worker",
        "--threads",
        str(threads),
        "--iters",
        str(args.iters),
        "--warmup",
        str(args.warmup),
        "--meta-batch",
        str(args.meta_batch),
        "--dataset",
        args.dataset,
    ]
    script = str(Path(__file__).resolve())
    if processes == 1:
        cmd = [sys.executable, script, *flags]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            str(processes),
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(_free_port()),
            script,
            *flags,
        ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    line = [ln for ln in done.stdout.splitlines() if ln.startswith("{")][-1]
    return dict(json.loads(line))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iters", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--meta-batch", type=int, default=4)
    parser.add_argument("--dataset", default="blood_pbc")
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    load_before = os.getloadavg()[0]
    medians: dict[str, list[float]] = {name: [] for name in RUNS}
    cpu: dict[str, list[float]] = {name: [] for name in RUNS}
    fused = set()
    for _ in range(args.repeats):
        for name in RUNS:
            result = measure(name, args)
            medians[name].append(statistics.median(result["step_seconds"]))
            cpu[name].append(statistics.median(result["step_cpu_seconds"]))
            fused.add(result["fused_kernels"])
    its = {name: 1.0 / min(values) for name, values in medians.items()}
    # work per meta-iteration, load-independent: one thread's CPU time vs each of the two ranks' (the
    # ranks' share of the tasks plus the all-reduce); 1.0 = no distributed overhead at all
    cpu_efficiency = min(cpu["one_1t"]) / (2 * min(cpu["two_1t"]))
    print(
        json.dumps(
            {
                "benchmark": "distributed_maml",
                "method": "maml (second order, 5 inner steps)",
                "episodes": "5-way 1-shot 15-query, 28x28 grey",
                "dataset": args.dataset,
                "meta_batch": args.meta_batch,
                "cores": os.cpu_count(),
                "fused_kernels": sorted(fused),
                **{f"{name}_its_per_s": round(v, 3) for name, v in its.items()},
                "repeat_its_per_s": {n: [round(1 / m, 3) for m in ms] for n, ms in medians.items()},
                "cpu_seconds_per_it": {n: round(min(c), 3) for n, c in cpu.items()},
                "scaling_efficiency": round(its["two_1t"] / (2 * its["one_1t"]), 3),
                "cpu_efficiency": round(cpu_efficiency, 3),
                "speedup_vs_one_2t": round(its["two_1t"] / its["one_2t"], 3),
                "loadavg_before": round(load_before, 2),
                "loadavg_after": round(os.getloadavg()[0], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
