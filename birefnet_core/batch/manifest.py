"""The job's manifest: one JSON line per input and run, beside the outputs.

``{"input": ..., "output": ..., "status": "done" | "skipped" | "failed", "error": null | "...",
"seconds": 0.12, "frames": 1, "engine": "local"}``. ``output`` is relative to the output
folder (``/``-separated), ``input`` is the absolute path or URI. Lines are appended and
flushed one at a time, so an interrupted run keeps the lines of what it finished; a re-run
appends its own lines (an input done earlier shows as ``skipped``).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

MANIFEST_NAME = "birefnet-manifest.jsonl"
STATUSES = ("done", "skipped", "failed")


@dataclass
class Record:
    input: str
    output: str
    status: str
    error: Optional[str] = None
    seconds: float = 0.0
    frames: int = 0
    engine: str = "local"

    def line(self) -> str:
        data = asdict(self)
        data["seconds"] = round(self.seconds, 4)
        return json.dumps(data, ensure_ascii=False)


class Manifest:
    """Appends records to ``OUT/birefnet-manifest.jsonl`` (``path=None``: records nothing)."""

    def __init__(self, path: Optional[str | os.PathLike]):
        self.path = None if path is None else Path(path)
        self._file = None

    def write(self, record: Record) -> None:
        if self.path is None:
            return
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")
        self._file.write(record.line() + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_manifest(path: str | os.PathLike) -> list[dict]:
    """The records of a manifest, oldest first; a last line cut short by a kill is ignored."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def latest(records: list[dict]) -> dict[str, dict]:
    """The last record of each input."""
    return {r["input"]: r for r in records}
