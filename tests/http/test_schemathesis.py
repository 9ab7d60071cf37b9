"""Property-based tests of the running API from its own OpenAPI document (schemathesis).

Every operation is called with generated requests, valid and invalid; no
answer may be a 5xx, and every answer must match the document (status,
content type, schema). Operations that change containers are left out: their
names are free-form, and a fuzzer on a shared engine must not pause, signal or
remove a container it did not make. Read-only container inspection stays in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi import checks as openapi_checks

from tests.http.conftest import TOKEN, Server

pytestmark = [pytest.mark.docker, pytest.mark.slow]

DOCUMENT = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
schema = (
    schemathesis.openapi.from_path(DOCUMENT)
    .exclude(method="POST", path="/v1/containers/{name}")
    .exclude(method="DELETE", path="/v1/containers/{name}")
    .exclude(path_regex=r"^/v1/containers/\{name\}/(snapshots|signal)$")
)
CHECKS = [
    schemathesis.checks.not_a_server_error,
    openapi_checks.status_code_conformance,
    openapi_checks.content_type_conformance,
    openapi_checks.response_schema_conformance,
]


@schemathesis.serializer("application/x-tar")
def _tar_body(ctx: schemathesis.SerializationContext, value: object) -> bytes:
    # Generated "binary" bodies: random bytes, which the import must refuse cleanly.
    return value if isinstance(value, bytes) else str(value).encode()


@schema.parametrize()
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_the_api_conforms_to_its_document(case: schemathesis.Case[Any], server: Server) -> None:
    case.call_and_validate(
        base_url=server.base_url,
        headers={"Authorization": f"Bearer {TOKEN}"},
        checks=CHECKS,
        timeout=120,
    )
