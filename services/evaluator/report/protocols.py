"""Protocol records of the runs, de-duplicated into ids (P1, P2, ...) for the protocol page."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Sequence

from services.evaluator.results import RunResult


@dataclass
class ProtocolEntry:
    pid: str
    record: dict[str, Any]
    runs: list[RunResult] = field(default_factory=list)

    @property
    def anchor(self) -> str:
        return self.pid.lower()


class ProtocolRegistry:
    """Identical protocol records share one id (P1, P2, ...) so a reader sees at once which runs
    were computed the same way."""

    def __init__(self, runs: Sequence[RunResult]):
        self.entries: list[ProtocolEntry] = []
        self._by_key: dict[str, ProtocolEntry] = {}
        self._by_run: dict[tuple[str, str], ProtocolEntry] = {}
        for run in runs:
            record = run.data.get("protocol") or {}
            key = json.dumps(record, sort_keys=True, default=str)
            if key not in self._by_key:
                self._by_key[key] = ProtocolEntry(f"P{len(self.entries) + 1}", dict(record))
                self.entries.append(self._by_key[key])
            self._by_key[key].runs.append(run)
            self._by_run[(run.dataset, run.model)] = self._by_key[key]

    def of(self, run: RunResult) -> ProtocolEntry:
        return self._by_run[(run.dataset, run.model)]
