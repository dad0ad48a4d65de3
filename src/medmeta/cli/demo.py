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

from medmeta.cli.ui import RichProgress, console, results_table, say
from medmeta.config import make_config
from medmeta.data.registry import resolve
from medmeta.data.root import data_root
from medmeta.data.synthetic import MAX_CLASSES, make_synthetic
from medmeta.errors import DataError

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


def run_demo(out: Path, data_dir: Path | None, episodes: int, eval_episodes: int, quiet: bool) -> None:
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
