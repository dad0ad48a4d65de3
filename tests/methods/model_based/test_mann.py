"""MANN: the memory read and least-recently-used write against plain-loop float64 references, the label
offset, query independence, the support order, and a short meta-training on real blood-cell images."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from tests._helpers.episodes import make_episode
from tests._helpers.model_based import assert_meta_training_helps

import medmeta.methods.model_based.mann as mann_module
from medmeta.errors import ConfigError
from medmeta.methods import build_method
from medmeta.methods.model_based.mann import (
    MANN,
    MemoryState,
    least_used,
    lrua_write,
    memory_read,
    update_usage,
)
from medmeta.models.backbones import Conv4

TOL = 1e-12
Rows = list[list[float]]


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norms = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / max(norms, 1e-8)


def _reference_step(
    memory: Rows,
    usage: list[float],
    read_prev: list[float],
    key: list[float],
    content: list[float],
    gate: float,
    decay: float,
    strength: float,
) -> tuple[Rows, list[float], list[float], list[float], list[float]]:
    """One write-then-read step of one sequence, slot by slot (Santoro et al. 2016, eq. 2-8)."""
    slots, width = len(memory), len(memory[0])
    lu = min(range(slots), key=lambda i: (usage[i], i))  # least used, first of ties
    write = [gate * read_prev[i] + (1 - gate) * (1.0 if i == lu else 0.0) for i in range(slots)]
    memory = [
        [(0.0 if i == lu else memory[i][j]) + write[i] * content[j] for j in range(width)]
        for i in range(slots)
    ]
    scores = [math.exp(strength * _cosine(key, memory[i])) for i in range(slots)]
    weights = [s / sum(scores) for s in scores]
    read = [sum(weights[i] * memory[i][j] for i in range(slots)) for j in range(width)]
    usage = [decay * usage[i] + weights[i] + write[i] for i in range(slots)]
    return memory, usage, weights, read, write


@pytest.mark.parametrize("strength", [None, 3.0])
def test_three_steps_of_write_and_read_match_a_slot_by_slot_reference(strength: float | None) -> None:
    g = torch.Generator().manual_seed(0)
    batch, slots, width, gate, decay = 2, 5, 3, 0.3, 0.9
    memory = torch.full((batch, slots, width), 1e-6, dtype=torch.float64)
    memory[:, 1] = torch.randn(batch, width, generator=g, dtype=torch.float64)  # one slot already in use
    usage = torch.tensor([[0.0, 1.0, 0.0, 0.0, 0.0], [0.2, 0.1, 0.3, 0.1, 0.5]], dtype=torch.float64)
    read_weights = torch.zeros(batch, slots, dtype=torch.float64)
    ref = [(memory[b].tolist(), usage[b].tolist(), read_weights[b].tolist()) for b in range(batch)]
    for _ in range(3):
        keys = torch.randn(batch, width, generator=g, dtype=torch.float64)
        contents = torch.tanh(torch.randn(batch, width, generator=g, dtype=torch.float64))
        factor = None if strength is None else torch.full((batch,), strength, dtype=torch.float64)
        memory, write_weights = lrua_write(memory, usage, read_weights, contents, gate)
        read, read_weights = memory_read(memory, keys, factor)
        usage = update_usage(usage, read_weights, write_weights, decay)
        for b in range(batch):
            m, u, r_prev = ref[b]
            m, u, w, r, ww = _reference_step(
                m, u, r_prev, keys[b].tolist(), contents[b].tolist(), gate, decay, strength or 1.0
            )
            ref[b] = (m, u, w)
            torch.testing.assert_close(memory[b], torch.tensor(m, dtype=torch.float64), rtol=0, atol=TOL)
            torch.testing.assert_close(
                write_weights[b], torch.tensor(ww, dtype=torch.float64), rtol=0, atol=TOL
            )
            torch.testing.assert_close(
                read_weights[b], torch.tensor(w, dtype=torch.float64), rtol=0, atol=TOL
            )
            torch.testing.assert_close(read[b], torch.tensor(r, dtype=torch.float64), rtol=0, atol=TOL)
            torch.testing.assert_close(usage[b], torch.tensor(u, dtype=torch.float64), rtol=0, atol=TOL)


def test_the_least_used_slot_is_zeroed_and_ties_go_to_the_lowest_index() -> None:
    usage = torch.tensor([[0.5, 0.2, 0.2, 0.9]])
    assert least_used(usage).tolist() == [[0.0, 1.0, 0.0, 0.0]]
    memory = torch.ones(1, 4, 2)
    new, write = lrua_write(memory, usage, torch.zeros(1, 4), torch.tensor([[3.0, -1.0]]), 0.0)
    # gate 0: everything goes to slot 1, which was cleared first
    assert write.tolist() == [[0.0, 1.0, 0.0, 0.0]]
    assert new[0].tolist() == [[1.0, 1.0], [3.0, -1.0], [1.0, 1.0], [1.0, 1.0]]


def _small(options: dict[str, Any] | None = None) -> MANN:
    torch.manual_seed(0)
    backbone = Conv4(in_channels=3, hidden=8, image_size=16)
    method = build_method(
        "mann", backbone, {"n_way": 4, "memory_slots": 8, "controller_size": 16, **(options or {})}
    )
    assert isinstance(method, MANN)
    return method


def test_labels_arrive_one_step_late_and_queries_see_the_last_support_label(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    method = _small().eval()
    ep = make_episode(n_way=3, n_shot=2, n_query=2)
    seen: list[tuple[int, torch.Tensor]] = []
    step = method.controller.step

    def record(state: MemoryState, features: torch.Tensor, previous: torch.Tensor, decay: float) -> Any:
        seen.append((features.shape[0], previous.clone()))
        return step(state, features, previous, decay)

    monkeypatch.setattr(method.controller, "step", record)
    with torch.no_grad():
        method.adapt(ep.support).predict(ep.query_images)
    order = method.support_order(1, 6, torch.device("cpu"))[0]
    labels = ep.support_labels[order]
    assert len(seen) == 6 + 1  # six support steps, then all queries in one batched step
    assert torch.equal(seen[0][1], torch.zeros(1, 4))
    for t in range(1, 6):
        assert seen[t][1].argmax(-1).item() == labels[t - 1].item() and seen[t][1].sum() == 1
    n_query, previous = seen[6]
    assert n_query == 6 and bool((previous.argmax(-1) == labels[-1]).all())


def test_each_query_is_read_on_its_own_from_the_post_support_state(monkeypatch: pytest.MonkeyPatch) -> None:
    method = _small().eval()
    ep = make_episode(n_way=3, n_shot=2, n_query=3)
    with torch.no_grad():
        predictor = method.adapt(ep.support)
        together = predictor.predict(ep.query_images)
        alone = torch.cat([predictor.predict(ep.query_images[i : i + 1]) for i in range(9)])
        monkeypatch.setattr(mann_module, "QUERY_CHUNK_ELEMENTS", 1)  # one query per chunk
        chunked = predictor.predict(ep.query_images)
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-6)
    torch.testing.assert_close(together, chunked, rtol=0, atol=1e-6)


def test_the_support_order_is_seeded_in_eval_mode_and_drawn_per_episode_in_training() -> None:
    method = _small().eval()
    cpu = torch.device("cpu")
    first = method.support_order(2, 10, cpu)
    assert torch.equal(first, method.support_order(2, 10, cpu)) and torch.equal(first[0], first[1])
    assert sorted(first[0].tolist()) == list(range(10))
    other = _small({"shuffle_seed": 1}).eval().support_order(1, 10, cpu)
    assert not torch.equal(first[:1], other)
    torch.manual_seed(3)
    drawn = method.train().support_order(2, 10, cpu)
    assert not torch.equal(drawn[0], drawn[1])


def test_the_sequence_loss_adds_the_support_steps_to_the_query_loss() -> None:
    ep = make_episode(n_way=3, n_shot=2, n_query=2)
    plain = _small({"sequence_loss": False}).eval()
    sequence = _small().eval()
    with torch.no_grad():
        queries = torch.nn.functional.cross_entropy(plain.episode_logits(ep), ep.query_labels)
        assert torch.equal(plain.episode_loss(ep), queries)
        read = sequence.read_support(sequence.backbone(ep.support_images)[None], ep.support_labels[None], 3)
        logits = torch.cat([read.logits[0], sequence.episode_logits(ep)])
        expected = torch.nn.functional.cross_entropy(logits, torch.cat([read.labels[0], ep.query_labels]))
        torch.testing.assert_close(sequence.episode_loss(ep), expected)


def test_more_classes_than_label_positions_are_refused_with_the_fix() -> None:
    method = _small({"n_way": 2})
    with pytest.raises(ConfigError, match=r"set the method option n_way=3"):
        method.adapt(make_episode(n_way=3).support)
    with pytest.raises(ConfigError, match="usage_decay"):
        build_method("mann", Conv4(in_channels=3, hidden=8, image_size=16), {"usage_decay": 1.5})


@pytest.mark.data
def test_a_few_dozen_episodes_on_blood_cells_beat_chance_on_unseen_cells(data_dir: Path) -> None:
    assert_meta_training_helps(
        data_dir, "mann", {"controller_size": 64, "memory_slots": 16}, episodes=80, lr=3e-3
    )
