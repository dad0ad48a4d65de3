"""The ``medmeta`` command: data inspection, training, evaluation and the demo."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from medmeta._accel.allocator import keep_freed_memory
from medmeta._optional import OptionalDependencyError
from medmeta.cli import data_cmds, deploy_cmds, detect_cmds, seg_cmds, weights_cmds
from medmeta.cli.benchmark_cmd import benchmark
from medmeta.cli.continual_cmd import continual
from medmeta.cli.distill_cmd import distill
from medmeta.cli.federated_cmd import federated
from medmeta.cli.fusion_cmd import fusion
from medmeta.cli.overrides import Device, collect, parse_options, parse_way
from medmeta.cli.pretrain_cmd import pretrain
from medmeta.cli.register_cmd import propagate, register
from medmeta.cli.ui import RichProgress, console, err_console, interrupt_reported, results_table, say
from medmeta.config import RunConfig, apply_overrides, load_config, make_config
from medmeta.errors import MedmetaError
from medmeta.outputs import check_run_folder, claim_output_file
from medmeta.pipeline.checks import check_method_config
from medmeta.train.distributed import Distributed, from_env, process_group
from medmeta.train.loop import resolve_device

app = typer.Typer(
    name="medmeta",
    help="Few-shot (meta-)learning for medical images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(data_cmds.app, name="data")
app.add_typer(seg_cmds.app, name="seg")
app.add_typer(weights_cmds.app, name="weights")
app.command("segment")(seg_cmds.segment)
deploy_cmds.register(app)
detect_cmds.register(app)
app.command()(benchmark)
app.command()(pretrain)
app.command()(continual)
app.command()(federated)
app.command()(distill)
app.command()(fusion)
app.command()(register)
app.command()(propagate)

_state = {"debug": False}


@app.callback()
def _root(
    ctx: typer.Context,
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    _state["debug"] = debug or bool(os.environ.get("MEDMETA_DEBUG"))
    keep_freed_memory()
    if ctx.invoked_subcommand != "train" and from_env() is not None:
        raise MedmetaError(
            f"medmeta {ctx.invoked_subcommand} does not run under torchrun (every process would do the whole "
            "job): run it as one process; only `medmeta train` splits meta-batches across torchrun processes"
        )


def _build_config(config: Path | None, overrides: dict[str, Any]) -> RunConfig:
    if config is not None:
        return check_method_config(load_config(config, overrides), source=str(config))
    return check_method_config(
        make_config(apply_overrides({}, overrides), source="options"), source="options"
    )


OVERWRITE_RUN_HELP = (
    "Replace the run already in OUT: only the files medmeta writes there (best*, last*, train_state*, "
    "history.json, results.json, config.yaml) are removed; a folder holding any other file is refused."
)
RESUME_HELP = (
    "Continue the run in OUT from its last complete epoch (weights, optimiser, schedule, RNG); the config "
    "must match (train.epochs may grow with a constant learning rate). An empty or missing OUT starts anew."
)
OVERWRITE_FILE_HELP = "Replace an existing output file (never a folder, link or special file)."


def _write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    tmp.replace(path)


@app.command()
def train(
    out: Path = typer.Option(
        ..., "--out", help="Run folder: checkpoints, history, results (must be new or empty, see below)."
    ),
    resume: bool = typer.Option(False, "--resume", help=RESUME_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_RUN_HELP),
    config: Path | None = typer.Option(None, "--config", help="YAML run config (flags override it)."),
    train_data: list[str] | None = typer.Option(
        None, "--train", help="Training domain NAME[@SPLIT][:CLASS,...]."
    ),
    test_data: list[str] | None = typer.Option(None, "--test", help="Test domain NAME[@SPLIT][:CLASS,...]."),
    val_data: list[str] | None = typer.Option(
        None, "--val", help="Validation domain (default: held-out images)."
    ),
    method: str | None = typer.Option(None, "--method", help="Method name, e.g. protonet."),
    option: list[str] | None = typer.Option(None, "--option", help="Method option KEY=VALUE (repeatable)."),
    backbone: str | None = typer.Option(
        None, "--backbone", help="conv4, resnet12, timm:ARCH[.TAG], open_clip:NAME or hf:ORG/REPO."
    ),
    weights: str | None = typer.Option(
        None,
        "--weights",
        help="A `medmeta pretrain` RUN/best.json (conv4, resnet12, timm:), or library backbone weights: a "
        "local file or folder, or a `weights import` name.",
    ),
    pretrained: bool | None = typer.Option(
        None, "--pretrained/--no-pretrained", help="Library backbone without --weights: download or random."
    ),
    input_size: int | None = typer.Option(
        None, "--input-size", help="Library backbone: run the network at this side (default: the weights')."
    ),
    n_way: str | None = typer.Option(None, "--n-way", help="Classes per training episode, or 'all'."),
    n_shot: int | None = typer.Option(None, "--n-shot"),
    n_query: int | None = typer.Option(None, "--n-query"),
    epochs: int | None = typer.Option(None, "--epochs"),
    episodes_per_epoch: int | None = typer.Option(None, "--episodes-per-epoch"),
    meta_batch: int | None = typer.Option(None, "--meta-batch"),
    lr: float | None = typer.Option(None, "--lr"),
    seed: int | None = typer.Option(None, "--seed"),
    image_size: int | None = typer.Option(None, "--image-size"),
    channels: int | None = typer.Option(None, "--channels"),
    eval_episodes: int | None = typer.Option(None, "--eval-episodes"),
    eval_n_way: str | None = typer.Option(None, "--eval-n-way", help="Test ways, or 'all' (default)."),
    eval_n_shot: int | None = typer.Option(None, "--eval-n-shot"),
    device: Device | None = typer.Option(
        None, "--device", help="Where to compute (auto: CUDA when present)."
    ),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Data root (default $MEDMETA_DATA)."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip unreadable images instead of stopping."),
    allow_class_overlap: bool = typer.Option(False, "--allow-class-overlap"),
    dedupe: bool = typer.Option(
        False,
        "--dedupe",
        help="Keep one image per near-duplicate group (see `medmeta data near-duplicates`).",
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Meta-train a method, keep the best checkpoint (OUT/best.json) and evaluate on the test domains.

    Under torchrun (``torchrun --nproc-per-node N -m medmeta.cli.main train ...``) the tasks of every
    meta-batch are split across the N processes; rank 0 writes OUT and prints (docs/distributed.md).
    """
    ov = collect(
        {
            "data.train": train_data,
            "data.test": test_data,
            "data.val": val_data,
            "method.name": method,
            "model.backbone": backbone,
            "model.weights": weights,
            "model.pretrained": pretrained,
            "model.input_size": input_size,
            "episodes.n_shot": n_shot,
            "episodes.n_query": n_query,
            "train.epochs": epochs,
            "train.episodes_per_epoch": episodes_per_epoch,
            "train.meta_batch": meta_batch,
            "train.lr": lr,
            "train.seed": seed,
            "train.device": device,
            "data.image_size": image_size,
            "data.channels": channels,
            "data.data_dir": None if data_dir is None else str(data_dir),
            "data.skip_bad": skip_bad or None,
            "data.allow_class_overlap": allow_class_overlap or None,
            "data.dedupe": dedupe or None,
            "eval.episodes": eval_episodes,
            "eval.n_shot": eval_n_shot,
        }
    )
    if option:
        ov["method.options"] = parse_options(option)
    for key, text in (("episodes.n_way", n_way), ("eval.n_way", eval_n_way)):
        way = parse_way(text)
        if way != "unset":
            ov[key] = way
    cfg = _build_config(config, ov)
    run = from_env()  # torchrun's RANK, WORLD_SIZE...: None in one process
    if run is None:
        _train(cfg, out, None, quiet=quiet, overwrite=overwrite, resume=resume)
        return
    with process_group(run, resolve_device(cfg.train.device)):
        _train(cfg, out, run, quiet=quiet, overwrite=overwrite, resume=resume)


def _train(
    cfg: RunConfig, out: Path, run: Distributed | None, *, quiet: bool, overwrite: bool, resume: bool
) -> None:
    """`train` in one process (`run` None) or as one rank of a torchrun job (only rank 0 says anything)."""
    from medmeta.pipeline import default_normalization, evaluate_on_tests, train_method

    if run is not None and not run.is_main:
        train_method(cfg, out_dir=None, overwrite=overwrite, resume=resume, distributed=run)
        return
    check_run_folder(out, overwrite=overwrite, resume=resume)  # before saying anything; no side effect
    where = (
        "" if run is None else f" on {run.world_size} processes ({cfg.train.meta_batch} tasks per meta-batch)"
    )
    say(f"training {cfg.method.name} ({cfg.model.backbone}) on {', '.join(cfg.data.train)}{where} -> {out}")
    progress = RichProgress(enabled=not quiet)
    method_obj, fit_result, data = train_method(
        cfg, out_dir=out, progress=progress, overwrite=overwrite, resume=resume, distributed=run
    )
    say(
        f"best validation accuracy {100 * fit_result.best_score:.2f}% "
        f"(checkpoint {fit_result.best_checkpoint}, {fit_result.seconds:.0f} s)"
    )
    if data.test:
        norm = default_normalization(data.train[0].channels)
        results = evaluate_on_tests(method_obj, cfg, data.test, normalization=norm, progress=progress)
        console.print(results_table(results, f"{cfg.method.name}: test episodes"))
        _write_json(out / "results.json", [r.to_dict() for r in results])


@app.command()
def evaluate(
    model: Path = typer.Option(..., "--model", help="Checkpoint (RUN/best.json)."),
    test_data: list[str] | None = typer.Option(None, "--test", help="Test domains (default: the run's)."),
    n_way: str | None = typer.Option(None, "--n-way", help="Ways, or 'all' (default: the run's)."),
    n_shot: int | None = typer.Option(None, "--n-shot"),
    n_query: int | None = typer.Option(None, "--n-query"),
    episodes: int | None = typer.Option(None, "--episodes"),
    seed: int | None = typer.Option(None, "--seed"),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Data root (default $MEDMETA_DATA)."),
    out: Path | None = typer.Option(None, "--out", help="Write the results as JSON here."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_FILE_HELP),
    quiet: bool = typer.Option(False, "--quiet"),
) -> None:
    """Evaluate a checkpoint on seeded test episodes: accuracy with a 95% CI per domain."""
    from medmeta.data.registry import DomainSpec
    from medmeta.pipeline import (
        evaluate_on_tests,
        load_domain,
        load_method,
        normalization_from_meta,
    )

    if out is not None:
        claim_output_file(out, overwrite=overwrite)
    method_obj, cfg, meta = load_method(model)
    if meta.get("kind") == "adapted":
        source = meta.get("source_checkpoint", {}).get("file") or "the checkpoint it was adapted from"
        raise MedmetaError(
            f"{model} is adapted to its own support set, which `evaluate` would ignore (it samples new support "
            f"sets): score it on a labelled folder with `medmeta score --model {model} --images FOLDER`, or "
            f"evaluate {source}"
        )
    ov = collect(
        {
            "data.test": test_data,
            "data.data_dir": None if data_dir is None else str(data_dir),
            "eval.n_shot": n_shot,
            "eval.n_query": n_query,
            "eval.episodes": episodes,
            "eval.seed": seed,
        }
    )
    way = parse_way(n_way)
    if way != "unset":
        ov["eval.n_way"] = way
    cfg = check_method_config(make_config(apply_overrides(cfg.model_dump(mode="json"), ov), source="options"))
    if not cfg.data.test:
        raise MedmetaError("no test domain: pass --test NAME[@SPLIT][:CLASS,...]")
    tests = [load_domain(DomainSpec.parse(t), cfg) for t in cfg.data.test]
    results = evaluate_on_tests(
        method_obj, cfg, tests, normalization=normalization_from_meta(meta), progress=RichProgress(not quiet)
    )
    console.print(results_table(results, f"{meta.get('method')}: test episodes"))
    if out is not None:
        _write_json(out, [r.to_dict() for r in results])


#: epochs of the demo's self-supervised stage (about 2 minutes each on 2 CPU cores)
DEMO_SSL_EPOCHS = 3


@app.command()
def demo(
    out: Path = typer.Option(
        Path("runs/demo"),
        "--out",
        help="Run folder. The demo owns it: an earlier run's medmeta files in it are replaced; a folder "
        "holding any other file is refused.",
    ),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Data root (default $MEDMETA_DATA)."),
    episodes: int = typer.Option(300, "--episodes", help="Training episodes."),
    eval_episodes: int = typer.Option(300, "--eval-episodes", help="Test episodes per domain."),
    ssl_epochs: int = typer.Option(
        DEMO_SSL_EPOCHS,
        "--ssl-epochs",
        min=0,
        help="Epochs of the self-supervised stage on unlabelled brain MRI (0: skip it; needs medmeta[ssl]).",
    ),
    ssl_images: int | None = typer.Option(
        None, "--ssl-images", min=2, help="At most this many unlabelled images in the self-supervised stage."
    ),
    quiet: bool = typer.Option(False, "--quiet"),
) -> None:
    """The main job: meta-train ProtoNet and test it on unseen classes and an unseen domain, then learn a
    representation from unlabelled images of that domain and compare it with the raw pixels."""
    from medmeta.cli.demo import run_demo

    run_demo(
        out=out,
        data_dir=data_dir,
        episodes=episodes,
        eval_episodes=eval_episodes,
        quiet=quiet,
        ssl_epochs=ssl_epochs,
        ssl_images=ssl_images,
    )


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors print one line (no traceback unless --debug) and exit with code 2."""
    args = sys.argv[1:] if argv is None else argv
    try:
        app(args=args, prog_name="medmeta")  # usage errors: typer prints them and exits with code 2
    except (MedmetaError, OptionalDependencyError) as exc:
        if _state["debug"] or "--debug" in args:
            raise
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        sys.exit(2)
    except SystemExit as exc:  # typer turns Ctrl-C into a silent exit 130; commands may have said more
        if exc.code == 130 and not interrupt_reported():
            err_console.print("interrupted: files and checkpoints written so far are kept")
        raise


if __name__ == "__main__":
    main()
