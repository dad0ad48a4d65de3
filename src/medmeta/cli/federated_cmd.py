"""``medmeta federated``: sites that keep their images train together through Flower; each adapts from a
few shots and is tested on its own held-out images, against centralised and site-only training."""

from __future__ import annotations

import os
import shlex
import sys
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer

from medmeta.cli.overrides import collect
from medmeta.cli.ui import console, say
from medmeta.config import apply_overrides
from medmeta.config.federated import FederatedConfig, load_federated_config, make_federated_config


class EngineChoice(StrEnum):
    simulation = "simulation"
    processes = "processes"


def federated(
    out: Path = typer.Option(
        ..., "--out", help="Output folder: new or empty (or this command's earlier run, with --overwrite)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier federated run in OUT."),
    config: Path | None = typer.Option(None, "--config", help="YAML federated config (flags override it)."),
    site: list[str] | None = typer.Option(None, "--site", help="A site's domain (repeatable, at least two)."),
    strategy: list[str] | None = typer.Option(
        None, "--strategy", help="fedmeta_maml, fedmeta_meta_sgd, per_fedavg, fedavg or fedprox (repeatable)."
    ),
    engine: EngineChoice | None = typer.Option(
        None,
        "--engine",
        help="simulation (Flower's simulation engine) or processes (SuperLink + SuperNodes).",
    ),
    rounds: int | None = typer.Option(None, "--rounds", help="Communication rounds."),
    local_steps: int | None = typer.Option(None, "--local-steps", help="Local optimiser steps per round."),
    shots: list[int] | None = typer.Option(None, "--shots", help="K of the few-shot test (repeatable)."),
    episodes: int | None = typer.Option(None, "--episodes", help="Test episodes per site and K."),
    dp_epsilon: float | None = typer.Option(
        None, "--dp-epsilon", help="Also run DP-SGD at this epsilon per site."
    ),
    dp_delta: float | None = typer.Option(
        None, "--dp-delta", help="DP delta (default 1 / training images per site)."
    ),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="Data root of the sites (default $MEDMETA_DATA)."
    ),
    threads: int | None = typer.Option(None, "--threads", help="Torch threads per process."),
) -> None:
    """Federated few-shot learning over sites (one domain each) with Flower; writes OUT/federated.md, .csv,
    .json (see docs/federated.md)."""
    from medmeta.federated.run import run_federated

    overrides = collect(
        {
            "data.sites": site,
            "strategies": strategy,
            "engine": engine,
            "train.rounds": rounds,
            "train.local_steps": local_steps,
            "eval.shots": shots,
            "eval.episodes": episodes,
            "dp.epsilon": dp_epsilon,
            "dp.delta": dp_delta,
            "data.data_dir": None if data_dir is None else str(data_dir),
            "train.threads": threads,
        }
    )
    cfg: FederatedConfig = (
        load_federated_config(config, overrides)
        if config is not None
        else make_federated_config(apply_overrides({}, overrides), source="options")
    )
    os.environ["FLWR_TELEMETRY_ENABLED"] = "0"  # no call home from a hospital's machine
    if cfg.train.threads:
        import torch

        torch.set_num_threads(cfg.train.threads)
    command = "medmeta " + shlex.join(sys.argv[1:]) if sys.argv[1:] else ""

    def on_row(row: dict[str, Any]) -> None:
        say(f"{row['strategy']}: done in {row['seconds']:.0f} s")

    result = run_federated(cfg, out=out, overwrite=overwrite, command=command, on_row=on_row)
    console.print((out / "federated.md").read_text(encoding="utf-8"))
    say(f"{len(result.rows)} rows in {result.seconds:.0f} s; wrote {', '.join(str(p) for p in result.files)}")
