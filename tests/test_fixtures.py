"""Every fixture case under fixtures/ must pass (DESIGN.md section 5)."""

from __future__ import annotations

from pathlib import Path

import pytest

from destinations.conformance import find_cases, run_case
from destinations.registry import BUILT_IN

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
CASES = find_cases([FIXTURES])


@pytest.mark.parametrize("path", CASES, ids=[str(p.relative_to(FIXTURES)) for p in CASES])
def test_fixture(path: Path) -> None:
    result = run_case(path)
    assert result.ok, result.detail


def test_every_built_in_destination_has_fixtures() -> None:
    folders = {p.parent.name for p in CASES}
    assert set(BUILT_IN) <= folders
