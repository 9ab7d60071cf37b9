"""The S3 server the tests use, and scratch space in it.

`scripts/test` starts a real S3 server (Ceph RGW) and passes it as
DOCKSNAP_TEST_S3_ENDPOINT / _ACCESS_KEY / _SECRET_KEY / _REGION. Without it, S3
tests fail rather than skip, so that CI can never pass without testing S3
(DOCKSNAP_ALLOW_SKIP=1 skips them on a laptop without the server).

Each session gets one bucket; each test a fresh prefix in it, emptied afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from docksnap.store.base import SnapshotStore
from docksnap.store.chunked import ChunkedStore
from docksnap.store.objects import ObjectStore
from docksnap.store.objects.s3 import RetryPolicy, S3Config, S3ObjectStore

ENDPOINT_VAR = "DOCKSNAP_TEST_S3_ENDPOINT"

# Tests fail within seconds, not after the production backoff of ~10 s.
FAST_RETRY = RetryPolicy(attempts=4, base_delay=0.02, max_delay=0.2)


@dataclass(frozen=True)
class S3Server:
    """The test S3 server's address and credentials, and one bucket for this session."""

    endpoint: str
    access_key: str
    secret_key: str
    region: str
    bucket: str

    def config(self, prefix: str, **overrides: Any) -> S3Config:
        """An S3Config for ``prefix`` in the session bucket (overrides: any field)."""
        base = S3Config(
            bucket=self.bucket,
            prefix=prefix,
            endpoint=self.endpoint,
            region=self.region,
            access_key_id=self.access_key,
            secret_access_key=self.secret_key,
            retry=FAST_RETRY,
        )
        return replace(base, **overrides)

    def url(self, prefix: str) -> str:
        """The store URL of ``prefix`` (credentials come from the environment)."""
        return f"s3://{self.bucket}/{prefix}?endpoint={self.endpoint}&region={self.region}"

    def env(self) -> dict[str, str]:
        """The standard AWS variables for this server (for code that reads them)."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
        }

    def admin(self) -> Any:
        """A boto3 client for setting up and cleaning (never the code under test)."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def keys(self, prefix: str) -> list[str]:
        """Every key under ``prefix/`` in the bucket, relative to it."""
        paginator = self.admin().get_paginator("list_objects_v2")
        found: list[str] = []
        for page in paginator.paginate(Bucket=self.bucket, Prefix=f"{prefix}/"):
            found += [item["Key"][len(prefix) + 1 :] for item in page.get("Contents", [])]
        return found

    def empty(self, prefix: str | None = None) -> None:
        """Delete every object under ``prefix/`` (the whole bucket when None)."""
        admin = self.admin()
        paginator = admin.get_paginator("list_objects_v2")
        scope = {"Prefix": f"{prefix}/"} if prefix else {}
        for page in paginator.paginate(Bucket=self.bucket, **scope):
            objects = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if objects:
                admin.delete_objects(Bucket=self.bucket, Delete={"Objects": objects})

    @contextmanager
    def scratch(self) -> Iterator[str]:
        """A fresh prefix, emptied when the block ends."""
        prefix = f"t-{uuid.uuid4().hex[:12]}"
        try:
            yield prefix
        finally:
            self.empty(prefix)


def server_from_env() -> S3Server:
    """The server named by the environment; fails (or skips, if allowed) without one."""
    endpoint = os.environ.get(ENDPOINT_VAR)
    if not endpoint:
        message = f"{ENDPOINT_VAR} is not set: run the tests with scripts/test, which starts S3"
        if os.environ.get("DOCKSNAP_ALLOW_SKIP"):
            pytest.skip(message)
        pytest.fail(message)
    return S3Server(
        endpoint=endpoint,
        access_key=os.environ["DOCKSNAP_TEST_S3_ACCESS_KEY"],
        secret_key=os.environ["DOCKSNAP_TEST_S3_SECRET_KEY"],
        region=os.environ.get("DOCKSNAP_TEST_S3_REGION", "us-east-1"),
        bucket=f"docksnap-test-{uuid.uuid4().hex[:12]}",
    )


@contextmanager
def session_bucket() -> Iterator[S3Server]:
    """Create this session's bucket; empty and remove it at the end."""
    server = server_from_env()
    admin = server.admin()
    admin.create_bucket(Bucket=server.bucket)
    try:
        yield server
    finally:
        server.empty()
        admin.delete_bucket(Bucket=server.bucket)


# --- factories for tests/conformance/conftest.py ------------------------------------------


@contextmanager
def s3_objects(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    """An S3ObjectStore on a fresh prefix of the session bucket, emptied afterwards."""
    server: S3Server = request.getfixturevalue("s3_server")
    with server.scratch() as prefix:
        store = S3ObjectStore(server.config(prefix))
        try:
            yield store
        finally:
            store.close()


@asynccontextmanager
async def chunked_s3(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[SnapshotStore]:
    """The chunked store over a fresh prefix of the session bucket, emptied afterwards."""
    server: S3Server = request.getfixturevalue("s3_server")
    with server.scratch() as prefix:
        store = ChunkedStore(S3ObjectStore(server.config(prefix)))
        try:
            yield store
        finally:
            await store.close()
