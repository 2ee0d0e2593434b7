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


EXAMPLES = find_cases([FIXTURES.parent / "examples" / "shaping"])


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_shipped_shaping_example(path: Path) -> None:
    """README's "Shaping the mapping" examples, one per setting, run like fixtures."""
    result = run_case(path)
    assert result.ok, result.detail


def test_an_example_for_every_shaping_setting() -> None:
    assert {p.stem for p in EXAMPLES} == {
        "eventMappings", "customEventNames", "allowedEvents", "blockedEvents", "fieldMappings", "consentCategories"
    }  # fmt: skip
