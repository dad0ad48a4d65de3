"""A rank's place in a torchrun job (environment, shard, backend) and every refusal, without processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medmeta.config import TrainConfig, make_config
from medmeta.data.synthetic import make_synthetic
from medmeta.errors import ConfigError, TrainingError
from medmeta.pipeline import train_method
from medmeta.tasks.sampler import MultiDomainSampler
from medmeta.train.distributed import Distributed, backend_for, from_env, process_group, task_shard
from medmeta.train.loop import fit
from medmeta.train.sources import EpisodicBatches
from medmeta.train.sync import RankSync, _decode, _encode
from tests._helpers.cli import assert_one_line_error, run

TORCHRUN = {
    "RANK": "1",
    "WORLD_SIZE": "2",
    "LOCAL_RANK": "1",
    "MASTER_ADDR": "127.0.0.1",
    "MASTER_PORT": "29500",
}
NAMES = make_synthetic(image_size=8).class_names


def test_outside_torchrun_or_with_one_process_there_is_no_distributed_run() -> None:
    assert from_env({}) is None
    assert from_env({**TORCHRUN, "WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"}) is None


def test_torchrun_variables_give_the_rank_world_size_and_local_rank() -> None:
    run_ = from_env(TORCHRUN)
    assert run_ == Distributed(rank=1, world_size=2, local_rank=1)
    assert run_ is not None and not run_.is_main


def test_a_partial_torchrun_environment_names_the_missing_variables() -> None:
    with pytest.raises(
        ConfigError, match=r"LOCAL_RANK, MASTER_ADDR, MASTER_PORT not set: launch .* with torchrun"
    ):
        from_env({"WORLD_SIZE": "2", "RANK": "0"})


def test_a_non_integer_rank_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="RANK='one' is not an integer"):
        from_env({**TORCHRUN, "RANK": "one"})


def test_a_rank_outside_the_world_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"rank 2 of world size 2 .* is not a distributed run"):
        Distributed(rank=2, world_size=2)


SPLITS = [(b, n) for n in (2, 3, 4) for b in (2, 3, 4, 5, 7, 8, 16) if b >= n]


@pytest.mark.parametrize(("meta_batch", "world_size"), SPLITS)
def test_the_shards_split_the_meta_batch_into_contiguous_near_equal_blocks(
    meta_batch: int, world_size: int
) -> None:
    blocks = [task_shard(meta_batch, r, world_size) for r in range(world_size)]
    assert [t for b in blocks for t in b] == list(range(meta_batch))
    assert max(map(len, blocks)) - min(map(len, blocks)) <= 1


def test_fewer_tasks_than_ranks_is_refused_with_the_fix() -> None:
    with pytest.raises(
        ConfigError, match=r"train.meta_batch=1 is smaller than the 2 processes: .* set train.meta_batch"
    ):
        task_shard(1, 0, 2)


def test_the_backend_follows_the_device() -> None:
    assert backend_for(torch.device("cpu")) == "gloo"
    assert backend_for(torch.device("cuda", 0)) == "nccl"


def test_the_ranks_draw_exactly_the_episodes_of_the_whole_batch() -> None:
    """Sampling is a function of the global seed and episode index: the ranks' parts, concatenated, are the
    one-process batch, whatever the domain each batch comes from."""
    domains = [make_synthetic(n_classes=4, n_per_class=6, image_size=8, seed=s) for s in (0, 1)]
    sampler = MultiDomainSampler(domains, 3, 1, 2, seed=5)
    whole = EpisodicBatches(sampler, TrainConfig(meta_batch=5, episodes_per_epoch=10))
    cpu = torch.device("cpu")
    for world_size in (2, 3):
        parts = [whole.shard(r, world_size) for r in range(world_size)]
        assert sum(share for _, share in parts) == pytest.approx(1.0)
        for index in range(2):
            drawn = [ep for part, _ in parts for ep in part.batch(index, cpu)]
            expected = whole.batch(index, cpu)
            assert len(drawn) == len(expected) == 5
            for a, b in zip(drawn, expected, strict=True):
                assert torch.equal(a.support_images, b.support_images) and torch.equal(
                    a.class_ids, b.class_ids
                )


class _Unsplittable:
    """A batch source without ``shard`` (as the supervised and self-supervised sources)."""

    steps_per_epoch = 1

    def batch(self, index: int, device: torch.device) -> torch.Tensor:
        return torch.ones(1, 2)

    def loss(self, method: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
        return method(batch).sum()

    def after_epoch(self, method: object, device: torch.device) -> None:
        """Nothing to refresh."""


def test_a_source_that_cannot_be_split_is_refused_before_training() -> None:
    net = torch.nn.Linear(2, 2)
    before = [p.detach().clone() for p in net.parameters()]
    with pytest.raises(
        TrainingError, match=r"cannot be split across processes .* run this training in one process"
    ):
        fit(net, _Unsplittable(), TrainConfig(device="cpu"), distributed=Distributed(0, 2))  # type: ignore[arg-type]
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))


def test_a_supervised_method_is_refused_under_torchrun(tmp_path: Path) -> None:
    cfg = make_config(
        {
            "data": {"train": ["synthetic:" + ",".join(NAMES[:4])], "image_size": 16},
            "episodes": {"n_way": 3, "n_shot": 1, "n_query": 1},
            "method": {"name": "finetune"},
            "train": {"epochs": 1, "episodes_per_epoch": 2, "val_episodes": 0, "device": "cpu"},
        }
    )
    with pytest.raises(ConfigError, match=r"finetune trains on supervised batches.* without torchrun"):
        train_method(cfg, out_dir=tmp_path / "run", distributed=Distributed(0, 2))
    assert not (tmp_path / "run").exists()


def test_commands_other_than_train_refuse_to_run_under_torchrun(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in TORCHRUN.items():
        monkeypatch.setenv(name, value)
    code, _, err = run(capsys, "evaluate", "--model", "missing.json")
    assert_one_line_error(code, err, "medmeta evaluate does not run under torchrun", "only `medmeta train`")


def test_a_rank_share_outside_0_to_1_is_a_bug() -> None:
    with pytest.raises(ValueError, match=r"share of the meta-batch must be in \(0, 1\], got 0"):
        RankSync(0.0, torch.device("cpu"))


def test_a_training_state_survives_the_json_and_tensor_encoding_of_the_broadcast() -> None:
    """What rank 0 sends (`broadcast_state`): int keys, tuples and CPU tensors come back as they were."""
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters(), lr=0.1, betas=(0.8, 0.9))
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    sent = {"optimizer": opt.state_dict(), "rng": torch.get_rng_state(), "epochs_done": 3}
    tensors: list[torch.Tensor] = []
    skeleton = json.loads(json.dumps(_encode(sent, tensors)))  # what travels as bytes
    received = _decode(skeleton, [t.clone() for t in tensors])
    fresh = torch.optim.Adam(torch.nn.Linear(3, 2).parameters(), lr=0.1)
    fresh.load_state_dict(received["optimizer"])
    assert fresh.param_groups[0]["betas"] == (0.8, 0.9) and received["epochs_done"] == 3
    for index, entries in opt.state_dict()["state"].items():
        for name, value in entries.items():
            assert torch.equal(fresh.state_dict()["state"][index][name], value), (index, name)
    assert torch.equal(received["rng"], sent["rng"])


def test_more_ranks_on_a_machine_than_gpus_is_refused_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with (
        pytest.raises(
            ConfigError, match="local rank 1 needs GPU 1 but this machine has 1: pass --nproc-per-node 1"
        ),
        process_group(Distributed(rank=1, world_size=2, local_rank=1), torch.device("cuda")),
    ):
        pass
