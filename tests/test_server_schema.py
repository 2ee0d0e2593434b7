"""A bounded schemathesis run against the server's own OpenAPI schema, over a live socket: whatever
the body, headers or path parameters (valid for the schema or deliberately not), no answer is a 5xx."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from test_server import live, make_config

from destinations.server import create_app

EXAMPLES = 25  # per operation and mode; the whole module stays within a few seconds a core


def _schema() -> schemathesis.BaseSchema:
    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(make_config(Path(tmp), "http://127.0.0.1:9", write_keys=[], secret=None), deliver=False)
        return schemathesis.openapi.from_dict(app.openapi())


SCHEMA = _schema()
OPERATIONS = sorted((op.ok().method.upper(), op.ok().path) for op in SCHEMA.get_all_operations())


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # No write key and no webhook secret: generated bodies get past authentication into the parsing.
    config = make_config(tmp_path_factory.mktemp("schema"), "http://127.0.0.1:9", write_keys=[], secret=None)
    with live(config, deliver=False) as url:
        yield url


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_no_server_errors(base_url: str, method: str, path: str) -> None:
    operation = SCHEMA[path][method]
    cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))

    @given(case=cases)
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case: schemathesis.Case) -> None:
        response = case.call(base_url=base_url, timeout=10)
        assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:300])

    check()
