"""Fake AWS credentials for tests against the local stand-ins and moto's S3."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import pytest


@contextmanager
def fake_aws_env(creds: Mapping[str, str]) -> Iterator[None]:
    """Only ``creds`` (plus a region) are visible to botocore: no profile, no config or
    credentials file, no instance metadata, no endpoint override from the environment."""
    with pytest.MonkeyPatch.context() as mp:
        for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
            mp.delenv(key, raising=False)
        for key, value in {**creds, "AWS_DEFAULT_REGION": "us-east-1"}.items():
            mp.setenv(key, value)
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        mp.setenv("AWS_CONFIG_FILE", os.devnull)
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        yield
