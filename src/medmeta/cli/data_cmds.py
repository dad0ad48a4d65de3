"""``medmeta data ...``: list, inspect, picture and download datasets."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from medmeta.cli.ui import console, say
from medmeta.data.root import data_root, existing_data_root
from medmeta.errors import ConfigError
from medmeta.outputs import claim_output_file

app = typer.Typer(help="List, inspect, picture and download datasets.", no_args_is_help=True)


@app.command("list")
def list_cmd(
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Data root (default $MEDMETA_DATA)."),
) -> None:
    """Every dataset found under the data root, plus the built-in synthetic set."""
    from medmeta.data.registry import list_datasets

    root = existing_data_root(data_dir)
    table = Table(title=f"datasets under {root}")
    table.add_column("name")
    table.add_column("kind")
    table.add_column("path")
    for e in list_datasets(root):
        label = "built-in synthetic (generated, not medical)" if e.kind == "builtin" else e.kind
        table.add_row(e.name, label, "" if e.path is None else str(e.path))
    console.print(table)


@app.command("info")
def info_cmd(
    name: str = typer.Argument(..., help="Registered name or folder / .npz path."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Data root (default $MEDMETA_DATA)."),
) -> None:
    """Classes, image counts per split, stored image sizes and unreadable files."""
    from medmeta.data.inspect import describe_dataset

    rep = describe_dataset(name, data_dir)
    title = f"{rep.name}{' (synthetic)' if rep.synthetic else ''}: {rep.kind}, {rep.total} images"
    splits = sorted({s for counts in rep.classes.values() for s in counts})
    say(title)
    table = Table()
    table.add_column("class")
    for s in splits:
        table.add_column(s, justify="right")
    for cls, counts in rep.classes.items():
        table.add_row(cls, *(str(counts.get(s, 0)) for s in splits))
    console.print(table)
    if rep.path:
        say(f"path: {rep.path}")
    sizes = ", ".join(f"{k} ({n})" for k, n in list(rep.image_sizes.items())[:6])
    say(f"stored image sizes: {sizes}")
    if rep.unreadable:
        say(f"unreadable files ({len(rep.unreadable)}): use --skip-bad to skip them")
        for f, why in rep.unreadable[:50]:
            say(f"  {f}: {why}")
    else:
        say("unreadable files: none")


@app.command("near-duplicates")
def near_duplicates_cmd(
    name: str = typer.Argument(..., help="Registered name or folder / .npz path (2D images)."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Data root (default $MEDMETA_DATA)."),
    size: int = typer.Option(64, "--size", help="Working size the images are loaded at."),
    out: Path | None = typer.Option(
        None, "--out", help="CSV of every near-duplicate group (group, split, class, file)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out file."),
) -> None:
    """Near-duplicate images within and across splits (train/test leakage), by a coarse perceptual key."""
    import csv

    from medmeta.data.near_duplicates import near_duplicates
    from medmeta.data.registry import load_dataset

    if size < 16:
        raise ConfigError(f"--size must be at least 16 (the key is 16x16), got {size}")
    if out is not None:
        claim_output_file(out, overwrite=overwrite)
    ds = load_dataset(name, root=data_root(data_dir), image_size=size, channels=1)
    report = near_duplicates(ds)
    say(report.summary())
    if out is not None:
        with out.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["group", "index", "split", "class", "file"])
            for gid, group in enumerate(report.groups):
                for i in group:
                    file = "" if ds.files is None else str(ds.files[i])
                    w.writerow([gid, int(i), report.splits[i], ds.class_names[int(ds.labels[i])], file])
        say(f"groups: {out}")


@app.command("show")
def show_cmd(
    name: str = typer.Argument(..., help="Dataset NAME[@SPLIT][:CLASS,...] or folder path."),
    out: Path = typer.Option(Path("episode.png"), "--out", help="PNG file to write."),
    n_way: int = typer.Option(5, "--n-way"),
    n_shot: int = typer.Option(5, "--n-shot"),
    n_query: int = typer.Option(3, "--n-query"),
    seed: int = typer.Option(0, "--seed"),
    index: int = typer.Option(0, "--index", help="Which episode of the seeded sequence."),
    image_size: int = typer.Option(64, "--image-size"),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Data root (default $MEDMETA_DATA)."),
    skip_bad: bool = typer.Option(False, "--skip-bad"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out file."),
) -> None:
    """Draw one episode (support | query, one row per class, with class names) to a PNG."""
    from medmeta.data.registry import DomainSpec
    from medmeta.explain.episode import save_episode_grid
    from medmeta.tasks.sampler import EpisodeSampler

    claim_output_file(out, overwrite=overwrite)
    ds = DomainSpec.parse(name).load(root=data_dir, image_size=image_size, skip_bad=skip_bad)
    sampler = EpisodeSampler(ds, min(n_way, ds.n_classes), n_shot, n_query, seed=seed)
    save_episode_grid(sampler.episode(index), ds, out)
    say(f"wrote {out} ({ds.display_name}, episode {index} of seed {seed})")


@app.command("download")
def download_cmd(
    name: str = typer.Argument(..., help="MedMNIST v2 name, e.g. bloodmnist."),
    size: int = typer.Option(28, "--size", help="28, 64, 128 or 224 (3D: 28 or 64)."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Data root (default $MEDMETA_DATA)."),
    base_url: str | None = typer.Option(None, "--base-url", help="Mirror serving the official files."),
) -> None:
    """Download an official MedMNIST file into DATA_ROOT/medmnist, checked against the official MD5."""
    from medmeta.data.medmnist import download_medmnist

    path = download_medmnist(name, size, root=data_root(data_dir), base_url=base_url)
    say(f"ready: {path}")
