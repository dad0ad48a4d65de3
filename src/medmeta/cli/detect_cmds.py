"""``medmeta det train / det kshot`` and ``medmeta detect``: few-shot detection from the command line."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path

import typer

from medmeta.cli.ui import say
from medmeta.errors import DataError

app = typer.Typer(
    help="Few-shot detection: train a detector on base classes, add novel classes from K images.",
    no_args_is_help=True,
)

DATA_HELP = "Box annotations: a Pascal VOC folder, a COCO .json or a .csv (image,xmin,ymin,xmax,ymax,label)."
DROP_HELP = "Skip degenerate boxes (xmax <= xmin or ymax <= ymin) with a warning instead of stopping."
THREADS_HELP = "Torch intra-op threads (default: torch's choice)."


def _threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def _progress(quiet: bool) -> Callable[[int, int, float], None]:
    every = 25

    def on_step(step: int, total: int, loss: float) -> None:
        if not quiet and (step % every == 0 or step == total):
            say(f"step {step}/{total}: loss {loss:.3f}")

    return on_step


@app.command("train")
def det_train(
    data: Path = typer.Option(..., "--data", help=DATA_HELP),
    novel: list[str] = typer.Option(..., "--novel", help="Class left out of base training (repeatable)."),
    out: Path = typer.Option(..., "--out", help="New folder: base/ (and adapted/ with --shots) checkpoints."),
    method: str = typer.Option("tfa", "--method", help="tfa or proto: how --shots adapts the detector."),
    split: str | None = typer.Option(
        "trainval", "--split", help="VOC split to train on ('' for every image)."
    ),
    test_split: str | None = typer.Option("test", "--test-split", help="VOC split scored with --shots."),
    image_size: int = typer.Option(320, "--image-size", min=32, help="Letterbox side in pixels."),
    epochs: int = typer.Option(6, "--epochs", min=1),
    batch_size: int = typer.Option(4, "--batch-size", min=1),
    lr: float = typer.Option(1e-3, "--lr"),
    seed: int = typer.Option(0, "--seed"),
    shots: int | None = typer.Option(
        None, "--shots", min=1, help="Then adapt to K images of the novel class."
    ),
    drop_bad_boxes: bool = typer.Option(False, "--drop-bad-boxes", help=DROP_HELP),
    threads: int | None = typer.Option(None, "--threads", min=1, help=THREADS_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into an existing non-empty folder."),
    quiet: bool = typer.Option(False, "--quiet"),
) -> None:
    """Train a Faster R-CNN on the base classes (every class but --novel); with --shots, add the novel one."""
    from medmeta.outputs import claim_output_folder
    from medmeta.pipeline.detection import adapt_once, check_base_request, train_base
    from medmeta.pipeline.detection_io import save_detector

    split = split or None
    check_base_request(data, novel, method, split, drop_bad_boxes)  # bad input fails before --out exists
    claim_output_folder(out, overwrite=overwrite)
    _threads(threads)
    say(f"training {method} base detector on {data} (novel: {', '.join(novel)} left out) -> {out}")
    detector, fit = train_base(
        data,
        novel,
        method=method,
        split=split,
        image_size=image_size,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        drop_bad=drop_bad_boxes,
        on_step=_progress(quiet),
    )
    info = {
        "novel": list(novel),
        "epochs": epochs,
        "seed": seed,
        "split": split,
        "train_seconds": fit.seconds,
    }
    save_detector(detector, out / "base", method, info)
    say(f"base detector {list(detector.base_classes)} in {fit.seconds:.0f} s -> {out / 'base'}")
    if shots is not None:
        adapted, scores = adapt_once(
            detector, data, novel, method=method, shots=shots, seed=seed, pool_split=split,
            test_split=test_split or None, drop_bad=drop_bad_boxes,
        )  # fmt: skip
        save_detector(adapted, out / "adapted", method, {**info, "shots": shots, "scores": scores})
        say(
            f"adapted to K = {shots}: novel AP50 {100 * scores['novel_ap50']:.1f}, base AP50 "
            f"{100 * scores['base_ap50']:.1f} on {test_split} -> {out / 'adapted'}"
        )


@app.command("kshot")
def det_kshot(
    base: Path = typer.Option(..., "--base", help="Base detector checkpoint folder (`det train` OUT/base)."),
    data: Path = typer.Option(..., "--data", help=DATA_HELP),
    out: Path = typer.Option(..., "--out", help="New folder: rows.csv, summary.json, table.md."),
    novel: list[str] | None = typer.Option(
        None, "--novel", help="Novel class(es) (default: the checkpoint's)."
    ),
    shots: str = typer.Option("1,3,5,10", "--shots", help="Comma-separated K values."),
    draws: int = typer.Option(3, "--draws", min=1, help="Seeded K-shot draws per K."),
    methods: list[str] = typer.Option(
        ["tfa", "proto"], "--method", help="Method NAME[:KEY=VALUE,...], e.g. tfa:rpn_steps=0 (repeatable)."
    ),
    seed: int = typer.Option(0, "--seed"),
    pool_split: str | None = typer.Option("trainval", "--pool-split"),
    test_split: str | None = typer.Option("test", "--test-split"),
    drop_bad_boxes: bool = typer.Option(False, "--drop-bad-boxes", help=DROP_HELP),
    threads: int | None = typer.Option(None, "--threads", min=1, help=THREADS_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into an existing non-empty folder."),
) -> None:
    """The K-shot novel-class protocol: every method on seeded draws; AP50 and AP, novel and base."""
    from medmeta.outputs import claim_output_folder, write_text_atomic
    from medmeta.pipeline.detection import kshot_protocol, markdown_table, parse_method, summarize
    from medmeta.pipeline.detection_io import load_detector

    try:
        ks = [int(k) for k in shots.split(",") if k.strip()]
    except ValueError:
        raise DataError(f"--shots {shots!r}: give comma-separated integers such as 1,3,5,10") from None
    detector, meta = load_detector(base)  # a bad checkpoint fails before --out exists
    claim_output_folder(out, overwrite=overwrite)
    _threads(threads)
    novel_names = list(novel or meta.get("novel") or [])
    if not novel_names:
        raise DataError(f"{base} does not record its novel class: pass --novel NAME")
    specs = dict(parse_method(m.strip()) for m in methods)

    def on_row(row: dict[str, object]) -> None:
        say(
            f"{row['method']} K={row['shots']} draw {row['draw']}: novel AP50 {100 * float(row['novel_ap50']):.1f} "  # type: ignore[arg-type]
            f"base AP50 {100 * float(row['base_ap50']):.1f}"  # type: ignore[arg-type]
        )

    rows = kshot_protocol(
        detector, data, novel_names, methods=specs, shots=ks, draws=draws, seed=seed,
        pool_split=pool_split or None, test_split=test_split or None, drop_bad=drop_bad_boxes, on_row=on_row,
    )  # fmt: skip
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out / "rows.csv", buf.getvalue())
    summary = summarize(rows)
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2))
    table = markdown_table(summary, novel_names)
    write_text_atomic(out / "table.md", table)
    typer.echo(table)


def detect(
    model: Path = typer.Option(
        ..., "--model", help="Detector checkpoint folder (`det train` OUT/base or OUT/adapted)."
    ),
    images: Path = typer.Option(..., "--images", help="Folder of images to detect objects in."),
    out: Path = typer.Option(..., "--out", help="New folder: boxes.csv, boxes.coco.json, overlays/*.png."),
    min_score: float = typer.Option(
        0.3, "--min-score", min=0.0, max=1.0, help="Drawn on the overlays from this score."
    ),
    threads: int | None = typer.Option(None, "--threads", min=1, help=THREADS_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into an existing non-empty folder."),
) -> None:
    """Detect objects with a detector checkpoint: boxes as CSV and COCO JSON, and overlay PNGs."""
    from medmeta.data.boxes import read_rgb
    from medmeta.data.readers import is_image_file
    from medmeta.outputs import claim_output_folder
    from medmeta.pipeline.detection_io import load_detector, overlay, to_original, write_detections

    if not images.is_dir():
        raise DataError(f"--images {images} is not a folder: give a folder of images")
    files = sorted(p for p in images.iterdir() if p.is_file() and is_image_file(p))
    if not files:
        raise DataError(f"--images {images} holds no image file (png, jpg, tif, bmp, dcm, nii)")
    detector, _ = load_detector(model)  # a bad checkpoint fails before --out exists
    claim_output_folder(out, overwrite=overwrite)
    _threads(threads)
    predictor = detector.base_predictor()
    size = detector.options.image_size
    names, sizes, dets = [], [], []
    (out / "overlays").mkdir(exist_ok=True)
    for path in files:
        image, scale, hw = read_rgb(path, size)
        det = to_original(predictor.detections(image[None])[0], scale, hw)
        original, _, _ = read_rgb(path, max(hw))
        (out / "overlays" / f"{path.stem}.png").write_bytes(
            overlay(original[:, : hw[0], : hw[1]], det, predictor.classes, min_score)
        )
        names.append(path.name)
        sizes.append(hw)
        dets.append(det)
    write_detections(out, names, sizes, dets, predictor.classes)
    n_boxes = sum(int((d["scores"] >= min_score).sum()) for d in dets)
    say(f"{len(files)} image(s), {n_boxes} box(es) scoring >= {min_score} -> {out}")


def register(root: typer.Typer) -> None:
    """Add ``medmeta det ...`` and ``medmeta detect`` to the ``medmeta`` app."""
    root.add_typer(app, name="det")
    root.command("detect")(detect)
