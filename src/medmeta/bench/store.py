"""The results of a benchmark run: one JSON record per line in ``results.jsonl``, appended as jobs finish.

A record is written in one ``write`` and flushed to disk before the next job starts, so a killed run
loses at most the job in progress. A line cut short by a kill is dropped on the next open.
Record kinds: ``cell`` (one method x domain x shots x seed result), ``train`` (a finished training,
with its history and checkpoint) and ``reference`` (the fully-supervised reference of a domain). Each
carries ``code``, the medmeta version and git commit that produced it (`medmeta.provenance`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from medmeta.errors import ConfigError
from medmeta.outputs import claim_resumable_folder
from medmeta.provenance import code_version

logger = logging.getLogger(__name__)

RESULTS = "results.jsonl"
PROTOCOL = "protocol.json"


class ResultsStore:
    """Append-only records of one run folder.

    Example:
        >>> store = ResultsStore(tmp_path)  # doctest: +SKIP
        >>> store.append({"kind": "cell", "key": "cell|protonet|a|1|0", ...})  # doctest: +SKIP
        >>> "cell|protonet|a|1|0" in store.keys()  # doctest: +SKIP
        True
    """

    def __init__(self, out: str | Path, *, repair: bool = True) -> None:
        """`repair`: rewrite the file without a last line cut short by a kill (False: only skip it, for
        reading a folder that a running benchmark may be appending to)."""
        self.out = Path(out)
        self.path = self.out / RESULTS
        self._repair = repair
        self._records = self._read()

    def _read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        text = self.path.read_text()
        lines = text.split("\n")
        records: list[dict[str, Any]] = []
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if i < len(lines) - 1 and any(rest.strip() for rest in lines[i + 1 :]):
                    raise ConfigError(
                        f"{self.path} line {i + 1} is not JSON: the results file was edited or corrupted; "
                        "restore it or start again with another --out"
                    ) from None
                if not self._repair:
                    break
                logger.warning("%s: dropping a record cut short by an interrupted run", self.path)
                kept = "".join(json.dumps(r, allow_nan=True) + "\n" for r in records)
                tmp = self.path.with_name(self.path.name + ".tmp")
                tmp.write_text(kept)
                tmp.replace(self.path)
        return records

    @property
    def records(self) -> list[dict[str, Any]]:
        return list(self._records)

    def keys(self) -> set[str]:
        return {r["key"] for r in self._records if "key" in r}

    def get(self, key: str) -> dict[str, Any] | None:
        """The last record with `key` (None when there is none)."""
        for r in reversed(self._records):
            if r.get("key") == key:
                return r
        return None

    def append(self, record: dict[str, Any]) -> None:
        """Write `record` as one line, stamped with the code that produced it (``code``), and flush it."""
        self.out.mkdir(parents=True, exist_ok=True)
        record = {**record, "code": record.get("code", code_version())}
        line = json.dumps(record, allow_nan=True) + "\n"
        with self.path.open("a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self._records.append(record)


def stored_fingerprint(out: str | Path) -> str | None:
    """The protocol fingerprint recorded in run folder `out` (None: no folder, or an unreadable file)."""
    try:
        return json.loads((Path(out) / PROTOCOL).read_text()).get("fingerprint")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def check_fingerprint(out: str | Path, fingerprint: str, protocol_dump: dict[str, Any]) -> bool:
    """Record the protocol of a new run folder, or check that a resumed one used the same protocol.

    The folder is claimed first (`medmeta.outputs.claim_resumable_folder`): a benchmark writes only into
    a new or empty folder, or one holding its own ``protocol.json``; never beside someone else's files.

    Returns:
        True when the folder already held this protocol (a resumed run).

    Raises:
        ConfigError: the folder holds results of a different protocol.
        OutputError: the folder holds other files and no benchmark run, or cannot be written.
    """
    path = Path(out) / PROTOCOL
    if claim_resumable_folder(Path(out), marker=PROTOCOL):
        stored = stored_fingerprint(out)
        if stored != fingerprint:
            raise ConfigError(
                f"{out} holds results of a different benchmark config (fingerprint {stored}, this config "
                f"{fingerprint}): pass another --out, or delete {out} to start again"
            )
        return True
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"fingerprint": fingerprint, "protocol": protocol_dump}, indent=2))
    tmp.replace(path)
    return False
