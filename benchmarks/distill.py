"""Distillation on real brain MRI: a ResNet-12 teacher against the Conv4 student it teaches (the named peer is
the teacher itself).

The script trains its own teacher in a work folder: ProtoNet with a ResNet-12 (12.4M parameters), meta-trained
on ``brain_tumor_mri@train`` (4-way 5-shot episodes, grey images at ``--size`` px), then adapted with
``medmeta.adapt`` on the first 5 training images (by name) of each class, calibrated as ``medmeta adapt`` does.
``medmeta distill``'s pipeline (`medmeta.deploy.distill_run.run_distillation`) then teaches a fresh Conv4
student on up to ``--images`` unlabelled training images (their labels are never read) and scores both on
``brain_tumor_mri@test``.

Printed in one JSON line: teacher and student accuracy with the half-width of a 95% CI on the test split,
their agreement, parameters, ONNX file size and CPU latency per image (ONNX Runtime, one thread, one image,
median of ``--latency-runs`` runs), and the trade-off: ``accuracy_kept`` (student / teacher accuracy) at
``parameters_fraction``, ``onnx_size_fraction`` and ``latency_fraction`` of the teacher's cost; plus the
time each stage took and the load average (other jobs slow every stage, not the ratios).

Usage: MEDMETA_DATA=../shared/data python benchmarks/distill.py [--size 32] [--teacher-episodes 80]
       [--steps 200] [--images 1000] [--threads 2] [--workdir /work/runs/distill_bench]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from medmeta.config import make_config
from medmeta.config.distill import DistillConfig
from medmeta.data.registry import data_root
from medmeta.deploy import adapt
from medmeta.deploy.distill_run import run_distillation
from medmeta.pipeline import train_method

DOMAIN = "brain_tumor_mri"


def teacher_checkpoint(work: Path, size: int, episodes: int, backbone: str) -> Path:
    """Meta-train the teacher (ProtoNet, 4-way 5-shot 5-query episodes of the training split); its best.json."""
    cfg = make_config(
        {
            "data": {"train": [f"{DOMAIN}@train"], "image_size": size, "channels": 1},
            "episodes": {"n_way": 4, "n_shot": 5, "n_query": 5},
            "model": {"backbone": backbone},
            "train": {"epochs": 1, "episodes_per_epoch": episodes, "val_episodes": 0, "device": "cpu"},
        }
    )
    train_method(cfg, out_dir=work / "teacher_run", resumable=False)
    return work / "teacher_run" / "best.json"


def support_folder(root: Path, dest: Path, shots: int) -> Path:
    """``dest/CLASS/*``: the first `shots` training images (by name) of each class."""
    train = root / "classification" / DOMAIN / "train"
    for class_dir in sorted(p for p in train.iterdir() if p.is_dir()):
        (dest / class_dir.name).mkdir(parents=True, exist_ok=True)
        for f in sorted(class_dir.iterdir())[:shots]:
            shutil.copy(f, dest / class_dir.name / f.name)
    return dest


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--teacher", default="resnet12")
    parser.add_argument("--student", default="conv4")
    parser.add_argument("--teacher-episodes", type=int, default=80)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--latency-runs", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None, help="Keep the run here (new or empty folder).")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = data_root(None)
    with tempfile.TemporaryDirectory(prefix="medmeta-distill-bench-") as tmp:
        work = args.workdir or Path(tmp)
        if work.exists() and any(work.iterdir()):
            raise SystemExit(f"--workdir {work} is not empty: give a new or empty folder")
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        best = teacher_checkpoint(work, args.size, args.teacher_episodes, args.teacher)
        teacher_s = time.perf_counter() - t0
        support = support_folder(root, work / "support", args.shots)
        adapt(best, support, out=work / "teacher")
        cfg = DistillConfig(
            steps=args.steps, max_images=args.images, views=args.views, latency_runs=args.latency_runs
        )
        t0 = time.perf_counter()
        _, report = run_distillation(
            [work / "teacher.json"],
            args.student,
            DOMAIN,
            work / "student",
            cfg,
            test=f"{DOMAIN}@test",
            onnx=True,
        )
        distill_s = time.perf_counter() - t0
    t, s, r = report["teacher"], report["student"], report["student_over_teacher"]
    print(
        json.dumps(
            {
                "benchmark": "distill",
                "domain": DOMAIN,
                "size": args.size,
                "channels": 1,
                "shots": args.shots,
                "peer": f"teacher: ProtoNet {args.teacher}, {args.teacher_episodes} episodes, adapted",
                "student": f"ProtoNet {args.student} (cosine prototypes), {args.steps} steps",
                "test_images": t["test"]["images"],
                "unlabelled": report["distillation"]["unlabelled"],
                "dropped_test_copies": report["distillation"]["dropped_test_copies"],
                "teacher_accuracy": round(100 * t["test"]["accuracy"], 1),
                "teacher_ci95": round(100 * t["test"]["ci95"], 1),
                "student_accuracy": round(100 * s["test"]["accuracy"], 1),
                "student_ci95": round(100 * s["test"]["ci95"], 1),
                "agreement": round(100 * r["agreement"], 1),
                "teacher_parameters": t["parameters"],
                "student_parameters": s["parameters"],
                "teacher_onnx_mb": round(t["onnx_bytes"] / 1e6, 3),
                "student_onnx_mb": round(s["onnx_bytes"] / 1e6, 3),
                "teacher_latency_ms": round(t["latency_ms"], 3),
                "student_latency_ms": round(s["latency_ms"], 3),
                "accuracy_kept": round(r["accuracy"], 3),
                "parameters_fraction": round(r["parameters"], 4),
                "onnx_size_fraction": round(r["onnx_bytes"], 4),
                "latency_fraction": round(r["latency_ms"], 3),
                "onnx_max_abs_diff": s["onnx_max_abs_diff"],
                "teacher_train_s": round(teacher_s),
                "distill_s": round(distill_s),
                "threads": args.threads,
                "load_average": [round(x, 1) for x in os.getloadavg()],
                "cpu_count": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
