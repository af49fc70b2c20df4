"""One line of `aurora-sync doctor`'s report, shared by `doctor` and `doctor_security` (kept apart so neither
imports the other to get it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Check:
    name: str
    status: str  # ok | warn | fail | skip
    detail: str
    fix: str = ""
