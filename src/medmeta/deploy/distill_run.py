"""The `medmeta distill` run and its report: teacher against student on accuracy and cost.

`run_distillation` checks everything (output folder, teachers, student spec, images, test set, ONNX
packages when ``onnx`` is asked) before the first training step, distils (`medmeta.deploy.distill`),
writes ``OUT/student.json`` (+ weights) and, with ``onnx``, ``OUT/student.onnx`` through the ordinary
export path, then measures both models and writes ``OUT/report.json``: accuracy with a 95% CI on the
test set, parameters, ONNX file size and CPU latency per image (ONNX Runtime, one thread, one image per
run, median over ``cfg.latency_runs`` runs after warm-up). An ensemble's size and latency are its
members' sums (they run one after another). Teacher ONNX files are written to a temporary folder and
removed.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medmeta._optional import optional_import
from medmeta.config.distill import DistillConfig
from medmeta.data.readers import DEFAULT_MAX_PIXELS
from medmeta.deploy.adapted import AdaptedModel, save_adapted
from medmeta.deploy.distill import Distilled, Teachers, build_student, distill, load_teachers
from medmeta.deploy.distill_data import (
    TestImages,
    check_distill_folder,
    drop_test_images,
    read_test,
    read_unlabelled,
    remove_earlier,
)
from medmeta.deploy.export import export_onnx, onnx_logits
from medmeta.eval.metrics import mean_ci
from medmeta.outputs import claim_output_folder, write_text_atomic
from medmeta.train.loop import ProgressHook


def onnx_available() -> bool:
    """True when both ``onnx`` (export) and ``onnxruntime`` (timing) are installed."""
    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))


def onnx_latency_ms(path: str | Path, shape: Sequence[int], runs: int, warmup: int = 3) -> float:
    """Median wall time of one single-image run of an exported model: ONNX Runtime, one thread.

    Args:
        path: the ONNX file.
        shape: ``(C, H, W)`` of one input image.
        runs: timed runs.
    """
    ort = optional_import("onnxruntime", "timing ONNX models")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((1, *shape), dtype=np.float32)  # (1, C, H, W)
    for _ in range(warmup):
        session.run(["logits"], {"images": x})
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(["logits"], {"images": x})
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def parameter_count(models: Sequence[AdaptedModel]) -> int:
    """Parameters of the models' methods (backbones and any meta-learned head), summed."""
    return sum(p.numel() for m in models for p in m.method.parameters())


def accuracy_with_ci(log_probs: torch.Tensor, labels: np.ndarray) -> dict[str, float]:
    """Accuracy of ``argmax`` of ``(n, n_way)`` scores and the half-width of its normal 95% CI."""
    correct = (log_probs.argmax(-1).numpy() == labels).astype(np.float64)  # (n,)
    mean, half = mean_ci(correct)
    return {"accuracy": mean, "ci95": half, "images": len(labels)}


def _cost(models: Sequence[AdaptedModel], files: Sequence[Path] | None, runs: int) -> dict[str, Any]:
    shape = (models[0].base.channels, models[0].base.image_size, models[0].base.image_size)
    out: dict[str, Any] = {"parameters": parameter_count(models)}
    if files is not None:
        out["onnx_bytes"] = sum(f.stat().st_size for f in files)
        out["latency_ms"] = sum(onnx_latency_ms(f, shape, runs) for f in files)
    return out


def compare(
    teachers: Teachers,
    student: AdaptedModel,
    cfg: DistillConfig,
    *,
    test: TestImages | None = None,
    student_onnx: Path | None = None,
) -> dict[str, Any]:
    """Teacher and student side by side (see the module docstring); ONNX fields only with ONNX installed."""
    timed = onnx_available()
    with tempfile.TemporaryDirectory(prefix="medmeta-distill-") as tmp:
        teacher_files = student_files = None
        if timed:
            teacher_files = [
                export_onnx(m, Path(tmp) / f"teacher{i}.onnx") for i, m in enumerate(teachers.models)
            ]
            student_files = [student_onnx or export_onnx(student, Path(tmp) / "student.onnx")]
        report: dict[str, Any] = {
            "teacher": {
                "checkpoints": list(teachers.files),
                **_cost(teachers.models, teacher_files, cfg.latency_runs),
            },
            "student": {
                "backbone": student.base.config.model.backbone,
                **_cost([student], student_files, cfg.latency_runs),
            },
        }
        probe = torch.from_numpy(test.images) if test is not None else student.support_images
        if student_files is not None:
            torch_logits = student.logits(probe).numpy()
            diff = np.abs(onnx_logits(student_files[0], probe.numpy()) - torch_logits).max()
            report["student"]["onnx_max_abs_diff"] = float(diff)
    ratios = {}
    for key in ("parameters", "onnx_bytes", "latency_ms"):
        if key in report["student"]:
            ratios[key] = report["student"][key] / report["teacher"][key]
    if test is not None:
        teacher_lp, student_lp = teachers.log_probs(probe), student.probabilities(probe).log()
        report["teacher"]["test"] = accuracy_with_ci(teacher_lp, test.labels)
        report["student"]["test"] = accuracy_with_ci(student_lp, test.labels)
        ratios["accuracy"] = report["student"]["test"]["accuracy"] / max(
            report["teacher"]["test"]["accuracy"], 1e-12
        )
        ratios["agreement"] = float((teacher_lp.argmax(-1) == student_lp.argmax(-1)).double().mean())
        report["test_set"] = {"images": test.name, "left_out_support_copies": test.left_out}
    report["student_over_teacher"] = ratios
    if timed:
        ort = optional_import("onnxruntime", "timing ONNX models")
        report["latency"] = {
            "runtime": f"onnxruntime {ort.__version__}",
            "threads": 1,
            "batch": 1,
            "statistic": f"median of {cfg.latency_runs} runs",
        }
    else:
        report["latency"] = "not measured: install onnx and onnxruntime (pip install 'medmeta[export]')"
    return report


def run_distillation(
    teachers: Sequence[str | Path],
    student: str,
    images: str | Path,
    out: Path,
    cfg: DistillConfig,
    *,
    test: str | Path | None = None,
    student_weights: str | None = None,
    onnx: bool = False,
    overwrite: bool = False,
    data_dir: Path | None = None,
    dedupe: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: ProgressHook | None = None,
) -> tuple[Distilled, dict[str, Any]]:
    """Check, distil, save ``OUT/student.json`` (and ``OUT/student.onnx`` with `onnx`), measure, write
    ``OUT/report.json``.

    Raises:
        OutputError: `out` holds other files, or an earlier student without `overwrite`.
        CheckpointError / ConfigError / DataError: bad teachers, student spec, images or test set.
        OptionalDependencyError: `onnx` without the onnx package.
    """
    earlier = check_distill_folder(out, overwrite=overwrite)
    if onnx:
        optional_import("onnx", "exporting to ONNX")
    loaded = load_teachers(teachers)
    base = loaded.first.base
    fresh = build_student(
        student, channels=base.channels, image_size=base.image_size, weights=student_weights, seed=cfg.seed
    )
    reading = {"image_size": base.image_size, "channels": base.channels, "max_pixels": max_pixels}
    test_set = None
    if test is not None:
        support = loaded.first.support_images.numpy()
        test_set = read_test(test, loaded.class_names, support, data_dir=data_dir, dedupe=dedupe, **reading)
    pool, pool_name = read_unlabelled(
        images, max_images=cfg.max_images, seed=cfg.seed, data_dir=data_dir, dedupe=dedupe, **reading
    )
    pool, dropped = drop_test_images(pool, test_set)
    claim_output_folder(out, overwrite=True, what="--out")  # everything checked: create it, prove it writable
    result = distill(loaded, fresh, pool, cfg, progress=progress)
    checkpoint = save_adapted(result.student, out / "student")
    student_onnx = export_onnx(result.student, out / "student.onnx") if onnx else None
    kept = {checkpoint.name, _weights(checkpoint), "student.onnx" if onnx else "", "report.json"}
    remove_earlier(out, [n for n in earlier if n not in kept])  # e.g. an earlier run's student.onnx
    report = compare(loaded, result.student, cfg, test=test_set, student_onnx=student_onnx)
    report["student"].update(
        checkpoint=str(checkpoint), onnx=None if student_onnx is None else str(student_onnx)
    )
    report["student"]["temperature"] = result.student.temperature
    report["distillation"] = {
        **cfg.model_dump(mode="json"),
        "unlabelled": pool_name,
        "dropped_test_copies": dropped,
        "views_labelled": result.views,
        "train_loss": result.history[-1]["train_loss"] if result.history else None,
        "seconds": result.seconds,
    }
    write_text_atomic(out / "report.json", json.dumps(report, indent=2) + "\n")
    return result, report


def _weights(json_path: Path) -> str:
    """The weights file a checkpoint JSON names."""
    return str(json.loads(json_path.read_text())["weights"])
