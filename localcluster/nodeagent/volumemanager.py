"""The pod's volumes, as a kubelet's volume manager sets them up: the Secrets, ConfigMaps and claims
the pod references (read with the node's credentials), its service account tokens (TokenRequest,
renewed at 80% of their lifetime) and the files written into `<sandbox>/volumes/`."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from localcluster.nodeagent import kube, volumes
from localcluster.nodeagent.events import EventRecorder
from localcluster.nodeagent.podspec import ConfigError, Objects, PodContext, referenced_objects
from localcluster.nodeagent.runtime import decode_config_map, decode_secret

log = logging.getLogger("nodeagent.volumes")
JSON = dict[str, Any]
TOKEN_REFRESH_MAX = 24 * 3600.0
MAX_BACKOFF = 16.0


def mono_after(seconds: float) -> float:
    return time.monotonic() + seconds


def parse_time(value: str | None) -> float | None:
    if not value:
        return None
    return datetime.strptime(value[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()


class VolumeManager:
    def __init__(self, core: Any, events: EventRecorder, pod: JSON, sandbox: Path) -> None:
        self.core = core
        self.events = events
        meta = pod["metadata"]
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.uid: str = meta["uid"]
        self.sandbox = sandbox
        self.ready = False
        self.retry_at = 0.0
        self.backoff = 1.0
        self.token_refresh_at = 0.0

    def _ctx(self, **extra: Any) -> dict[str, Any]:
        return {"pod": f"{self.namespace}/{self.name}", "uid": self.uid, **extra}

    def objects(self, pod: JSON) -> Objects:
        """The API objects the pod's volumes and environment reference, as they are now."""
        refs = referenced_objects(pod)
        core = self.core
        secrets = {
            n: decode_secret(kube.get_or_none(core.read_namespaced_secret, n, self.namespace))
            for n in sorted(refs.secrets)
        }
        cms = {
            n: decode_config_map(kube.get_or_none(core.read_namespaced_config_map, n, self.namespace))
            for n in sorted(refs.config_maps)
        }
        # The Node authorizer lets a node read the claims of its pods and the volumes bound to them.
        claims = {
            n: kube.get_or_none(core.read_namespaced_persistent_volume_claim, n, self.namespace)
            for n in sorted(refs.claims)
        }
        bound = (str((c.get("spec") or {}).get("volumeName") or "") for c in claims.values() if c)
        pv_names = sorted({name for name in bound if name})
        pvs = {n: kube.get_or_none(core.read_persistent_volume, n) for n in pv_names}
        return Objects(secrets=secrets, config_maps=cms, claims=claims, persistent_volumes=pvs)

    def tokens(self, pod: JSON) -> dict[volumes.TokenSource, str]:
        """Tokens for the pod's projected serviceAccountToken sources; also schedules their
        refresh at 80% of the shortest lifetime (24h at most), as the kubelet does."""
        out: dict[volumes.TokenSource, str] = {}
        ttl = TOKEN_REFRESH_MAX
        sa = pod["spec"].get("serviceAccountName") or "default"
        for ts in volumes.token_sources(pod):
            spec: JSON = {
                "expirationSeconds": ts.expiration_seconds,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": self.name, "uid": self.uid},
            }
            if ts.audience:
                spec["audiences"] = [ts.audience]
            body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
            resp = kube.raw(self.core.create_namespaced_service_account_token, sa, self.namespace, body)
            out[ts] = resp["status"]["token"]
            expires = parse_time(resp["status"].get("expirationTimestamp"))
            if expires is not None:
                ttl = min(ttl, 0.8 * (expires - time.time()))
        if out:
            self.token_refresh_at = mono_after(max(ttl, 60.0))
        return out

    def set_up(self, pod: JSON, ctx: PodContext) -> bool:
        """Write every volume; on failure a FailedMount event and a retry with back-off."""
        try:
            volumes.materialise(ctx, str(self.sandbox), self.objects(pod), self.tokens(pod))
        except (ConfigError, OSError) as exc:
            self.failed(pod, str(exc))
            return False
        except Exception as exc:
            if not kube.is_status(exc, 403, 404, 409, 422, 429, 500, 503):
                raise
            self.failed(pod, f"API error: {kube.describe(exc)}")
            return False
        self.ready = True
        return True

    def failed(self, pod: JSON, message: str) -> None:
        log.warning("volume setup failed", extra=self._ctx(error=message))
        self.events.pod_event(pod, "Warning", "FailedMount", f"MountVolume.SetUp failed: {message}")
        self.retry_at = mono_after(self.backoff)
        self.backoff = min(self.backoff * 2, MAX_BACKOFF)

    def refresh_tokens(self, pod: JSON, ctx: PodContext) -> None:
        """Rewrite the projected volumes that hold service account tokens with fresh tokens."""
        try:
            tokens = self.tokens(pod)
            objects = self.objects(pod)
            for vol in pod["spec"].get("volumes") or []:
                sources = (vol.get("projected") or {}).get("sources") or []
                if any("serviceAccountToken" in s for s in sources):
                    files = volumes.volume_files(ctx, vol, objects, tokens) or {}
                    volumes.write_files(self.sandbox / "volumes" / vol["name"], files)
            log.info("service account tokens refreshed", extra=self._ctx())
        except Exception as exc:
            log.warning("token refresh failed", extra=self._ctx(error=kube.describe(exc)))
            self.token_refresh_at = mono_after(60.0)

    def adopt(self, pod: JSON) -> None:
        """After an agent restart: the volumes on disk are there; tokens of unknown age are renewed soon."""
        self.ready = True
        if volumes.token_sources(pod):
            self.token_refresh_at = mono_after(5.0)
