"""The README's Reliability table names only tests that exist, so each promise stays backed by one."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def reliability_references() -> list[str]:
    """``tests/x.py::test_name`` (or a whole file) for every test the Reliability table names."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Reliability", 1)[1].split("\n## ", 1)[0]
    refs: list[str] = []
    for row in section.splitlines():
        if not row.startswith("| ") or row.startswith("| promise"):
            continue
        last = ""
        for ref in re.findall(r"`([^`]+)`", row.rsplit("|", 2)[-2]):
            if ref.startswith("tests/"):
                last = ref.split("::")[0]
                refs.append(ref)
            elif ref.startswith("::") and last:
                refs.append(last + ref)
    return refs


def test_every_test_the_reliability_section_names_exists() -> None:
    refs = reliability_references()
    assert len(refs) >= 30
    missing = []
    for ref in refs:
        path, _, name = ref.partition("::")
        file = REPO / path
        if not file.is_file() or (
            name and not re.search(rf"^def {re.escape(name)}\(", file.read_text(), re.M)
        ):
            missing.append(ref)
    assert not missing, f"README names tests that do not exist: {missing}"
