"""Shared pieces of the federated tests: a small config, and the server loop with sites called directly."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medmeta.config.federated import FederatedConfig, make_federated_config
from medmeta.federated.params import Arrays
from medmeta.federated.protocol import Job, Reply, site_reply
from medmeta.federated.sites import Site

#: the two smallest real domains (2 classes each)
TWO_SITES = ["breastmnist_resaved", "pneumoniamnist_modified"]


def small_config(data_dir: Path | None = None, **sections: Any) -> FederatedConfig:
    """Two real sites, one round of two local steps, four test episodes: seconds per strategy."""
    raw: dict[str, Any] = {
        "data": {"sites": TWO_SITES, "data_dir": None if data_dir is None else str(data_dir)},
        "strategies": ["fedmeta_maml"],
        "centralised": [],
        "site_only": [],
        "methods": {"maml": {"inner_steps": 1}},
        "train": {"rounds": 1, "local_steps": 2, "threads": 1},
        "eval": {"episodes": 4, "shots": [2]},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return make_federated_config(raw)


class DirectExchange:
    """`medmeta.federated.protocol.Exchange` calling `site_reply` in this process: the reference result of a
    job, with no transport in between (node ``i`` is ``sites[i]``)."""

    def __init__(self, sites: Sequence[Site]) -> None:
        self.sites = list(sites)

    def nodes(self, count: int) -> list[int]:
        return list(range(count))

    def send(
        self, kind: str, nodes: Sequence[int], arrays: Arrays | None, job: Job, round_index: int
    ) -> list[Reply]:
        out = []
        for n in nodes:
            r = site_reply(kind, job, self.sites[n], arrays, round_index)
            out.append(Reply(n, r.arrays, r.metrics))
        return out
