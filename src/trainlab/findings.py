"""A finding: one thing the doctor (or the data check) found, with its evidence and what to change.

Shared by `data` (the data check's findings) and `doctor`; the JSON shape is DESIGN.md's contract.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SEVERITY_RANK = {"high": 0, "medium": 1, "low": 2}


@dataclass
class Finding:
    id: str
    severity: str  # high | medium | low
    evidence: str
    recommendation: str
    suggested_overrides: dict[str, Any] = field(default_factory=dict)  # trainlab `--set` keys (trainlab runs)
    data: dict[str, Any] = field(default_factory=dict)  # numbers the report may plot
    explains: list[str] = field(default_factory=list)  # ids of findings this one accounts for (left out)
    suggested_changes: dict[str, Any] = field(default_factory=dict)  # the change in the run's own tool's names

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("data")
        for optional in ("explains", "suggested_changes"):  # keys beyond DESIGN.md's contract appear when used
            if not out[optional]:
                out.pop(optional)
        return out
