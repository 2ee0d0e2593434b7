"""The fixture conformance suite (DESIGN.md section 5), shared by `destinations check` and the tests.

Besides DESIGN.md's `requests`, `error` or `filtered`, a case's `expect` may hold `warnings`: texts
that must each occur in one of the message's warnings (`[]`: the message must give none).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigurationError, Filtered, InvalidMessage, MappingWarning
from .registry import get_destination


@dataclass(frozen=True)
class CaseResult:
    path: Path
    ok: bool
    detail: str = ""


def find_cases(dirs: Iterable[str | Path]) -> list[Path]:
    """Every `*.json` case under the given folders (or the files themselves), sorted."""
    found: list[Path] = []
    for entry in map(Path, dirs):
        found.extend(sorted(entry.rglob("*.json")) if entry.is_dir() else [entry])
    return found


def _pretty(value: Any) -> list[str]:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False).splitlines()


def run_case(path: Path) -> CaseResult:
    """Run one case file; the destination is the case's `destination` key or its folder's name."""
    try:
        case = json.loads(path.read_text(encoding="utf-8"))
        expect = dict(case["expect"])
        wanted_warnings = expect.pop("warnings", None)
        (kind, wanted), *more = expect.items()
        if more or kind not in ("requests", "error", "filtered"):
            return CaseResult(path, False, "expect must be exactly one of requests, error, filtered")
        if wanted_warnings is not None and not isinstance(wanted_warnings, list):
            return CaseResult(path, False, "expect.warnings must be a list of texts")
        destination = get_destination(case.get("destination") or path.parent.name, case.get("settings"))
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as exc:
        return CaseResult(path, False, f"not a valid case file: {type(exc).__name__}: {exc}")
    except ConfigurationError as exc:
        return CaseResult(path, False, f"settings: {exc}")

    warnings: list[MappingWarning] = []
    try:
        requests_, warnings = destination.handle_with_warnings(case["message"])
        got: Any = [r.to_dict() for r in requests_]
        outcome = "requests"
    except InvalidMessage as exc:
        got, outcome = str(exc), "error"
        if exc.internal:
            return CaseResult(path, False, f"mapping bug: {exc}")
    except Filtered as exc:
        got, outcome = exc.reason, "filtered"

    if outcome != kind:
        return CaseResult(path, False, f"expected {kind}, got {outcome}: {_short(got)}")
    if kind == "requests":
        if got == wanted:
            return _check_warnings(path, wanted_warnings, [str(w) for w in warnings])
        diff = difflib.unified_diff(_pretty(wanted), _pretty(got), "expected", "got", lineterm="")
        return CaseResult(path, False, "\n".join(diff))
    if str(wanted) in got:
        return CaseResult(path, True)
    return CaseResult(path, False, f"expected {kind} containing {wanted!r}, got {got!r}")


def _check_warnings(path: Path, wanted: list[str] | None, got: list[str]) -> CaseResult:
    """Each wanted text occurs in some warning; an empty list wants none at all."""
    if wanted is None:
        return CaseResult(path, True)
    if not wanted and got:
        return CaseResult(path, False, f"expected no warnings, got {got!r}")
    missing = [w for w in wanted if not any(w in g for g in got)]
    if missing:
        return CaseResult(path, False, f"expected warnings containing {missing!r}, got {got!r}")
    return CaseResult(path, True)


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) < 300 else text[:297] + "..."


def run_cases(dirs: Iterable[str | Path]) -> list[CaseResult]:
    return [run_case(p) for p in find_cases(dirs)]
