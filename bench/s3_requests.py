"""Measure S3 request cost: obstore vs boto3, small vs large objects, serial vs parallel.

Usage: python bench/s3_requests.py [--clients obstore,boto3] [--sizes 64K,1M,4M,16M]
       [--total 64M] [--parallel 1,16]

Talks to the S3 server named by AWS_ENDPOINT_URL / AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY (``eval "$(scripts/s3-server env)"``), in a bucket it creates
and empties again. For every client, object size and parallelism it PUTs ``--total``
bytes as single-part objects, GETs them back, and prints one row: requests per
second, MiB/s and the median latency of each. The numbers in docs/S3.md come from
this script.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import boto3
import obstore
from botocore.config import Config
from obstore.store import S3Store

_UNITS = {"K": 1024, "M": 1024**2, "G": 1024**3}


def parse_size(text: str) -> int:
    text = text.strip().upper()
    if text[-1] in _UNITS:
        return int(float(text[:-1]) * _UNITS[text[-1]])
    return int(text)


def boto_client(max_pool: int) -> object:
    return boto3.client(
        "s3",
        endpoint_url=os.environ["AWS_ENDPOINT_URL"],
        region_name=os.environ.get("AWS_REGION", "us-east-1"),
        config=Config(
            s3={"addressing_style": "path"},
            max_pool_connections=max_pool,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


Ops = tuple[Callable[[str, bytes], None], Callable[[str], bytes], Callable[[str], object]]


def ops_obstore(bucket: str) -> Ops:
    store = S3Store(
        bucket,
        endpoint=os.environ["AWS_ENDPOINT_URL"],
        region=os.environ.get("AWS_REGION", "us-east-1"),
        virtual_hosted_style_request=False,
        client_options={"allow_http": True},
    )

    def put(key: str, data: bytes) -> None:
        obstore.put(store, key, data, use_multipart=False)

    def get(key: str) -> bytes:
        return obstore.get(store, key).bytes().to_bytes()

    def head(key: str) -> object:
        return obstore.head(store, key)

    return put, get, head


def ops_boto3(bucket: str) -> Ops:
    client = boto_client(64)

    def put(key: str, data: bytes) -> None:
        client.put_object(Bucket=bucket, Key=key, Body=data)  # type: ignore[attr-defined]

    def get(key: str) -> bytes:
        body = client.get_object(Bucket=bucket, Key=key)["Body"]  # type: ignore[attr-defined]
        data: bytes = body.read()
        return data

    def head(key: str) -> object:
        return client.head_object(Bucket=bucket, Key=key)  # type: ignore[attr-defined]

    return put, get, head


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


class Result:
    """One batch of requests: wall time, client CPU time, per-request latencies."""

    def __init__(self, wall: float, cpu: float, latencies: list[float]) -> None:
        self.wall = wall
        self.cpu = cpu
        self.latencies = latencies


def run(pool: ThreadPoolExecutor, jobs: list[Callable[[], object]]) -> Result:
    started, cpu_started = time.perf_counter(), time.process_time()
    latencies = list(pool.map(timed, jobs))
    return Result(time.perf_counter() - started, time.process_time() - cpu_started, latencies)


def row(label: str, size: int, result: Result) -> str:
    count = len(result.latencies)
    rate = count / result.wall
    mib = size * count / result.wall / 1024**2
    p50 = statistics.median(result.latencies) * 1000
    cpu = result.cpu / count * 1000
    return f"{label} {rate:5.0f}/s {mib:6.1f} MiB/s p50 {p50:6.1f} ms cpu {cpu:5.2f} ms"


def measure(client: str, bucket: str, size: int, total: int, parallel: int) -> str:
    put, get, head = (ops_obstore if client == "obstore" else ops_boto3)(bucket)
    count = max(8, total // size)
    data = os.urandom(size)
    run_id = uuid.uuid4().hex[:8]
    keys = [f"{run_id}/{i:06d}" for i in range(count)]
    with ThreadPoolExecutor(parallel) as pool:
        put(f"{run_id}/warm", data)  # open a connection, sign once
        puts = run(pool, [functools.partial(put, k, data) for k in keys])
        gets = run(pool, [functools.partial(get, k) for k in keys])
        heads = run(pool, [functools.partial(head, k) for k in keys])
    label = f"{client:7} {size // 1024:5d} KiB x{count:<4d} par {parallel:2d}"
    return " | ".join(
        [label, row("PUT", size, puts), row("GET", size, gets), row("HEAD", 0, heads)]
    )


def empty_bucket(s3: object, bucket: str) -> None:
    paginator = s3.get_paginator("list_objects_v2")  # type: ignore[attr-defined]
    for page in paginator.paginate(Bucket=bucket):
        objects = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if objects:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": objects})  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="obstore,boto3")
    parser.add_argument("--sizes", default="64K,256K,1M,4M,16M")
    parser.add_argument("--total", default="64M")
    parser.add_argument("--parallel", default="1,16")
    args = parser.parse_args()
    s3 = boto_client(4)
    bucket = f"bench-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
    try:
        for client in args.clients.split(","):
            for parallel in map(int, args.parallel.split(",")):
                for size in map(parse_size, args.sizes.split(",")):
                    print(measure(client, bucket, size, parse_size(args.total), parallel))
                    empty_bucket(s3, bucket)
    finally:
        empty_bucket(s3, bucket)
        s3.delete_bucket(Bucket=bucket)  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
