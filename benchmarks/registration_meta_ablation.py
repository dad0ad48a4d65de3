"""Ablation of test-time steps and meta-training for registration networks, on validation pairs.

Validation pairs: 12 synthetic deformations (magnitude 2 px, seed 777) of the *training* slices of the
example CT and of the MR (never the held-out slices of ``benchmarks/registration.py``). Prints, for each
network, mean end-point error (px) and label Dice after 0/1/3/10 test-time Adam steps:

* VoxelMorph trained as in ``benchmarks/registration.py`` (500 steps), test-time Adam lr 1e-3, 3e-4, 1e-4;
* the meta-learned initialisation started from those VoxelMorph weights, 250 more first-order MAML steps
  (outer Adam lr 1e-3) with inner Adam lr 3e-4 and 1e-3;
* ``--second``: a second VoxelMorph (500 steps), then 250 more steps at Adam lr 1e-4 of each of: amortised
  training, first-order MAML and Reptile (inner Adam lr 3e-4, 3 steps), all from its weights.

Usage: MEDMETA_DATA=../shared/data python benchmarks/registration_meta_ablation.py [--second]
(about 10 minutes each)
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from medmeta.data.registration import load_brain_pool, load_volume_pool
from medmeta.data.registry import data_root
from medmeta.eval.registration import score_pairs
from medmeta.methods.registration import REG_METHODS
from medmeta.methods.registration.voxelmorph import VoxelMorph
from medmeta.tasks.registration import InterleavedSampler, PairEpisode, PairSampler, PairSupport
from registration import split_volume, train


def evaluate(method: VoxelMorph, name: str, val: list[PairEpisode]) -> None:
    out = {}
    for k in (0, 1, 3, 10):
        epe, dice = [], []
        for ep in val:
            with torch.no_grad():
                ddf = method.adapt(PairSupport(ep.query_images), steps=k).predict(ep.query_images)
            s = score_pairs(ddf, ep.query_labels, ep.query_flows, 10)
            epe.append(float(s["epe"][0]))
            dice.append(float(s["dice"][0]))
        out[k] = (round(sum(epe) / len(epe), 3), round(sum(dice) / len(dice), 3))
    print(name, out, flush=True)


def second(sampler: InterleavedSampler, val: list[PairEpisode]) -> None:
    vxm = VoxelMorph.from_options({"inner_lr": 3e-4})
    print("voxelmorph training seconds", train(vxm, sampler, 500, 0), flush=True)
    more = VoxelMorph.from_options({"inner_lr": 3e-4})
    more.net.load_state_dict(vxm.net.state_dict())
    print("250 more amortised steps, seconds", train(more, sampler, 250, 1, lr=1e-4), flush=True)
    evaluate(more.eval(), "voxelmorph, 500 + 250 amortised steps (lr 1e-4)", val)
    for kind in ("fomaml", "reptile"):
        meta = REG_METHODS["meta_init"].from_options({"inner_steps": 3, "inner_lr": 3e-4, "meta": kind})
        assert isinstance(meta, VoxelMorph)
        meta.net.load_state_dict(vxm.net.state_dict())
        print(kind, "seconds", train(meta, sampler, 250, 1, lr=1e-4), flush=True)
        evaluate(meta.eval(), f"{kind} from voxelmorph, outer lr 1e-4, inner lr 3e-4", val)


def main() -> None:
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    root = data_root()
    ct_train, _ = split_volume(load_volume_pool(root, "ct", 64), 18)
    mr_train, _ = split_volume(load_volume_pool(root, "mr", 64), 12)
    brain_train = load_brain_pool(root, "train", 64, 300, seed=0)
    syn = {"magnitude": 2.0, "seed": 0}
    sampler = InterleavedSampler(
        [
            PairSampler(ct_train, "synthetic", **syn),
            PairSampler(mr_train, "synthetic", **syn),
            PairSampler(brain_train, "synthetic", **syn),
            PairSampler(ct_train, "slices", seed=0),
            PairSampler(mr_train, "slices", seed=0),
        ],
        n_episodes=4000,
    )
    val = [
        PairSampler(p, "synthetic", magnitude=2.0, seed=777).episode(i)
        for p in (ct_train, mr_train)
        for i in range(12)
    ]
    if "--second" in sys.argv:
        second(sampler, val)
        return
    vxm = VoxelMorph.from_options({})
    print("voxelmorph training seconds", train(vxm, sampler, 500, 0), flush=True)
    vxm.eval()
    for lr in (1e-3, 3e-4, 1e-4):
        m = VoxelMorph(vxm.options.model_copy(update={"inner_lr": lr}))
        m.net.load_state_dict(vxm.net.state_dict())
        evaluate(m.eval(), f"voxelmorph, test-time lr {lr}", val)
    for lr in (3e-4, 1e-3):
        meta = REG_METHODS["meta_init"].from_options({"inner_steps": 3, "inner_lr": lr})
        assert isinstance(meta, VoxelMorph)
        meta.net.load_state_dict(vxm.net.state_dict())
        print("meta training seconds", lr, train(meta, sampler, 250, 1), flush=True)
        evaluate(meta.eval(), f"FOMAML from voxelmorph, inner lr {lr}", val)


if __name__ == "__main__":
    main()
