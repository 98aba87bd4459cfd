"""An S3-compatible endpoint for tests: moto's server mode on a free loopback port, in memory.

Real S3 protocol over HTTP (what DVC's s3fs and MLflow's boto3 speak), nothing kept after it stops.
The credentials are made up: moto accepts any; ``env`` is what a process that may hold them gets.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import boto3
from moto.server import ThreadedMotoServer

REGION = "us-east-1"
ACCESS_KEY, SECRET_KEY = "visionloop-test-key", "visionloop-test-secret"


@dataclass(frozen=True)
class S3Endpoint:
    url: str

    @property
    def env(self) -> dict[str, str]:
        """Credentials and region as the AWS SDKs read them from the environment."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": REGION}

    def client(self) -> Any:
        """A boto3 S3 client of this endpoint, its keys given here (the test process's environment holds none)."""
        return boto3.client("s3", endpoint_url=self.url, region_name=REGION, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key under ``prefix`` in ``bucket``."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]


@contextmanager
def s3_endpoint(*buckets: str) -> Iterator[S3Endpoint]:
    """moto's S3 server on 127.0.0.1 (a free port) with ``buckets`` created, until the block ends."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = S3Endpoint(f"http://{host}:{port}")
        for bucket in buckets:
            endpoint.client().create_bucket(Bucket=bucket)
        yield endpoint
    finally:
        server.stop()
