"""``medmeta weights ...``: name local pretrained weights by their SHA-256, so runs can cite them."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from medmeta.cli.ui import console, say

app = typer.Typer(help="Record local pretrained weights under a name (with SHA-256).", no_args_is_help=True)


@app.command("import")
def import_cmd(
    path: Path = typer.Argument(..., help="A .safetensors file, or a folder in the library's layout."),
    name: str = typer.Option(..., "--name", help="Name runs use: --weights NAME."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing record of NAME."),
) -> None:
    """Record PATH under NAME with the SHA-256 of its files (the weights stay where they are)."""
    from medmeta.models.pretrained.registry import import_weights, weights_home

    record = import_weights(path, name, overwrite=overwrite)
    for file, digest in record.sha256.items():
        say(f"{file}  sha256 {digest}")
    say(f"recorded '{record.name}' -> {record.path} in {weights_home()}; use it with --weights {record.name}")


@app.command("list")
def list_cmd() -> None:
    """Every recorded name, its path and files."""
    from medmeta.models.pretrained.registry import list_weights, weights_home

    table = Table(title=f"weights recorded in {weights_home()}")
    table.add_column("name")
    table.add_column("path")
    table.add_column("files (sha256)")
    for r in list_weights():
        table.add_row(r.name, r.path, ", ".join(f"{f} ({d[:12]})" for f, d in r.sha256.items()))
    console.print(table)
