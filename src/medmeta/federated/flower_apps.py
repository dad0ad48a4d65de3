"""Flower's ServerApp and ClientApp around `medmeta.federated.protocol` (the Message API of flwr 1.42).

Messages carry an ``ArrayRecord`` of weights (named float32 arrays) and a ``ConfigRecord`` with the job
and the round (JSON text); replies carry weights (``train``) and metrics as JSON text. For a deployment,
``server_app`` and ``client_app`` are the components a Flower App names (see docs/federated.md): the
ServerApp reads the job from the file named by the run config ``job-file``; a SuperNode's node config
names its ``site`` and, optionally, its ``data-dir``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medmeta._optional import optional_import
from medmeta.config.federated import SitesConfig
from medmeta.errors import MedmetaError
from medmeta.federated.params import Arrays
from medmeta.federated.protocol import Job, Reply, serve, site_reply
from medmeta.federated.sites import Site, load_site
from medmeta.outputs import write_text_atomic

if TYPE_CHECKING:
    from flwr.app import Context, Message
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp

FEATURE = "federated learning (Flower)"
#: how long the server waits for every site to connect, in seconds
CONNECT_TIMEOUT = 300.0


def _flwr_app() -> Any:
    return optional_import("flwr.app", FEATURE)


def _content(arrays: Arrays | None, payload: dict[str, Any]) -> Any:
    app = _flwr_app()
    records: dict[str, Any] = {"payload": app.ConfigRecord({"json": json.dumps(payload)})}
    if arrays is not None:
        records["arrays"] = app.ArrayRecord(
            array_dict={k: app.Array(np.ascontiguousarray(v)) for k, v in arrays.items()}
        )
    return app.RecordDict(records)


def _read(message: Message) -> tuple[Arrays | None, dict[str, Any]]:
    content = message.content
    payload = json.loads(str(content.config_records["payload"]["json"]))
    arrays = None
    if "arrays" in content.array_records:
        arrays = {k: a.numpy() for k, a in content.array_records["arrays"].items()}
    return arrays, payload


class FlowerExchange:
    """`medmeta.federated.protocol.Exchange` over a Flower ``Grid``."""

    def __init__(self, grid: Grid, timeout: float = CONNECT_TIMEOUT) -> None:
        self.grid, self.timeout = grid, timeout

    def nodes(self, count: int) -> list[int]:
        deadline = time.monotonic() + self.timeout
        while True:
            ids = sorted(self.grid.get_node_ids())
            if len(ids) >= count:
                return ids[:count]
            if time.monotonic() > deadline:
                raise MedmetaError(
                    f"{len(ids)} of {count} sites connected after {self.timeout:.0f} s: start a SuperNode per site"
                )
            time.sleep(0.5)

    def send(
        self, kind: str, nodes: Sequence[int], arrays: Arrays | None, job: Job, round_index: int
    ) -> list[Reply]:
        app = _flwr_app()
        payload = {"job": job.to_json(), "round": round_index}
        messages = [
            app.Message(
                _content(arrays, payload), dst_node_id=n, message_type=kind, group_id=str(round_index)
            )
            for n in nodes
        ]
        replies = list(self.grid.send_and_receive(messages))
        out = []
        for r in replies:
            node = int(r.metadata.src_node_id)
            if r.has_error():
                raise MedmetaError(f"site on node {node} failed in '{kind}': {r.error.reason}")
            got, metrics = _read(r)
            out.append(Reply(node, got, metrics))
        if len(out) != len(nodes):
            raise MedmetaError(f"'{kind}' got {len(out)} replies from {len(nodes)} sites: a site went away")
        order = {n: i for i, n in enumerate(nodes)}
        return sorted(out, key=lambda x: order[x.node])


def make_server_app(job_of: Callable[[Context], tuple[Job, Path]]) -> ServerApp:
    """A ServerApp that runs `serve` for the job `job_of` returns and writes its result JSON to the path."""
    serverapp = optional_import("flwr.serverapp", FEATURE)
    app = serverapp.ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        job, result = job_of(context)
        write_text_atomic(result, json.dumps(serve(job, FlowerExchange(grid))))

    return app


SiteOf = Callable[["Context", Job], Site]


def make_client_app(site_of: SiteOf, threads: int = 0) -> ClientApp:
    """A ClientApp answering ``query``, ``train`` and ``evaluate`` for the site `site_of` names.

    Args:
        site_of: (context, job) -> the site's images (loaded on the site).
        threads: torch intra-op threads of the site's process (0: leave torch's default).
    """
    clientapp = optional_import("flwr.clientapp", FEATURE)
    app = clientapp.ClientApp()

    def handle(kind: str) -> Callable[[Message, Context], Message]:
        def handler(message: Message, context: Context) -> Message:
            if threads:
                import torch

                torch.set_num_threads(threads)
            arrays, payload = _read(message)
            job = Job.from_json(payload["job"])
            reply = site_reply(kind, job, site_of(context, job), arrays, int(payload["round"]))
            return _flwr_app().Message(_content(reply.arrays, reply.metrics), reply_to=message)

        return handler

    app.query()(handle("query"))
    app.train()(handle("train"))
    app.evaluate()(handle("evaluate"))
    return app


def job_from_run_config(context: Context) -> tuple[Job, Path]:
    """The job of a deployment: run config ``job-file`` names a JSON file ``{"job": ..., "result": path}``."""
    path = Path(str(context.run_config.get("job-file", "")))
    if not path.is_file():
        raise MedmetaError(
            f"run config job-file={str(path)!r} is not a file: pass --run-config \"job-file='...'\""
        )
    spec = json.loads(path.read_text(encoding="utf-8"))
    return Job.from_json(spec["job"]), Path(spec["result"])


def site_from_node_config(context: Context, job: Job) -> Site:
    """The site of a SuperNode: node config ``site`` (an entry of the run's sites), ``data-dir`` optional."""
    name = context.node_config.get("site")
    if not name:
        raise MedmetaError("this SuperNode has no site: start it with --node-config \"site='NAME'\"")
    root = context.node_config.get("data-dir") or None
    return load_site(
        str(name), SitesConfig.model_validate(job.config["data"]), None if root is None else str(root)
    )


def site_from_partition(root: str | None) -> SiteOf:
    """In simulation: virtual node ``partition-id`` i is site i of the run; images under `root`."""

    def site_of(context: Context, job: Job) -> Site:
        data = SitesConfig.model_validate(job.config["data"])
        return load_site(data.sites[int(context.node_config["partition-id"])], data, root)

    return site_of


def _deployment_server_app() -> ServerApp | None:
    try:
        return make_server_app(job_from_run_config)
    except ImportError:  # the module stays importable without flwr (the error fires on use)
        return None


def _deployment_client_app() -> ClientApp | None:
    try:
        return make_client_app(site_from_node_config)
    except ImportError:
        return None


#: the Flower App components of a deployment (``serverapp = "medmeta.federated.flower_apps:server_app"``)
server_app = _deployment_server_app()
client_app = _deployment_client_app()
