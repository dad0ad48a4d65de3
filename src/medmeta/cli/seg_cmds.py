"""``medmeta seg train|evaluate`` and ``medmeta segment``: few-shot segmentation from the command line."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import typer
import yaml

from medmeta.cli.overrides import collect, parse_options
from medmeta.cli.ui import RichProgress, err_console, say
from medmeta.errors import MedmetaError
from medmeta.outputs import (
    RunFolder,
    check_output_file,
    check_run_folder,
    claim_output_file,
    claim_output_folder,
)

app = typer.Typer(
    help="Few-shot segmentation: train segmenters and evaluate them on held-out structures.",
    no_args_is_help=True,
)


def _replace_text(path: Path, text: str) -> None:
    """Write `path` through a temporary file and a rename (never through whatever is at `path`)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write(out: Path, rows: list[dict[str, Any]]) -> None:
    from medmeta.eval.segmentation import results_markdown

    out.parent.mkdir(parents=True, exist_ok=True)
    _replace_text(out, json.dumps(rows, indent=2, default=str))
    tables = [
        f"Dice (%), mean ± 95% CI\n\n{results_markdown(rows)}",
        f"HD95 (px), mean ± 95% CI\n\n{results_markdown(rows, 'hd95')}",
    ]
    _replace_text(out.with_suffix(".md"), "\n\n".join(tables) + "\n")


def _start_run(folder: RunFolder, cfg: Any) -> None:
    """The earlier run's files go (overwrite) or its stale results (resume); the run's config is written."""
    folder.clear()
    _replace_text(folder.path / "config.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


_OVERWRITE_HELP = "Replace an existing output file (never a folder, link or special file in its place)."


def _config(config: Path | None, overrides: dict[str, Any]) -> Any:
    from medmeta.config import apply_overrides, load_seg_config, make_seg_config
    from medmeta.pipeline.checks import check_segmenter_config

    if config is not None:
        return check_segmenter_config(load_seg_config(config, overrides), source=str(config))
    return check_segmenter_config(make_seg_config(apply_overrides({}, overrides), source="options"))


def expand_image_folders(paths: list[Path]) -> list[Path]:
    """Files as given; a folder becomes its image files (sorted, hidden files left out).

    Raises:
        MedmetaError: a folder holding no image.
    """
    from medmeta.data.readers import is_image_file

    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = sorted(
                f for f in p.iterdir() if f.is_file() and is_image_file(f) and not f.name.startswith(".")
            )
            if not found:
                raise MedmetaError(
                    f"--images folder {p} holds no image file: give image files or another folder"
                )
            out.extend(found)
        else:
            out.append(p)
    return out


_SPEC_HELP = (
    "structure spec (repeatable): SOURCE[:NAME,...] with SOURCE one of drive, em, ct, mr, or a folder of "
    "images with masks (images/ + masks/, STEM_mask.png, or manifest.csv)."
)


@app.command("train")
def train_cmd(
    out: Path = typer.Option(..., "--out", help="Run folder: best.json checkpoint, history, results."),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue the run in OUT from its last complete epoch (same config; an empty OUT starts anew).",
    ),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Replace the run in OUT: only the files medmeta writes there are removed; a folder holding "
        "any other file is refused.",
    ),
    config: Path | None = typer.Option(
        None, "--config", help="YAML segmentation config (configs/seg_*.yaml)."
    ),
    method: str | None = typer.Option(None, "--method", help="panet, alpnet, ssl_alpnet, maml or finetune."),
    option: list[str] | None = typer.Option(None, "--option", help="Method option KEY=VALUE (repeatable)."),
    train: list[str] | None = typer.Option(None, "--train", help="Training " + _SPEC_HELP),
    test: list[str] | None = typer.Option(None, "--test", help="Test " + _SPEC_HELP),
    epochs: int | None = typer.Option(None, "--epochs"),
    episodes_per_epoch: int | None = typer.Option(None, "--episodes-per-epoch"),
    lr: float | None = typer.Option(None, "--lr"),
    seed: int | None = typer.Option(None, "--seed"),
    image_size: int | None = typer.Option(None, "--image-size"),
    eval_episodes: int | None = typer.Option(
        None, "--eval-episodes", help="Test episodes per structure and shot."
    ),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Data root (default $MEDMETA_DATA)."),
    evaluate: bool = typer.Option(
        True, "--evaluate/--no-evaluate", help="Evaluate on the test structures after training."
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Train a segmenter on the config's training structures, keep OUT/best.json, evaluate on the test ones."""
    from medmeta.eval.segmentation import results_markdown
    from medmeta.pipeline.segmentation import train_segmenter
    from medmeta.pipeline.segmentation_run import evaluate_seg_training, plan_seg_training

    ov = collect(
        {
            "method.name": method,
            "data.train": train,
            "data.test": test,
            "train.epochs": epochs,
            "train.episodes_per_epoch": episodes_per_epoch,
            "train.lr": lr,
            "train.seed": seed,
            "data.image_size": image_size,
            "data.data_dir": None if data_dir is None else str(data_dir),
            "eval.episodes": eval_episodes,
        }
    )
    if option:
        ov["method.options"] = parse_options(option)
    cfg = _config(config, ov)
    folder = check_run_folder(out, overwrite=overwrite, resume=resume)
    run = plan_seg_training(cfg)
    folder.prepare()
    say(
        f"training {cfg.method.name} on {len(run.data.train)} structure(s) ({run.model.training_source}) -> {out}"
    )
    result = train_segmenter(
        run.model,
        run.episodes,
        cfg.train,
        val_episodes=run.val_episodes,
        out_dir=out,
        meta=run.meta,
        progress=RichProgress(enabled=not quiet),
        resume=folder.resume,
        on_start=lambda: _start_run(folder, cfg),
    )
    say(
        f"checkpoint {result.best_checkpoint} ({result.seconds:.0f} s, validation Dice {result.best_score:.3f})"
    )
    if evaluate and run.data.test:
        rows = evaluate_seg_training(run)
        _write(out / "results.json", rows)
        say(results_markdown(rows))


@app.command("score")
def score_cmd(
    predictions: Path = typer.Option(
        ..., "--pred", help="Predicted masks (a `medmeta segment` --out folder)."
    ),
    references: Path = typer.Option(
        ..., "--truth", help="Reference masks: a segmentation folder or a folder of masks named by stem."
    ),
    label: int | None = typer.Option(
        None, "--label", help="Reference foreground value (default: any non-zero)."
    ),
    roi: Path | None = typer.Option(
        None, "--roi", help="Folder of region masks by stem (e.g. a field of view): score inside them only."
    ),
) -> None:
    """Dice and HD95 (mean ± 95% CI over images) of predicted masks against reference masks, at full resolution."""
    from medmeta.eval.mask_scoring import score_masks

    result = score_masks(predictions, references, label=label, roi=roi)
    for name, d, h in zip(result.names, result.dice, result.hd95, strict=True):
        say(f"{name}: Dice {d:.3f}, HD95 {h:.1f} px")
    s = result.summary()
    say(
        f"{len(result.names)} image(s): Dice {s['dice']['mean']:.3f} ± {s['dice']['ci95']:.3f}, HD95 "
        f"{s['hd95']['mean']:.1f} ± {s['hd95']['ci95']:.1f} px"
    )


@app.command("evaluate")
def evaluate_cmd(
    model: list[str] = typer.Option(
        ..., "--model", help="Checkpoint (RUN/best.json) or baseline name; repeatable."
    ),
    config: Path | None = typer.Option(
        None, "--config", help="Config for the data (default: the first checkpoint's)."
    ),
    shots: list[int] | None = typer.Option(
        None, "--shots", help="Support sizes (repeatable; default the config's)."
    ),
    episodes: int | None = typer.Option(None, "--episodes", help="Episodes per structure and shot."),
    test: list[str] | None = typer.Option(None, "--test", help="Test " + _SPEC_HELP),
    seed: int | None = typer.Option(None, "--seed"),
    baselines: bool = typer.Option(
        True, "--baselines/--no-baselines", help="Also evaluate otsu and support_mean."
    ),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Data root (default $MEDMETA_DATA)."),
    out: Path | None = typer.Option(
        None, "--out", help="Write rows as JSON here (and a .md table beside it)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help=_OVERWRITE_HELP),
) -> None:
    """Dice and HD95 (mean ± 95% CI over episodes) per held-out structure, every model on the same episodes."""
    from medmeta.eval.segmentation import results_markdown
    from medmeta.methods.segmentation import BASELINES
    from medmeta.pipeline.segmentation_run import compare_segmenters, evaluation_config, load_segmenters

    if out is not None:
        check_output_file(out.with_suffix(".md"), overwrite=overwrite)
        claim_output_file(out, overwrite=overwrite)
    models, checkpoint_cfg = load_segmenters([*model, *(BASELINES if baselines else ())])
    ov = collect(
        {
            "eval.shots": shots,
            "eval.episodes": episodes,
            "data.test": test,
            "eval.seed": seed,
            "data.data_dir": None if data_dir is None else str(data_dir),
        }
    )
    rows = compare_segmenters(models, evaluation_config(checkpoint_cfg, config, ov))
    say(results_markdown(rows))
    if out is not None:
        _write(out, rows)


def segment(
    model: str = typer.Option(..., "--model", help="Checkpoint (RUN/best.json), or otsu / support_mean."),
    support: Path | None = typer.Option(
        None,
        "--support",
        help="Folder of annotated images with masks (images/ + masks/, STEM_mask files, or manifest.csv).",
    ),
    support_images: list[Path] | None = typer.Option(
        None, "--support-images", help="Instead of --support: annotated image (repeatable): 2D file or NIfTI."
    ),
    support_masks: list[Path] | None = typer.Option(
        None, "--support-masks", help="Its mask (repeatable, same order)."
    ),
    images: list[Path] = typer.Option(
        ..., "--images", help="Image to segment, or a folder of them (repeatable): 2D file or NIfTI."
    ),
    out: Path = typer.Option(..., "--out", help="Output folder for masks and overlays."),
    label: int | None = typer.Option(
        None, "--label", help="Foreground label value in the masks (default: any non-zero)."
    ),
    channel: Literal["grey", "green"] = typer.Option(
        "grey", "--channel", help="Colour images: grey (luminance) or green."
    ),
    window: Literal["ct", "percentile"] = typer.Option(
        "ct", "--window", help="NIfTI intensities: ct (W400/L40) or percentile (MR)."
    ),
    size: int | None = typer.Option(
        None, "--size", help="Working size (default: the checkpoint's image_size, else 64)."
    ),
    max_slices: int = typer.Option(
        5, "--max-slices", help="Support slices taken from a NIfTI support volume."
    ),
    patch: int | None = typer.Option(
        None,
        "--patch",
        min=8,
        help="Full resolution: adapt on support patches and predict windows of this many native pixels "
        "(blended; e.g. the training tile) in every image and every slice of a volume, instead of "
        "resizing whole planes to --size.",
    ),
    overlap: float = typer.Option(0.25, "--overlap", min=0.0, max=0.9, help="With --patch: window overlap."),
    prototypes: Literal["trained", "global"] = typer.Option(
        "trained",
        "--prototypes",
        help="Prototype segmenters: as trained, or global (one foreground and one background prototype, "
        "PANet's rule) for thin structures such as vessels, which ALPNet's local prototypes miss.",
    ),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Write into a non-empty --out folder (same-named masks replaced, other files kept).",
    ),
) -> None:
    """Segment new images from a few annotated ones: masks as PNG (2D) or NIfTI (input geometry kept), plus overlays."""
    from medmeta.deploy.segment import segment_files
    from medmeta.pipeline.segmentation_run import segmenter_or_baseline

    if (support is None) == (support_images is None):
        raise MedmetaError(
            "give the annotated examples either as --support FOLDER or as --support-images with --support-masks"
        )
    if support is not None:
        from medmeta.data.segmentation.folder import find_pairs

        pairs = find_pairs(support)
        support_images, support_masks = [p[1] for p in pairs], [p[2] for p in pairs]
    elif not support_masks:
        raise MedmetaError(
            "--support-images needs its masks: pass --support-masks once per image, same order"
        )
    assert support_images is not None and support_masks is not None
    images = expand_image_folders(images)
    segmenter, cfg, _ = segmenter_or_baseline(model)  # a bad --model leaves --out untouched
    if prototypes == "global":
        from medmeta.methods.segmentation.prototype import use_global_prototypes

        use_global_prototypes(segmenter)
    claim_output_folder(out, overwrite=overwrite)
    work = size or (cfg.data.image_size if cfg is not None else 64)
    written = segment_files(
        segmenter,
        support_images,
        support_masks,
        images,
        out,
        size=work,
        channel=channel,
        window=window,
        label=label,
        max_slices=max_slices,
        patch=patch,
        overlap=overlap,
        on_note=lambda line: err_console.print(line, markup=False, highlight=False, soft_wrap=True),
    )
    for p in written:
        say(str(p))
