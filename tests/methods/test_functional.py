"""The functional core: inner loop, straight-through surrogate, task threads and module replicas."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from medmeta.methods.functional import batchnorm_overrides, inner_loop, sgd_update
from medmeta.methods.meta_batch import plan_workers, replica, run_tasks, straight_through


def test_straight_through_has_the_value_and_delivers_the_given_gradients() -> None:
    a = torch.randn(3, requires_grad=True)
    b = torch.randn(2, 2, requires_grad=True)
    given = [torch.tensor([1.0, 2.0, 3.0]), None]
    out = straight_through(torch.tensor(0.75), [a, b], given)
    assert float(out.detach()) == 0.75
    (2 * out).backward()
    assert torch.equal(a.grad, 2 * given[0])
    assert b.grad is None


def test_plan_workers_uses_one_task_per_thread_on_cpu_only() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        assert plan_workers(8, 0, torch.device("cpu")) == (4, 1)
        assert plan_workers(2, 0, torch.device("cpu")) == (2, 2)
        assert plan_workers(8, 1, torch.device("cpu")) == (1, 4)
        assert plan_workers(8, 0, torch.device("cuda")) == (1, 4)
        assert plan_workers(1, 0, torch.device("cpu")) == (1, 4)
    finally:
        torch.set_num_threads(threads)


def test_run_tasks_keeps_task_order_and_restores_the_thread_setting() -> None:
    threads = torch.get_num_threads()
    seen: dict[int, int] = {}

    def task(i: int, worker: int) -> int:
        seen[i] = torch.get_num_threads()
        assert threading.current_thread() is not threading.main_thread()
        return i * i

    assert run_tasks(task, 5, 2, 1) == [0, 1, 4, 9, 16]
    assert set(seen.values()) == {1}
    assert torch.get_num_threads() == threads


def test_a_replica_has_the_structure_and_no_storage_and_the_caller_gets_the_module() -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)).eval()
    assert replica(net, -1) is net
    copy = replica(net, 0)
    assert copy is not net and copy is replica(net, 0)
    assert [n for n, _ in copy.named_parameters()] == [n for n, _ in net.named_parameters()]
    assert all(p.device.type == "meta" for p in copy.parameters())
    assert not copy.training
    net.append(nn.ReLU())
    net.append(nn.Conv2d(2, 2, 1))
    assert replica(net, 0) is not copy  # rebuilt when the structure changes


def test_batchnorm_overrides_make_batch_norm_use_batch_statistics_in_eval_mode() -> None:
    net = nn.Sequential(nn.BatchNorm2d(2)).eval()
    net[0].running_mean.fill_(100.0)
    x = torch.randn(4, 2, 3, 3) * 5 + 2
    out = torch.func.functional_call(net, batchnorm_overrides(net), (x,))
    torch.testing.assert_close(out.mean(dim=(0, 2, 3)), torch.zeros(2), rtol=0, atol=1e-5)
    assert float(net[0].running_mean[0]) == 100.0


def test_inner_loop_refuses_unknown_adapted_names() -> None:
    w = torch.zeros(2, requires_grad=True)
    with pytest.raises(KeyError, match="nope"):
        inner_loop(
            lambda p, k: p["w"].sum(),
            {"w": w},
            ["nope"],
            sgd_update(lambda k, i: 0.1),
            1,
            track=True,
            create_graph=True,
        )


def test_a_detached_inner_loop_returns_leaves_and_a_tracked_one_keeps_the_graph() -> None:
    w = torch.tensor([1.0, -2.0], requires_grad=True)
    loss = lambda p, k: (p["w"] ** 2).sum()  # noqa: E731
    free = inner_loop(loss, {"w": w}, ["w"], sgd_update(lambda k, i: 0.25), 2, track=False, create_graph=True)
    assert free[-1]["w"].grad_fn is None
    torch.testing.assert_close(free[-1]["w"].detach(), w.detach() * 0.25)  # w <- w - 0.25 * 2w, twice
    tracked = inner_loop(
        loss, {"w": w}, ["w"], sgd_update(lambda k, i: 0.25), 2, track=True, create_graph=True
    )
    (g,) = torch.autograd.grad(tracked[-1]["w"].sum(), [w])
    torch.testing.assert_close(g, torch.full((2,), 0.25))
