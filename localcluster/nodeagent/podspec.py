"""Pod spec -> process launch plan (argv, env, working dir, mounts). Pure: no I/O, no API calls.

The agent fetches the Secrets, ConfigMaps and PersistentVolumeClaims (with their bound
PersistentVolumes) a pod refers to (see `referenced_objects`), then hands them here as `Objects`;
everything else follows from the pod object (a dict in the API's JSON shape) and the node's facts in
`PodContext`.
"""

from __future__ import annotations

import math
import posixpath
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from localcluster.nodeagent.images import ImageConfig

JSON = dict[str, Any]

DEFAULT_TERMINATION_MESSAGE_PATH = "/dev/termination-log"
# Volume types whose content the node writes; a kubelet always mounts these read-only.
READ_ONLY_VOLUME_TYPES = ("secret", "configMap", "projected", "downwardAPI")
MATERIALISED_VOLUME_TYPES = ("emptyDir", *READ_ONLY_VOLUME_TYPES)


class ConfigError(ValueError):
    """The container cannot be configured yet (kubelet: CreateContainerConfigError)."""


@dataclass(frozen=True)
class Objects:
    """Secrets and ConfigMaps fetched for a pod: name -> key -> bytes, or None when not found;
    PersistentVolumeClaims (the pod's namespace) and the PersistentVolumes they are bound to:
    name -> object, or None when not found."""

    secrets: Mapping[str, Mapping[str, bytes] | None] = field(default_factory=dict)
    config_maps: Mapping[str, Mapping[str, bytes] | None] = field(default_factory=dict)
    claims: Mapping[str, JSON | None] = field(default_factory=dict)
    persistent_volumes: Mapping[str, JSON | None] = field(default_factory=dict)


@dataclass(frozen=True)
class PodContext:
    pod: JSON
    pod_ip: str
    host_ip: str
    api_host: str
    api_port: int
    node_allocatable: Mapping[str, str] = field(default_factory=dict)
    # The node agent's cluster hosts file (dns.py), the /etc/hosts of image-based containers.
    hosts_file: str | None = None


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool = False
    # The source is a file rather than a directory (a subPath onto a file, the termination log).
    is_file: bool = False
    # Create the source directory if missing (subPath semantics).
    create_source: bool = False


@dataclass(frozen=True)
class Identity:
    """Who the container's process runs as."""

    uid: int
    gid: int
    groups: tuple[int, ...] = ()


@dataclass(frozen=True)
class LaunchPlan:
    argv: list[str]
    env: dict[str, str]
    working_dir: str
    mounts: list[Mount]
    termination_message_path: str
    read_only_root: bool
    # The image's unpacked root filesystem (None: the host's tree, for the shell images).
    rootfs: str | None = None
    # None: as the agent (root), for shell images without runAsUser.
    identity: Identity | None = None
    # The container's /etc/hosts (None: the node's).
    hosts_file: str | None = None


# ---------------------------------------------------------------------------------------------
# $(VAR) expansion, as k8s.io/kubernetes third_party/forked/golang/expansion does it.


def expand(text: str, mapping: Callable[[str], str | None]) -> str:
    """Expand `$(VAR)`; `$$` escapes; unknown or malformed references stay as written."""
    out: list[str] = []
    checkpoint = 0
    cursor = 0
    n = len(text)
    while cursor < n:
        if text[cursor] == "$" and cursor + 1 < n:
            out.append(text[checkpoint:cursor])
            nxt = text[cursor + 1]
            advance = 1
            if nxt == "$":
                out.append("$")
            elif nxt == "(":
                close = text.find(")", cursor + 2)
                if close == -1:
                    out.append("$(")
                else:
                    name = text[cursor + 2 : close]
                    value = mapping(name)
                    out.append(value if value is not None else f"$({name})")
                    advance = close - cursor
            else:
                out.append("$" + nxt)
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    out.append(text[checkpoint:])
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# Quantities (only what resourceFieldRef needs).

_SUFFIXES = {
    "Ki": Decimal(1024),
    "Mi": Decimal(1024**2),
    "Gi": Decimal(1024**3),
    "Ti": Decimal(1024**4),
    "Pi": Decimal(1024**5),
    "Ei": Decimal(1024**6),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal(1000),
    "M": Decimal(1000**2),
    "G": Decimal(1000**3),
    "T": Decimal(1000**4),
    "P": Decimal(1000**5),
    "E": Decimal(1000**6),
}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|)$")


def parse_quantity(value: str | int | float) -> Decimal:
    m = _QUANTITY.match(str(value).strip())
    if not m:
        raise ValueError(f"invalid quantity {value!r}")
    return Decimal(m.group(1)) * _SUFFIXES[m.group(2)]


# ---------------------------------------------------------------------------------------------
# Field references (env valueFrom.fieldRef and downwardAPI volume items).

_SUBSCRIPT = re.compile(r"""^metadata\.(labels|annotations)\[(['"])(.*)\2\]$""")


def _format_map(values: Mapping[str, str]) -> str:
    # Same shape as the kubelet's FormatMap: one key="value" per line, sorted by key.
    return "\n".join(f"{k}={_quote(v)}" for k, v in sorted(values.items()))


def _quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'


def field_ref_value(ctx: PodContext, path: str) -> str:
    meta = ctx.pod.get("metadata", {})
    spec = ctx.pod.get("spec", {})
    simple: dict[str, str] = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.podIP": ctx.pod_ip,
        "status.podIPs": ctx.pod_ip,
        "status.hostIP": ctx.host_ip,
        "status.hostIPs": ctx.host_ip,
    }
    if path in simple:
        return simple[path]
    if path in ("metadata.labels", "metadata.annotations"):
        return _format_map(meta.get(path.split(".", 1)[1]) or {})
    m = _SUBSCRIPT.match(path)
    if m:
        values: Mapping[str, str] = meta.get(m.group(1)) or {}
        return values.get(m.group(3), "")
    raise ConfigError(f"unsupported fieldRef fieldPath {path!r}")


def resource_field_value(ctx: PodContext, container: JSON, ref: JSON) -> str:
    resource = ref.get("resource", "")
    kind, _, name = resource.partition(".")
    if kind not in ("limits", "requests") or not name:
        raise ConfigError(f"unsupported resourceFieldRef resource {resource!r}")
    resources = container.get("resources") or {}
    raw = (resources.get(kind) or {}).get(name)
    if raw is None:
        # An unset limit reads as the node's allocatable, as the kubelet does.
        raw = ctx.node_allocatable.get(name, "0") if kind == "limits" else "0"
    divisor = parse_quantity(ref.get("divisor") or "1")
    if divisor == 0:
        divisor = Decimal(1)
    return str(math.ceil(parse_quantity(raw) / divisor))


# ---------------------------------------------------------------------------------------------
# Which objects a pod needs from the API.


@dataclass(frozen=True)
class References:
    secrets: frozenset[str]
    config_maps: frozenset[str]
    claims: frozenset[str] = frozenset()


def referenced_objects(pod: JSON) -> References:
    spec = pod.get("spec", {})
    secrets: set[str] = set()
    cms: set[str] = set()
    claims: set[str] = set()
    for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        for src in c.get("envFrom") or []:
            if "secretRef" in src:
                secrets.add(src["secretRef"].get("name", ""))
            if "configMapRef" in src:
                cms.add(src["configMapRef"].get("name", ""))
        for e in c.get("env") or []:
            vf = e.get("valueFrom") or {}
            if "secretKeyRef" in vf:
                secrets.add(vf["secretKeyRef"].get("name", ""))
            if "configMapKeyRef" in vf:
                cms.add(vf["configMapKeyRef"].get("name", ""))
    for v in spec.get("volumes") or []:
        if "secret" in v:
            secrets.add(v["secret"].get("secretName", ""))
        if "configMap" in v:
            cms.add(v["configMap"].get("name", ""))
        if "persistentVolumeClaim" in v:
            claims.add(v["persistentVolumeClaim"].get("claimName", ""))
        for src in (v.get("projected") or {}).get("sources") or []:
            if "secret" in src:
                secrets.add(src["secret"].get("name", ""))
            if "configMap" in src:
                cms.add(src["configMap"].get("name", ""))
    secrets.discard("")
    cms.discard("")
    claims.discard("")
    return References(frozenset(secrets), frozenset(cms), frozenset(claims))


# ---------------------------------------------------------------------------------------------
# PersistentVolumeClaims.


# PersistentVolumeSpec fields that are not the volume's source.
_PV_SPEC_FIELDS = frozenset(
    {
        "accessModes",
        "capacity",
        "claimRef",
        "mountOptions",
        "nodeAffinity",
        "persistentVolumeReclaimPolicy",
        "storageClassName",
        "volumeAttributesClassName",
        "volumeMode",
    }
)


@dataclass(frozen=True)
class ClaimSource:
    """Where a persistentVolumeClaim volume's data is on this node: the bound PV's host directory."""

    path: str
    # The PV's hostPath.type ("" when unset or for a `local` PV, whose path must exist).
    host_path_type: str = ""
    local: bool = False


def claim_source(namespace: str, name: str, objects: Objects) -> ClaimSource:
    """The host path behind a claim, as the kubelet resolves it: the claim must exist, not be
    terminating and be Bound; its PV must be bound back to it (claimRef UID), a Filesystem volume, and
    of a kind this node can mount (hostPath or local). Otherwise ConfigError, and the pod waits."""
    what = f"error processing PVC {namespace}/{name}"
    pvc = objects.claims.get(name)
    if pvc is None:
        raise ConfigError(f'{what}: persistentvolumeclaim "{name}" not found')
    if (pvc.get("metadata") or {}).get("deletionTimestamp"):
        raise ConfigError(f"{what}: PVC is being deleted")
    pv_name = (pvc.get("spec") or {}).get("volumeName") or ""
    if (pvc.get("status") or {}).get("phase") != "Bound" or not pv_name:
        phase = (pvc.get("status") or {}).get("phase") or "Pending"
        raise ConfigError(f"{what}: PVC is not bound (phase {phase})")
    pv = objects.persistent_volumes.get(pv_name)
    if pv is None:
        raise ConfigError(f'{what}: persistentvolume "{pv_name}" not found')
    spec = pv.get("spec") or {}
    claim_ref = spec.get("claimRef") or {}
    pvc_uid = (pvc.get("metadata") or {}).get("uid")
    if claim_ref.get("uid") and pvc_uid and claim_ref["uid"] != pvc_uid:
        raise ConfigError(f"{what}: PV {pv_name} is bound to another claim (claimRef UID {claim_ref['uid']})")
    if (spec.get("volumeMode") or "Filesystem") != "Filesystem":
        raise ConfigError(
            f"{what}: PV {pv_name} has volumeMode {spec['volumeMode']}; only Filesystem is supported"
        )
    if "hostPath" in spec:
        src = spec["hostPath"]
        return ClaimSource(str(src.get("path") or ""), host_path_type=str(src.get("type") or ""))
    if "local" in spec:
        return ClaimSource(str(spec["local"].get("path") or ""), local=True)
    kinds = sorted(k for k in spec if k not in _PV_SPEC_FIELDS)
    raise ConfigError(
        f"{what}: PV {pv_name} is of a kind this node cannot mount ({', '.join(kinds) or 'unknown'}); "
        "only hostPath and local volumes are supported"
    )


# ---------------------------------------------------------------------------------------------
# Environment.


def _decode(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


def _key_ref(
    kind: str, store: Mapping[str, Mapping[str, bytes] | None], ref: JSON, env_name: str
) -> str | None:
    name = ref.get("name", "")
    key = ref.get("key", "")
    optional = bool(ref.get("optional", False))
    data = store.get(name)
    if data is None:
        if optional:
            return None
        raise ConfigError(f'{kind} "{name}" not found (env {env_name})')
    if key not in data:
        if optional:
            return None
        raise ConfigError(f"couldn't find key {key} in {kind} {name} (env {env_name})")
    return _decode(data[key])


def service_env(api_host: str, api_port: int) -> dict[str, str]:
    """The `kubernetes` Service's variables (docker links style) pointing at the API server."""
    port = str(api_port)
    return {
        "KUBERNETES_SERVICE_HOST": api_host,
        "KUBERNETES_SERVICE_PORT": port,
        "KUBERNETES_SERVICE_PORT_HTTPS": port,
        "KUBERNETES_PORT": f"tcp://{api_host}:{port}",
        f"KUBERNETES_PORT_{port}_TCP": f"tcp://{api_host}:{port}",
        f"KUBERNETES_PORT_{port}_TCP_PROTO": "tcp",
        f"KUBERNETES_PORT_{port}_TCP_PORT": port,
        f"KUBERNETES_PORT_{port}_TCP_ADDR": api_host,
    }


def container_env(ctx: PodContext, container: JSON, objects: Objects) -> dict[str, str]:
    """The container's own variables (envFrom, then env), in the kubelet's precedence and order."""
    env: dict[str, str] = {}
    for src in container.get("envFrom") or []:
        prefix = src.get("prefix", "")
        for kind, ref_key, store in (
            ("secret", "secretRef", objects.secrets),
            ("configmap", "configMapRef", objects.config_maps),
        ):
            if ref_key not in src:
                continue
            ref = src[ref_key] or {}
            data = store.get(ref.get("name", ""))
            if data is None:
                if ref.get("optional", False):
                    continue
                raise ConfigError(f'{kind} "{ref.get("name", "")}" not found (envFrom)')
            for key, raw in data.items():
                if "=" in key or not key:
                    continue
                env[prefix + key] = _decode(raw)

    svc = service_env(ctx.api_host, ctx.api_port)

    def lookup(name: str) -> str | None:
        if name in env:
            return env[name]
        return svc.get(name)

    for e in container.get("env") or []:
        name = e["name"]
        vf = e.get("valueFrom")
        if vf is None:
            env[name] = expand(e.get("value", "") or "", lookup)
            continue
        value: str | None
        if "fieldRef" in vf:
            value = field_ref_value(ctx, vf["fieldRef"].get("fieldPath", ""))
        elif "resourceFieldRef" in vf:
            value = resource_field_value(ctx, container, vf["resourceFieldRef"])
        elif "secretKeyRef" in vf:
            value = _key_ref("secret", objects.secrets, vf["secretKeyRef"], name)
        elif "configMapKeyRef" in vf:
            value = _key_ref("configmap", objects.config_maps, vf["configMapKeyRef"], name)
        else:
            raise ConfigError(f"unsupported valueFrom for env {name}")
        if value is not None:
            env[name] = value
    return env


def process_env(
    ctx: PodContext, container: JSON, image: ImageConfig, own: Mapping[str, str]
) -> dict[str, str]:
    """The full environment of the process: image ENV < service links < HOSTNAME < container env."""
    spec = ctx.pod.get("spec", {})
    env = dict(image.env)
    # The `kubernetes` service's variables are set whatever enableServiceLinks says (kubelet too).
    env.update(service_env(ctx.api_host, ctx.api_port))
    env["HOSTNAME"] = spec.get("hostname") or ctx.pod.get("metadata", {}).get("name", "")
    env.update(own)
    return env


def container_argv(image: ImageConfig, container: JSON, env: Mapping[str, str]) -> list[str]:
    """`command` replaces the ENTRYPOINT, `args` the CMD; both get $(VAR) expansion."""
    command = container.get("command")
    args = container.get("args")

    def lookup(name: str) -> str | None:
        return env.get(name)

    if command:
        argv = [expand(a, lookup) for a in command] + [expand(a, lookup) for a in args or []]
    elif args is not None and len(args) > 0:
        argv = [*image.entrypoint, *(expand(a, lookup) for a in args)]
    else:
        argv = [*image.entrypoint, *image.cmd]
    if not argv:
        raise ConfigError("no command specified")
    return argv


# ---------------------------------------------------------------------------------------------
# Mounts.


def volume_dir(sandbox: str, name: str) -> str:
    return posixpath.join(sandbox, "volumes", name)


def _safe_sub_path(sub: str) -> str:
    norm = posixpath.normpath(sub)
    if posixpath.isabs(sub) or norm == ".." or norm.startswith("../"):
        raise ConfigError(f"subPath {sub!r} must be a relative path without '..'")
    return norm


def volume_source(
    sandbox: str, volume: JSON, objects: Objects | None = None, namespace: str = ""
) -> tuple[str, bool]:
    """Host directory backing a volume, and whether the kubelet would mount it read-only."""
    name = volume["name"]
    for kind in MATERIALISED_VOLUME_TYPES:
        if kind in volume:
            return volume_dir(sandbox, name), kind in READ_ONLY_VOLUME_TYPES
    if "hostPath" in volume:
        return str(volume["hostPath"]["path"]), False
    if "persistentVolumeClaim" in volume:
        src = volume["persistentVolumeClaim"]
        claim = claim_source(namespace, src.get("claimName", ""), objects or Objects())
        return claim.path, bool(src.get("readOnly", False))
    kinds = sorted(k for k in volume if k != "name")
    raise ConfigError(f"volume {name!r}: unsupported volume type {', '.join(kinds) or '(none)'}")


def mount_plan(  # noqa: PLR0917 - each argument is a distinct input of the plan
    ctx: PodContext,
    sandbox: str,
    container: JSON,
    env: Mapping[str, str],
    termination_log: str,
    objects: Objects | None = None,
) -> list[Mount]:
    volumes = {v["name"]: v for v in ctx.pod.get("spec", {}).get("volumes") or []}
    namespace = ctx.pod.get("metadata", {}).get("namespace", "")
    mounts: list[Mount] = []
    for vm in container.get("volumeMounts") or []:
        vol = volumes.get(vm["name"])
        if vol is None:
            raise ConfigError(f"volumeMount {vm['name']!r}: no volume of that name in the pod")
        source, forced_ro = volume_source(sandbox, vol, objects, namespace)
        sub = vm.get("subPath") or ""
        if vm.get("subPathExpr"):
            sub = expand(vm["subPathExpr"], env.get)
        create = False
        if sub:
            source = posixpath.join(source, _safe_sub_path(sub))
            create = True
        target = vm["mountPath"]
        if not posixpath.isabs(target):
            target = "/" + target
        mounts.append(
            Mount(
                source=source,
                target=posixpath.normpath(target),
                read_only=bool(vm.get("readOnly", False)) or forced_ro,
                create_source=create,
            )
        )
    path = container.get("terminationMessagePath") or DEFAULT_TERMINATION_MESSAGE_PATH
    mounts.append(Mount(source=termination_log, target=posixpath.normpath(path), is_file=True))
    return mounts


# ---------------------------------------------------------------------------------------------
# Identity: runAsUser/runAsGroup (container over pod) over the image's USER; fsGroup and
# supplementalGroups as extra groups; runAsNonRoot checked as a kubelet does.


def _passwd_entry(rootfs: str | None, user: str) -> tuple[int, int] | None:
    """(uid, gid) of a user name (or uid) in the image's /etc/passwd."""
    if rootfs is None:
        return None
    try:
        with open(posixpath.join(rootfs, "etc/passwd"), encoding="utf-8") as f:
            for line in f:
                fields = line.rstrip("\n").split(":")
                if (
                    len(fields) >= 4
                    and user in (fields[0], fields[2])
                    and fields[2].isdigit()
                    and fields[3].isdigit()
                ):
                    return int(fields[2]), int(fields[3])
    except OSError:
        return None
    return None


def _group_id(rootfs: str | None, group: str) -> int:
    if group.isdigit():
        return int(group)
    if rootfs is not None:
        try:
            with open(posixpath.join(rootfs, "etc/group"), encoding="utf-8") as f:
                for line in f:
                    fields = line.split(":")
                    if len(fields) >= 3 and fields[0] == group and fields[2].isdigit():
                        return int(fields[2])
        except OSError:
            pass
    raise ConfigError(f"image group {group!r} not found in the image's /etc/group")


def process_identity(pod: JSON, container: JSON, image: ImageConfig) -> Identity | None:
    psc = pod.get("spec", {}).get("securityContext") or {}
    sc = container.get("securityContext") or {}
    run_as_user = sc.get("runAsUser", psc.get("runAsUser"))
    run_as_group = sc.get("runAsGroup", psc.get("runAsGroup"))
    non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
    if image.rootfs is None and run_as_user is None and run_as_group is None:
        if non_root:
            raise ConfigError("container has runAsNonRoot and image will run as root")
        return None
    image_user, _, image_group = image.user.partition(":")
    if run_as_user is not None:
        uid = int(run_as_user)
        gid = 0 if run_as_group is None else int(run_as_group)
        entry = _passwd_entry(image.rootfs, str(uid))
        if run_as_group is None and entry is not None:
            gid = entry[1]
    elif image_user in ("", "0", "root"):
        uid, gid = 0, 0
    elif image_user.isdigit():
        uid, gid = int(image_user), int(image_user) if not image_group else 0
        entry = _passwd_entry(image.rootfs, image_user)
        if entry is not None and not image_group:
            gid = entry[1]
    else:
        if non_root:
            # A kubelet cannot tell whether a named user is root either.
            raise ConfigError(
                f"container has runAsNonRoot and image has non-numeric user ({image_user}), cannot verify user is non-root"
            )
        entry = _passwd_entry(image.rootfs, image_user)
        if entry is None:
            raise ConfigError(f"unable to find user {image_user}: no matching entries in passwd file")
        uid, gid = entry
    if run_as_group is None and image_group and run_as_user is None:
        gid = _group_id(image.rootfs, image_group)
    if non_root and uid == 0:
        raise ConfigError("container has runAsNonRoot and image will run as root")
    groups = [int(g) for g in psc.get("supplementalGroups") or []]
    if psc.get("fsGroup") is not None:
        groups.append(int(psc["fsGroup"]))
    return Identity(uid=uid, gid=gid, groups=tuple(dict.fromkeys(groups)))


def build_launch_plan(  # noqa: PLR0917 - each argument is a distinct input of the plan
    ctx: PodContext,
    container: JSON,
    image: ImageConfig,
    objects: Objects,
    sandbox: str,
    termination_log: str,
) -> LaunchPlan:
    own = container_env(ctx, container, objects)
    env = process_env(ctx, container, image, own)
    argv = container_argv(image, container, {**service_env(ctx.api_host, ctx.api_port), **own})
    mounts = mount_plan(ctx, sandbox, container, env, termination_log, objects)
    sc = container.get("securityContext") or {}
    return LaunchPlan(
        argv=argv,
        env=env,
        working_dir=container.get("workingDir") or image.working_dir or "/",
        mounts=mounts,
        termination_message_path=mounts[-1].target,
        read_only_root=bool(sc.get("readOnlyRootFilesystem", False)),
        rootfs=image.rootfs,
        identity=process_identity(ctx.pod, container, image),
        hosts_file=ctx.hosts_file,
    )
