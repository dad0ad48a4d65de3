"""Registration on real 2D slices: identity, affine, classical (SimpleITK), plain instance optimisation,
VoxelMorph and its meta-learned initialisation with 0/1/3/10 test-time steps, and instance optimisation
started from a network's field (VoxelMorph's, or the field-init network meta-trained for the refinement)
with 0/3/10/30 steps.

Data (``$MEDMETA_DATA``, ``--size`` px): the TotalSegmentator example CT (30 axial slices) and MR (20), split
by slice into a training block and a held-out block two slices further on (one volume each: held-out slices,
not held-out patients), and brain MRI (``train`` split for training, ``test`` split for evaluation).

Training (both networks, the same episodes, one pair each, meta-batch 4): synthetic smooth deformations of
the training slices (CT, MR, brain) and pairs of training slices at most 3 apart (CT, MR); local NCC +
diffusion. VoxelMorph is trained amortised; the meta-learned initialisation by first-order MAML with 3
inner Adam steps per pair.

Evaluation sets (held-out, seeded, one pair per row): ``SOURCE-syn`` (synthetic deformation, magnitude
``--magnitude`` voxels: the true field is known, so end-point error), ``SOURCE-slices`` (two held-out slices
at most 6 apart: label Dice/HD95 of the TotalSegmentator maps), ``mr->ct`` (an MR slice registered to the CT
slice at the same relative level: different subjects and modalities, mutual information replaces NCC in
every test-time loss). Per method: Dice, HD95 (px), folding fraction (det J <= 0), EPE (px) and seconds per
pair (one thread), mean and 95% CI half-width over pairs.

Each row also gives the paired difference of Dice to identity and to affine (per pair, mean and 95% CI
half-width), the fair test where pairs differ in difficulty.

Writes ``OUT/results.jsonl`` (one line per set and method, appended as they finish) and prints a Markdown
table. Usage:
    MEDMETA_DATA=../shared/data python benchmarks/registration.py --out /tmp/reg_bench [--pairs 30]
"""

from __future__ import annotations

import argparse
import copy
import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from medmeta.config import TrainConfig
from medmeta.data.registration import RegPool, cross_modal_pool, load_brain_pool, load_volume_pool
from medmeta.data.registry import data_root
from medmeta.eval.metrics import mean_ci
from medmeta.eval.registration import score_pairs
from medmeta.methods.registration import REG_METHODS, RegistrationMethod
from medmeta.methods.registration.field_init import FieldInitRegistration
from medmeta.methods.registration.voxelmorph import VoxelMorph
from medmeta.tasks.registration import InterleavedSampler, PairSampler
from medmeta.train.loop import fit
from medmeta.train.sources import EpisodicBatches

METRICS = ("dice", "hd95", "folding", "epe", "seconds")


def split_volume(pool: RegPool, n_train: int, gap: int = 2) -> tuple[RegPool, RegPool]:
    """Slices ``0 .. n_train - 1`` for training, ``n_train + gap ..`` held out."""
    return pool.subset(list(range(n_train))), pool.subset(list(range(n_train + gap, len(pool))))


def train(method: VoxelMorph, sampler: InterleavedSampler, steps: int, seed: int, lr: float = 1e-3) -> float:
    """Train `method` for `steps` meta-batches of 4 pairs with Adam (`lr`); returns the seconds taken."""
    cfg = TrainConfig(
        epochs=1, episodes_per_epoch=steps * 4, meta_batch=4, lr=lr, val_episodes=0, seed=seed, device="cpu"
    )
    torch.manual_seed(seed)
    start = time.perf_counter()
    fit(method, EpisodicBatches(sampler, cfg), cfg, save_state=False, save_last=False)
    return time.perf_counter() - start


def with_loss(method: RegistrationMethod, similarity: str) -> RegistrationMethod:
    """A copy of `method` whose test-time loss uses `similarity` (weights kept)."""
    if method.options.similarity == similarity:
        return method
    other = type(method)(method.options.model_copy(update={"similarity": similarity}))
    if isinstance(method, VoxelMorph) and isinstance(other, VoxelMorph):  # field-init is one too
        other.net.load_state_dict(copy.deepcopy(method.net.state_dict()))
    return other.eval()


def run_set(
    name: str, sampler: PairSampler, methods: dict[str, Callable[[torch.Tensor], torch.Tensor]], out: Path
) -> list[dict[str, object]]:
    episodes = list(sampler)
    rows = []
    per_pair: dict[str, list[float]] = {}
    for label, fn in methods.items():
        values: dict[str, list[float]] = {m: [] for m in METRICS}
        for ep in episodes:
            start = time.perf_counter()
            with torch.no_grad():
                ddf = fn(ep.query_images)
            values["seconds"].append(time.perf_counter() - start)
            for key, v in score_pairs(ddf, ep.query_labels, ep.query_flows, min_pixels=10).items():
                values[key] += v.tolist()
        row: dict[str, object] = {"set": name, "method": label, "pairs": len(episodes)}
        per_pair[label] = values["dice"]
        for ref, key in (("identity", "dice_vs_identity"), ("affine (SimpleITK, MI)", "dice_vs_affine")):
            if ref in per_pair and len(per_pair[ref]) == len(values["dice"]):
                diffs = [a - b for a, b in zip(values["dice"], per_pair[ref], strict=True)]
                finite = [d for d in diffs if np.isfinite(d)]
                if finite:
                    row[key] = list(mean_ci(finite))
        for key, vals in values.items():
            finite = [v for v in vals if np.isfinite(v)]
            if finite:
                mean, ci = mean_ci(finite)
                row[key] = [mean, ci]
        rows.append(row)
        with (out / "results.jsonl").open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
    return rows


def fmt(row: dict[str, object], key: str, digits: int) -> str:
    v = row.get(key)
    if not isinstance(v, list):
        return "-"
    return f"{v[0]:.{digits}f} ± {v[1]:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--train-steps", type=int, default=1000)
    parser.add_argument("--magnitude", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message=".*grid_sample.*")
    args.out.mkdir(parents=True, exist_ok=True)
    root = data_root()
    ct_train, ct_test = split_volume(load_volume_pool(root, "ct", args.size), 18)
    mr_train, mr_test = split_volume(load_volume_pool(root, "mr", args.size), 12)
    brain_train = load_brain_pool(root, "train", args.size, 300, seed=args.seed)
    brain_test = load_brain_pool(root, "test", args.size, args.pairs * 2, seed=args.seed)
    cross = cross_modal_pool(root, args.size)

    syn = {"magnitude": args.magnitude, "seed": args.seed}
    train_sampler = InterleavedSampler(
        [
            PairSampler(ct_train, "synthetic", **syn),
            PairSampler(mr_train, "synthetic", **syn),
            PairSampler(brain_train, "synthetic", **syn),
            PairSampler(ct_train, "slices", seed=args.seed),
            PairSampler(mr_train, "slices", seed=args.seed),
        ],
        n_episodes=args.train_steps * 4,
    )
    vxm = VoxelMorph.from_options({"eval_steps": 0})
    vxm_seconds = train(vxm, train_sampler, args.train_steps, args.seed)
    meta = REG_METHODS["meta_init"].from_options({"inner_steps": 3, "eval_steps": 3})
    assert isinstance(meta, VoxelMorph)
    meta_seconds = train(meta, train_sampler, args.train_steps, args.seed)
    finit = REG_METHODS["field_init"].from_options({"refine_steps": 5, "eval_steps": 0, "start_weight": 1.0})
    assert isinstance(finit, FieldInitRegistration)
    finit_seconds = train(finit, train_sampler, args.train_steps, args.seed)
    vxm_init = FieldInitRegistration.from_options({"eval_steps": 0})  # VoxelMorph's field, then refinement
    vxm_init.net.load_state_dict(vxm.net.state_dict())
    info = {
        "train_seconds": {"voxelmorph": vxm_seconds, "meta_init": meta_seconds, "field_init": finit_seconds},
        "args": vars(args),
    }
    (args.out / "training.json").write_text(json.dumps(info, default=str, indent=2))
    print(json.dumps(info, default=str), flush=True)
    vxm.eval()
    meta.eval()
    finit.eval()
    vxm_init.eval()

    n, test_seed = args.pairs, args.seed + 1000
    sets = {
        "ct-syn": PairSampler(ct_test, "synthetic", magnitude=args.magnitude, seed=test_seed, n_episodes=n),
        "mr-syn": PairSampler(mr_test, "synthetic", magnitude=args.magnitude, seed=test_seed, n_episodes=n),
        "brain-syn": PairSampler(
            brain_test, "synthetic", magnitude=args.magnitude, seed=test_seed, n_episodes=n
        ),
        "ct-slices": PairSampler(ct_test, "slices", max_gap=6, seed=test_seed, n_episodes=n),
        "mr-slices": PairSampler(mr_test, "slices", max_gap=6, seed=test_seed, n_episodes=n),
    }
    cross_sampler = PairSampler(
        cross, "subjects", match_position=True, moving_from="mr/", seed=test_seed, n_episodes=n
    )
    rows: list[dict[str, object]] = []
    for set_name, sampler in [*sets.items(), ("mr->ct", cross_sampler)]:
        sim = "mi" if set_name == "mr->ct" else "lncc"
        io = {
            k: REG_METHODS["instance_opt"].from_options({"steps": k, "similarity": sim})
            for k in (10, 30, 100)
        }
        vx, mt = with_loss(vxm, sim), with_loss(meta, sim)
        assert isinstance(vx, VoxelMorph) and isinstance(mt, VoxelMorph)
        methods: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
            "identity": REG_METHODS["identity"]().register,
            "affine (SimpleITK, MI)": REG_METHODS["classical"].from_options({"transform": "affine"}).register,
            "B-spline (SimpleITK, MI)": REG_METHODS["classical"]
            .from_options({"transform": "bspline"})
            .register,
        }
        if sim == "lncc":
            methods["demons (SimpleITK)"] = (
                REG_METHODS["classical"].from_options({"transform": "demons"}).register
            )
        for k, m in io.items():
            methods[f"instance opt, {k} steps"] = m.register
        for k in (0, 1, 3, 10):
            methods[f"VoxelMorph + {k} steps"] = _steps(vx, k)
        for k in (0, 1, 3, 10):
            methods[f"meta-init + {k} steps"] = _steps(mt, k)
        vi, fi = with_loss(vxm_init, sim), with_loss(finit, sim)
        assert isinstance(vi, VoxelMorph) and isinstance(fi, VoxelMorph)
        for k in (3, 10, 30):
            methods[f"VoxelMorph field + {k} IO steps"] = _steps(vi, k)
        for k in (0, 3, 10, 30):
            methods[f"field-init + {k} IO steps"] = _steps(fi, k)
        rows += run_set(set_name, sampler, methods, args.out)

    print(
        "\n| set | method | Dice | Δ vs identity | Δ vs affine | HD95 (px) | folding (%) | EPE (px) | s / pair |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        fold = r.get("folding")
        fold_s = f"{fold[0] * 100:.2f} ± {fold[1] * 100:.2f}" if isinstance(fold, list) else "-"
        print(
            f"| {r['set']} | {r['method']} | {fmt(r, 'dice', 3)} | {fmt(r, 'dice_vs_identity', 3)} | "
            f"{fmt(r, 'dice_vs_affine', 3)} | {fmt(r, 'hd95', 2)} | {fold_s} | "
            f"{fmt(r, 'epe', 2)} | {fmt(r, 'seconds', 3)} |"
        )


def _steps(method: VoxelMorph, k: int) -> Callable[[torch.Tensor], torch.Tensor]:
    from medmeta.tasks.registration import PairSupport

    return lambda pairs: method.adapt(PairSupport(pairs), steps=k).predict(pairs)


if __name__ == "__main__":
    main()
