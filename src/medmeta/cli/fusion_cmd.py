"""``medmeta fusion``: several views of each case, fused early, by features or late, against each view alone."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import typer
from rich.table import Table

from medmeta.cli.ui import console, say
from medmeta.errors import MedmetaError


def fusion(
    data: str = typer.Option(
        ...,
        "--data",
        help="A 3-D dataset (e.g. adrenalmnist3d, adrenalmnist3d_64) whose volumes give the views, or a folder "
        "of cases CLASS/CASE/VIEW.png (or with manifest.csv: case, view, path, label).",
    ),
    views: str = typer.Option(
        "orthogonal", "--views", help="For a 3-D dataset: orthogonal (axial, coronal, sagittal) or slices:K."
    ),
    split: str = typer.Option(
        "test", "--split", help="For a dataset with splits: the cases episodes draw from."
    ),
    model: Path | None = typer.Option(
        None, "--model", help="A meta-trained checkpoint whose backbone is used."
    ),
    backbone: str | None = typer.Option(
        None,
        "--backbone",
        help="Instead of --model: pixels[:G], conv4/resnet12 with --weights RUN/best.json, timm:...",
    ),
    weights: str | None = typer.Option(None, "--weights", help="With --backbone: its weights."),
    image_size: int | None = typer.Option(
        None, "--image-size", min=8, max=1024, help="With --backbone: the side views are read at."
    ),
    method: str = typer.Option(
        "protonet", "--method", help="Few-shot rule on the features: protonet or linear_probe."
    ),
    shots: list[int] = typer.Option([1, 5, 10], "--shots", min=1, help="Support cases per class (repeat)."),
    n_query: int = typer.Option(
        15, "--n-query", min=1, help="Query cases per class (lowered for a small class)."
    ),
    episodes: int = typer.Option(600, "--episodes", min=2, help="Episodes per number of shots."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seeds the episodes (the same for every strategy)."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Data root (default $MEDMETA_DATA)."),
    out: Path | None = typer.Option(
        None, "--out", help="Folder for fusion.json and fusion.csv (new or empty)."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Write into a non-empty --out (same names replaced)."
    ),
) -> None:
    """Compare fusing a case's views (early, feature-level, late) with each view alone on the same episodes."""
    from medmeta.data.multiview import load_case_folder, views_from_volumes
    from medmeta.data.registry import load_dataset
    from medmeta.deploy.adapted import load_trained
    from medmeta.outputs import claim_output_folder, write_text_atomic
    from medmeta.pipeline.fusion import FUSION_METHODS, compare_fusion

    if (model is None) == (backbone is None):
        raise MedmetaError(
            "give either --model CHECKPOINT or --backbone SPEC (the backbone every view goes through)"
        )
    if method not in FUSION_METHODS:
        raise MedmetaError(f"--method {method}: choose one of {', '.join(FUSION_METHODS)}")
    if out is not None:
        claim_output_folder(out, overwrite=overwrite)
    if model is not None:
        base = load_trained(model)
    else:
        from medmeta.config import ModelConfig, describe_validation_error
        from medmeta.deploy.pretrained import pretrained_model

        try:
            spec = ModelConfig(backbone=backbone, weights=weights)
        except ValueError as exc:  # pydantic's ValidationError
            raise MedmetaError(f"--backbone: {describe_validation_error(exc)}") from None
        base = pretrained_model(spec, method="protonet", image_size=image_size, channels=3)
    size = base.image_size
    if Path(data).is_dir():
        cases = load_case_folder(data, size)
    else:
        volumes = load_dataset(data, root=data_dir, image_size=size, channels=1)
        volumes = volumes.select_split(split) if volumes.splits is not None else volumes
        cases = views_from_volumes(volumes, views)
    say(
        f"{len(cases.dataset)} cases of {cases.dataset.domain} ({', '.join(f'{k} {v}' for k, v in cases.dataset.class_counts().items())}), "
        f"views {', '.join(cases.views)} at {size} px; backbone {base.meta.get('backbone')} ({base.channels} channels), {method}"
    )
    rows = compare_fusion(
        cases,
        base.method.backbone,
        channels=base.channels,
        normalization=base.normalization,
        method=method,
        shots=tuple(sorted(set(shots))),
        n_query=n_query,
        episodes=episodes,
        seed=seed,
    )
    table = Table(
        title="accuracy % (95% CI over episodes); fused rows: paired difference to the best single view"
    )
    for col in ("strategy", "shots", "accuracy %", "bal. acc. %", "AUC %", "vs best view (points)"):
        table.add_column(col, justify="left" if col == "strategy" else "right")
    for r in rows:
        diff = (
            ""
            if r.vs_best_view is None
            else f"{100 * r.vs_best_view[0]:+.1f} ± {100 * r.vs_best_view[1]:.1f}"
        )
        table.add_row(
            r.strategy,
            str(r.shots),
            *(f"{100 * m:.1f} ± {100 * c:.1f}" for m, c in (r.accuracy, r.balanced_accuracy, r.auc)),
            diff,
        )
    console.print(table)
    if out is not None:
        payload = {
            "data": data,
            "views": list(cases.views),
            "cases": len(cases.dataset),
            "backbone": base.meta.get("backbone"),
            "method": method,
            "seed": seed,
            "rows": [r.to_dict() for r in rows],
        }
        write_text_atomic(out / "fusion.json", json.dumps(payload, indent=2))
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(
            [
                "strategy",
                "shots",
                "episodes",
                "accuracy",
                "accuracy_ci95",
                "balanced_accuracy",
                "auc",
                "vs_best_view",
                "vs_best_view_ci95",
            ]
        )
        for r in rows:
            d = r.vs_best_view or ("", "")
            w.writerow(
                [
                    r.strategy,
                    r.shots,
                    r.episodes,
                    r.accuracy[0],
                    r.accuracy[1],
                    r.balanced_accuracy[0],
                    r.auc[0],
                    *d,
                ]
            )
        write_text_atomic(out / "fusion.csv", buf.getvalue())
        say(f"wrote {out / 'fusion.json'}, {out / 'fusion.csv'}")
