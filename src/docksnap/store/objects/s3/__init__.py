"""The S3-compatible object store: AWS S3, Ceph RGW, MinIO, Cloudflare R2 …

``S3ObjectStore.from_url("s3://bucket/prefix?endpoint=http://127.0.0.1:7480")``
gives an :class:`~docksnap.store.objects.ObjectStore` for the chunked store.
docs/S3.md says what each provider needs and why the pieces are as they are.
"""

from __future__ import annotations

from docksnap.store.objects.s3.config import RetryPolicy, S3Config
from docksnap.store.objects.s3.store import S3ObjectStore

__all__ = ["RetryPolicy", "S3Config", "S3ObjectStore"]
