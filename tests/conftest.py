"""Fixtures shared by integration and e2e tests.

The embedded local environment (real kube-apiserver, etcd, controller-manager, scheduler,
node agent, SeaweedFS, Prometheus) is started once per session if it is not already up, and
left running: `make cluster-down` stops it. Every test gets a fresh namespace / bucket that is
removed afterwards.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.kube import enforce_restricted, exists, kubectl, wait_for

REPO = Path(__file__).resolve().parent.parent


def _load_env_file(path: Path) -> dict[str, str]:
    """Evaluate `.dev/env` in a shell and return the variables it exports."""
    out = subprocess.run(
        ["bash", "-c", f"set -a; source {shlex.quote(str(path))}; env -0"],
        capture_output=True,
        check=True,
    )
    pairs = (item.split(b"=", 1) for item in out.stdout.split(b"\0") if b"=" in item)
    return {k.decode(): v.decode() for k, v in pairs}


@pytest.fixture(scope="session")
def cluster() -> dict[str, str]:
    """Ensure the local environment is up; put its variables into os.environ."""
    subprocess.run([sys.executable, "-m", "localcluster", "up"], cwd=REPO, check=True)
    env = _load_env_file(REPO / ".dev" / "env")
    wanted = (
        "KUBECONFIG",
        "PATH",
        "AWS_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_DEFAULT_REGION",
        "PROMETHEUS_URL",
        "FTO_STATE_DIR",
    )
    for key in wanted:
        os.environ[key] = env[key]
    return {k: env[k] for k in wanted}


@pytest.fixture
def namespace(cluster: dict[str, str], request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace, deleted (and waited for) after the test.

    It enforces Pod Security "restricted", as a platform team's namespaces for this product would: every
    pod the product creates in any test (operator, validation, trainer, stub) is admitted under it, or
    the test fails there. Tests of the node agent itself, whose own pods use host paths or root, opt out
    with the `unrestricted_pods` marker."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    kubectl("create", "namespace", name)
    if request.node.get_closest_marker("unrestricted_pods") is None:
        enforce_restricted(name)
    # Pods need the namespace's default ServiceAccount, which the real controller creates.
    wait_for(
        lambda: exists("serviceaccount", "default", "-n", name),
        30,
        f"default ServiceAccount in {name}",
    )
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)
    wait_for(
        lambda: not exists("namespace", name),
        120,
        f"namespace {name} to be deleted",
    )


@pytest.fixture(scope="session")
def s3_env(cluster: dict[str, str]) -> dict[str, str]:
    """AWS_* variables for the local SeaweedFS S3 (keys enforced)."""
    return {k: v for k, v in cluster.items() if k.startswith("AWS_")}


@pytest.fixture
def s3_bucket(s3_env: dict[str, str]) -> Iterator[str]:
    """A fresh bucket, emptied and removed after the test."""
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=s3_env["AWS_ENDPOINT_URL"],
        aws_access_key_id=s3_env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=s3_env["AWS_SECRET_ACCESS_KEY"],
        region_name=s3_env["AWS_DEFAULT_REGION"],
    )
    name = f"t-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    yield name
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=name):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=name, Delete={"Objects": keys})
    s3.delete_bucket(Bucket=name)
