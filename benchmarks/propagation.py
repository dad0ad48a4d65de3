"""Per-patient label propagation on real volumes: Dice of the unlabelled slices against 1/3/5 labelled ones.

Data (``$MEDMETA_DATA``, ``--size`` px): the TotalSegmentator example CT (30 axial slices, 3 mm) and MR (20
slices) with their multi-label maps (model output, not manual). For each volume and each ``k`` in
``--labelled``, ``k`` slices spread evenly (`labelled_positions`) keep their labels and every other slice
is labelled from that patient alone by:

* ``copy``: the nearest labelled slice's labels unchanged (registration by the identity: the floor);
* ``chain (instance_opt)`` / ``chain (demons)``: neighbour-to-neighbour registration from the nearest
  labelled slice, soft labels carried along the chain;
* ``direct (instance_opt)``: the nearest labelled slice registered straight onto the target;
* ``segmentation (finetune)``: a U-Net fine-tuned from scratch on the labelled slices, one binary task per
  label, labels combined per pixel by the highest foreground probability.

Dice: the mean over the labels of each unlabelled slice with at least 10 pixels (labels never seen in a
labelled slice count as 0); mean and 95% CI half-width over those slices (they share one patient, so the
interval describes this patient, not a population). Seconds: the whole volume, one thread.

Writes ``OUT/results.jsonl`` (one line per volume, k and strategy) and prints a Markdown table. Usage:
    MEDMETA_DATA=../shared/data python benchmarks/propagation.py --out /tmp/propagation
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from medmeta.data.registration import load_volume_pool
from medmeta.data.root import data_root
from medmeta.eval.metrics import mean_ci
from medmeta.methods.registration import REG_METHODS
from medmeta.methods.segmentation import SEG_METHODS
from medmeta.pipeline.propagation import (
    labelled_positions,
    propagate_by_registration,
    propagate_by_segmentation,
    slice_dice,
)


def strategies(args: argparse.Namespace) -> dict[str, Callable[[Tensor, Tensor, list[int]], Tensor]]:
    """Name -> propagate(images, labels, labelled) for every strategy compared."""
    identity = REG_METHODS["identity"].from_options({})
    iopt = REG_METHODS["instance_opt"].from_options({"steps": args.steps})
    demons = REG_METHODS["classical"].from_options({"transform": "demons", "iterations": args.steps})
    seg = SEG_METHODS["finetune"].from_options({"steps": args.seg_steps, "lr": 3e-3})
    return {
        "copy": lambda x, y, m: propagate_by_registration(x, y, m, identity),
        "chain (instance_opt)": lambda x, y, m: propagate_by_registration(x, y, m, iopt, "chain"),
        "direct (instance_opt)": lambda x, y, m: propagate_by_registration(x, y, m, iopt, "direct"),
        "chain (demons)": lambda x, y, m: propagate_by_registration(x, y, m, demons, "chain"),
        "segmentation (finetune)": lambda x, y, m: propagate_by_segmentation(x, y, m, seg, min_pixels=10),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--labelled", default="1,3,5", help="comma-separated numbers of labelled slices")
    parser.add_argument(
        "--steps", type=int, default=100, help="instance optimisation steps / demons iterations"
    )
    parser.add_argument("--seg-steps", type=int, default=100, help="fine-tuning steps per label")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=UserWarning)
    args.out.mkdir(parents=True, exist_ok=True)
    root = data_root(None)
    rows = []
    for volume in ("ct", "mr"):
        pool = load_volume_pool(root, volume, args.size)
        assert pool.labels is not None
        for k in (int(v) for v in args.labelled.split(",")):
            marks = labelled_positions(len(pool), k)
            for name, propagate in strategies(args).items():
                torch.manual_seed(args.seed)
                start = time.perf_counter()
                predicted = propagate(pool.images, pool.labels, marks)
                seconds = time.perf_counter() - start
                dice = slice_dice(predicted, pool.labels, marks)
                mean, half = mean_ci(dice.tolist())
                row = {
                    "volume": volume,
                    "labelled": k,
                    "slices": marks,
                    "strategy": name,
                    "dice": mean,
                    "dice_ci": half,
                    "scored_slices": int(dice.numel()),
                    "seconds": seconds,
                }
                rows.append(row)
                with (args.out / "results.jsonl").open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
    names = list(dict.fromkeys(r["strategy"] for r in rows))
    cols = [(v, k) for v in ("ct", "mr") for k in sorted({r["labelled"] for r in rows})]
    print("\n| strategy | " + " | ".join(f"{v.upper()}, {k} labelled" for v, k in cols) + " |")
    print("|---|" + "---|" * len(cols))
    for name in names:
        cells = []
        for v, k in cols:
            r = next(r for r in rows if r["strategy"] == name and r["volume"] == v and r["labelled"] == k)
            cells.append(f"{r['dice']:.3f} ± {r['dice_ci']:.3f} ({r['seconds']:.0f} s)")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
