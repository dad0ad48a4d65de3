"""``medmeta demo``: the main job, a complete few-shot run in a few minutes on 2 CPU cores.

With the real data present (``$MEDMETA_DATA`` or ``--data-dir`` holding blood_pbc and brain_tumor_mri),
ProtoNet is meta-trained on 5 of the 8 blood-cell classes and tested on (a) the 3 unseen blood-cell
classes and (b) brain MRI, an unseen domain. Without it, the same run uses the built-in synthetic set and
says so in its first line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.table import Table

from medmeta.cli.ui import RichProgress, console, results_table, say
from medmeta.config import ModelConfig, RunConfig, make_config, make_pretrain_config
from medmeta.data.datasets import ImageDataset
from medmeta.data.registry import resolve
from medmeta.data.root import data_root
from medmeta.data.synthetic import MAX_CLASSES, make_synthetic
from medmeta.errors import DataError, OutputError
from medmeta.eval.evaluate import EvalResult
from medmeta.outputs import check_run_folder

BLOOD_TRAIN = ("basophil", "eosinophil", "erythroblast", "ig", "lymphocyte")
BLOOD_TEST = ("monocyte", "neutrophil", "platelet")


def _has_real_data(root: Path | None) -> bool:
    try:
        resolve("blood_pbc", root)
        resolve("brain_tumor_mri", root)
    except DataError:
        return False
    return True


def demo_config(real: bool, data_dir: Path | None, episodes: int, eval_episodes: int) -> dict[str, Any]:
    """The demo's run config as a plain dict."""
    epochs = 3
    if real:
        data = {
            "train": ["blood_pbc:" + ",".join(BLOOD_TRAIN)],
            "test": ["blood_pbc:" + ",".join(BLOOD_TEST), "brain_tumor_mri@test"],
        }
    else:
        names = make_synthetic(image_size=8).class_names
        data = {
            "train": ["synthetic:" + ",".join(names[:16])],
            "test": ["synthetic:" + ",".join(names[16:MAX_CLASSES])],
        }
    return {
        "data": {
            **data,
            "image_size": 64,
            "channels": 3,
            "data_dir": None if data_dir is None else str(data_dir),
        },
        "episodes": {"n_way": 5, "n_shot": 5, "n_query": 10},
        "model": {"backbone": "conv4"},
        "method": {"name": "protonet"},
        "train": {
            "epochs": epochs,
            "episodes_per_epoch": max(1, episodes // epochs),
            "val_episodes": min(50, max(10, episodes // 3)),
            "lr": 1e-3,
            "seed": 0,
        },
        "eval": {"episodes": eval_episodes, "n_way": 5 if not real else None, "n_shot": 5, "n_query": 15},
    }


def run_demo(
    out: Path,
    data_dir: Path | None,
    episodes: int,
    eval_episodes: int,
    quiet: bool,
    ssl_epochs: int = 0,
    ssl_images: int | None = None,
) -> None:
    from medmeta.pipeline import default_normalization, evaluate_on_tests, train_method

    root = data_root(data_dir)
    real = _has_real_data(data_dir)
    if real:
        say(
            f"medmeta demo: REAL medical images from {root} (blood_pbc blood-cell microscopy, "
            "brain_tumor_mri MRI)"
        )
    else:
        say(
            f"medmeta demo: no real data under {root}: using the built-in SYNTHETIC set "
            "(set MEDMETA_DATA or --data-dir to the data folder for real images)"
        )
    cfg = make_config(demo_config(real, data_dir, episodes, eval_episodes), source="demo config")
    say(
        f"meta-training ProtoNet (Conv4) 5-way 5-shot on {', '.join(cfg.data.train)} "
        f"for {cfg.train.epochs * cfg.train.episodes_per_epoch} episodes"
    )
    progress = RichProgress(enabled=not quiet)
    _clear_representation_stage(out)
    # the demo owns its folder, so `make demo` runs again: only medmeta's own files of a run are replaced
    method, fit_result, data = train_method(cfg, out_dir=out, progress=progress, overwrite=True)
    say(
        f"best validation accuracy {100 * fit_result.best_score:.2f}% on held-out images of the "
        f"training classes; checkpoint {fit_result.best_checkpoint}"
    )
    results = evaluate_on_tests(
        method, cfg, data.test, normalization=default_normalization(cfg.data.channels), progress=progress
    )
    console.print(results_table(results, "ProtoNet on classes never seen in training"))
    (out / "results.json").write_text(json.dumps([r.to_dict() for r in results], indent=2))
    say(f"results: {out / 'results.json'}; total training time {fit_result.seconds:.0f} s")
    if real and ssl_epochs > 0:
        _representation_stage(
            cfg, data.test[-1], results[-1], out, data_dir, ssl_epochs, ssl_images, progress
        )


def _clear_representation_stage(out: Path) -> None:
    """Remove an earlier demo's self-supervised stage from `out` (``ssl/``, a pretraining run folder, and
    ``representations.json``), so the run folder checks that follow see only the training run's files.

    ``ssl/`` goes only when it holds nothing but medmeta's run files (`check_run_folder` decides, as for
    ``--overwrite``); anything else in it is refused in one line and nothing is removed.
    """
    ssl = out / "ssl"
    if ssl.is_dir() and not ssl.is_symlink():
        check_run_folder(ssl, overwrite=True).clear()
        try:
            ssl.rmdir()
        except OSError:
            raise OutputError(
                f"{ssl} still holds files after removing the demo's own: move them away"
            ) from None
    table = out / "representations.json"
    if table.is_file() and not table.is_symlink():
        table.unlink()


def _representation_stage(
    cfg: RunConfig,
    brain: ImageDataset,
    meta_trained: EvalResult,
    out: Path,
    data_dir: Path | None,
    epochs: int,
    max_images: int | None,
    progress: RichProgress,
) -> None:
    """Brain MRI again, from a representation learned without a single brain label: SimCLR on the unlabelled
    brain MRI training images (a hospital's archive), frozen, with prototypes; beside the raw pixels."""
    from medmeta._optional import OptionalDependencyError, optional_import
    from medmeta.pipeline import default_normalization, evaluate_on_tests
    from medmeta.pipeline.classification import build_method_from_config, read_pretrained_start
    from medmeta.pipeline.pretrain import pretrain

    try:
        optional_import("lightly", "the demo's self-supervised stage")
    except OptionalDependencyError as exc:
        say(f"skipping the self-supervised stage: {exc}")
        return
    size = cfg.data.image_size
    say(
        f"self-supervised stage: SimCLR on the unlabelled brain MRI training images (no label is read) for "
        f"{epochs} epochs, then its frozen features on the same brain MRI test episodes"
    )
    ssl_cfg = make_pretrain_config(
        {
            "data": {
                "max_images": max_images,
                "domains": ["brain_tumor_mri@train"],
                "image_size": size,
                "channels": 3,
                "data_dir": None if data_dir is None else str(data_dir),
            },
            "model": {"backbone": "conv4"},
            "ssl": {"method": "simclr", "batch_size": 128},
            "train": {"epochs": epochs, "lr": 1e-3, "seed": 0, "val_episodes": 0},
        },
        source="demo pretraining config",
    )
    _, ssl_result, _ = pretrain(ssl_cfg, out_dir=out / "ssl", progress=progress, overwrite=True)
    norm = default_normalization(3)
    rows = []
    ssl = {"backbone": "conv4", "weights": str(out / "ssl" / "best.json")}
    for label, model, name in (
        ("raw pixels (8x8), nearest class mean", {"backbone": "pixels"}, "protonet"),
        ("SimCLR on unlabelled brain MRI, frozen, prototypes", ssl, "protonet"),
        ("SimCLR on unlabelled brain MRI, frozen, logistic regression", ssl, "linear_probe"),
    ):
        frozen_cfg = cfg.model_copy(
            update={"model": ModelConfig(**model), "method": cfg.method.model_copy(update={"name": name})}
        )
        method = build_method_from_config(
            frozen_cfg, channels=3, spatial_dims=2, start=read_pretrained_start(frozen_cfg.model.weights)
        ).eval()
        (result,) = evaluate_on_tests(method, frozen_cfg, [brain], normalization=norm, progress=progress)
        rows.append((label, result))
    rows.insert(1, ("ProtoNet meta-trained on blood cells (above)", meta_trained))
    table = Table(
        title=f"brain MRI, {meta_trained.n_way}-way {cfg.eval.n_shot}-shot, {cfg.eval.episodes} episodes"
    )
    table.add_column("representation")
    table.add_column("accuracy % (95% CI)", justify="right")
    for label, result in rows:
        mean, ci = result.metrics["accuracy"]
        table.add_row(label, f"{100 * mean:.2f} ± {100 * ci:.2f}")
    console.print(table)
    (out / "representations.json").write_text(
        json.dumps([{"representation": label, **r.to_dict()} for label, r in rows], indent=2)
    )
    say(f"representations: {out / 'representations.json'}; pretraining time {ssl_result.seconds:.0f} s")
