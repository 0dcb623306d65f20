"""Volume contents: which files a secret/configMap/projected/downwardAPI volume holds, and writing them.

`volume_files` is pure (the agent passes the fetched objects and tokens); `materialise` writes a
pod's volume directories under its sandbox, and checks the host directories of hostPath volumes and
of the PersistentVolumes behind persistentVolumeClaim volumes (those are bound in place, never copied).
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localcluster.nodeagent.podspec import (
    JSON,
    ConfigError,
    Objects,
    PodContext,
    claim_source,
    field_ref_value,
    resource_field_value,
    volume_dir,
)

DEFAULT_MODE = 0o644


@dataclass(frozen=True)
class TokenSource:
    """A projected serviceAccountToken the agent must obtain through the TokenRequest API."""

    audience: str
    expiration_seconds: int


def token_sources(pod: JSON) -> list[TokenSource]:
    out: list[TokenSource] = []
    for v in pod.get("spec", {}).get("volumes") or []:
        for src in (v.get("projected") or {}).get("sources") or []:
            sat = src.get("serviceAccountToken")
            if sat is not None:
                ts = TokenSource(sat.get("audience", "") or "", int(sat.get("expirationSeconds") or 3600))
                if ts not in out:
                    out.append(ts)
    return out


Files = dict[str, tuple[bytes, int]]


def _safe_rel(path: str) -> str:
    norm = posixpath.normpath(path)
    if posixpath.isabs(path) or norm == ".." or norm.startswith("../") or norm == ".":
        raise ConfigError(f"invalid volume item path {path!r}")
    return norm


def _key_files(  # noqa: PLR0917
    kind: str, name: str, data: Mapping[str, bytes] | None, src: JSON, default_mode: int, optional: bool
) -> Files:
    if data is None:
        if optional:
            return {}
        raise ConfigError(f'{kind} "{name}" not found')
    items = src.get("items")
    files: Files = {}
    if not items:
        for key, value in data.items():
            files[_safe_rel(key)] = (value, default_mode)
        return files
    for item in items:
        key = item["key"]
        if key not in data:
            if optional:
                continue
            raise ConfigError(f'{kind} "{name}": configured to use key "{key}", which does not exist')
        files[_safe_rel(item["path"])] = (data[key], int(item.get("mode") or default_mode))
    return files


def _downward_files(ctx: PodContext, items: list[JSON], default_mode: int) -> Files:
    files: Files = {}
    containers = {c["name"]: c for c in ctx.pod.get("spec", {}).get("containers") or []}
    for item in items:
        mode = int(item.get("mode") or default_mode)
        if "fieldRef" in item:
            value = field_ref_value(ctx, item["fieldRef"].get("fieldPath", ""))
        elif "resourceFieldRef" in item:
            ref = item["resourceFieldRef"]
            container = containers.get(ref.get("containerName", ""), {})
            value = resource_field_value(ctx, container, ref)
        else:
            raise ConfigError(f"downwardAPI item {item.get('path')!r}: no fieldRef or resourceFieldRef")
        files[_safe_rel(item["path"])] = (value.encode(), mode)
    return files


def volume_files(
    ctx: PodContext, volume: JSON, objects: Objects, tokens: Mapping[TokenSource, str]
) -> Files | None:
    """The files of a content volume, or None for volumes whose content the node does not write."""
    if "secret" in volume:
        src = volume["secret"]
        name = src.get("secretName", "")
        mode = int(src.get("defaultMode") or DEFAULT_MODE)
        return _key_files("secret", name, objects.secrets.get(name), src, mode, bool(src.get("optional")))
    if "configMap" in volume:
        src = volume["configMap"]
        name = src.get("name", "")
        mode = int(src.get("defaultMode") or DEFAULT_MODE)
        return _key_files(
            "configmap", name, objects.config_maps.get(name), src, mode, bool(src.get("optional"))
        )
    if "downwardAPI" in volume:
        src = volume["downwardAPI"]
        return _downward_files(ctx, src.get("items") or [], int(src.get("defaultMode") or DEFAULT_MODE))
    if "projected" in volume:
        proj = volume["projected"]
        default_mode = int(proj.get("defaultMode") or DEFAULT_MODE)
        files: Files = {}
        for src in proj.get("sources") or []:
            if "secret" in src:
                s = src["secret"]
                name = s.get("name", "")
                files.update(
                    _key_files(
                        "secret", name, objects.secrets.get(name), s, default_mode, bool(s.get("optional"))
                    )
                )
            elif "configMap" in src:
                s = src["configMap"]
                name = s.get("name", "")
                files.update(
                    _key_files(
                        "configmap",
                        name,
                        objects.config_maps.get(name),
                        s,
                        default_mode,
                        bool(s.get("optional")),
                    )
                )
            elif "downwardAPI" in src:
                files.update(_downward_files(ctx, src["downwardAPI"].get("items") or [], default_mode))
            elif "serviceAccountToken" in src:
                sat = src["serviceAccountToken"]
                ts = TokenSource(sat.get("audience", "") or "", int(sat.get("expirationSeconds") or 3600))
                token = tokens.get(ts)
                if token is None:
                    raise ConfigError("service account token not available yet")
                # Tokens are private to the pod whatever defaultMode says (kubelet uses 0600 when
                # it can; the default mode is what the admission plugin writes, keep it).
                files[_safe_rel(sat.get("path", "token"))] = (token.encode(), default_mode)
            else:
                kinds = ", ".join(sorted(src))
                raise ConfigError(f"projected volume {volume['name']!r}: unsupported source {kinds}")
        return files
    return None


def write_files(root: Path, files: Files) -> None:
    """Write a volume's files into an empty directory (group/world bits as the mode says)."""
    root.mkdir(parents=True, exist_ok=True)
    for rel, (data, mode) in sorted(files.items()):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.chmod(tmp, mode & 0o7777)
        os.replace(tmp, path)


def materialise(ctx: PodContext, sandbox: str, objects: Objects, tokens: Mapping[TokenSource, str]) -> None:
    """Create every volume directory of the pod and write the content volumes."""
    for volume in ctx.pod.get("spec", {}).get("volumes") or []:
        files = volume_files(ctx, volume, objects, tokens)
        if "hostPath" in volume:
            _prepare_host_path(volume["hostPath"])
            continue
        if "persistentVolumeClaim" in volume:
            namespace = ctx.pod.get("metadata", {}).get("namespace", "")
            claim = claim_source(namespace, volume["persistentVolumeClaim"].get("claimName", ""), objects)
            if claim.local:
                if not Path(claim.path).is_dir():
                    raise ConfigError(f"local PersistentVolume path {claim.path} does not exist on this node")
            else:
                _prepare_host_path({"path": claim.path, "type": claim.host_path_type})
            continue
        target = Path(volume_dir(sandbox, volume["name"]))
        if files is None:
            target.mkdir(parents=True, exist_ok=True)
            # An emptyDir is writable by whoever the containers run as, as a kubelet makes it.
            target.chmod(0o777)
            continue
        write_files(target, files)


def _prepare_host_path(src: Any) -> None:
    path = Path(src["path"])
    kind = src.get("type", "") or ""
    if kind == "DirectoryOrCreate":
        path.mkdir(parents=True, exist_ok=True)
    elif kind == "FileOrCreate":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(exist_ok=True)
    elif kind == "Directory" and not path.is_dir():
        raise ConfigError(f"hostPath type check failed: {path} is not a directory")
    elif kind == "File" and not path.is_file():
        raise ConfigError(f"hostPath type check failed: {path} is not a file")
    elif kind == "" and not path.exists():
        # An unset type means no check, but a bind mount needs something to bind.
        path.mkdir(parents=True, exist_ok=True)
