"""Small helpers for tests that talk to the real API server through kubectl, as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


def kubectl(
    *args: str, input: str | None = None, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run kubectl from the local environment's PATH with its KUBECONFIG."""
    proc = subprocess.run(
        ["kubectl", *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ.copy(),
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def kubectl_json(*args: str) -> Any:
    """`kubectl ... -o json`. A plain `get` (one resource type, optionally a name, namespace, label and
    field selectors) is answered by the API server directly, with kubectl's output shape: tests poll
    this every half second, and each kubectl process costs about 0.1 CPU-seconds of start-up, a tenth
    of the whole suite's CPU on two cores. Anything else runs kubectl."""
    request = _get_request(args)
    if request is None:
        return json.loads(kubectl(*args, "-o", "json").stdout)
    return _api().get(request)


class NotFound(AssertionError):
    """The API server answered 404 to a plain get."""


def exists(*args: str) -> bool:
    """Whether `kubectl get <type> <name> [-n <namespace>]` finds the object (the API server answers)."""
    request = _get_request(("get", *args))
    if request is None or request.name is None:
        raise ValueError(f"exists() takes a type, a name and optionally -n <namespace>, not {args}")
    try:
        _api().get(request)
    except NotFound:
        return False
    return True


@dataclass(frozen=True)
class _GetRequest:
    resource: str
    name: str | None
    namespace: str | None
    all_namespaces: bool
    params: tuple[tuple[str, str], ...]


_FLAGS = {
    "-n": "namespace",
    "--namespace": "namespace",
    "-l": "labelSelector",
    "--selector": "labelSelector",
    "--field-selector": "fieldSelector",
}


def _get_request(args: tuple[str, ...]) -> _GetRequest | None:
    """The `get` this is, or None where kubectl must answer (several types, `type/name`, other flags)."""
    if len(args) < 2 or args[0] != "get":
        return None
    positional: list[str] = []
    values: dict[str, str] = {}
    all_namespaces = False
    rest = list(args[1:])
    while rest:
        arg = rest.pop(0)
        if arg in ("-A", "--all-namespaces"):
            all_namespaces = True
        elif arg in _FLAGS and rest:
            values[_FLAGS[arg]] = rest.pop(0)
        elif "=" in arg and arg.split("=", 1)[0] in _FLAGS:
            flag, value = arg.split("=", 1)
            values[_FLAGS[flag]] = value
        elif arg.startswith("-"):
            return None
        else:
            positional.append(arg)
    if not 1 <= len(positional) <= 2 or any(c in positional[0] for c in ",/"):
        return None
    name = positional[1] if len(positional) == 2 else None
    if name is not None and ("labelSelector" in values or "fieldSelector" in values or all_namespaces):
        return None
    params = tuple((k, values[k]) for k in ("labelSelector", "fieldSelector") if k in values)
    return _GetRequest(positional[0], name, values.get("namespace"), all_namespaces, params)


@dataclass(frozen=True)
class _Resource:
    path: str  # /api/v1 or /apis/<group>/<version>
    plural: str
    namespaced: bool
    kind: str
    names: frozenset[str]  # plural, singular, short names, kind (lower case)
    group: str


class _Api:
    """The API server through the kubernetes client with the environment's kubeconfig: discovery once
    per process (again when a name is not found: CRDs are installed by tests), then plain GETs."""

    def __init__(self, kubeconfig: str) -> None:
        from localcluster.nodeagent.kube import load_client

        self.client = load_client(kubeconfig)
        self.resources: list[_Resource] = []
        self.lock = threading.Lock()

    def _json(self, path: str, params: tuple[tuple[str, str], ...] = ()) -> Any:
        from kubernetes.client.exceptions import ApiException

        try:
            response = self.client.call_api(
                path, "GET", query_params=list(params), auth_settings=["BearerToken"],
                _preload_content=False, _request_timeout=30,
            )  # fmt: skip
        except ApiException as err:
            failure = NotFound if err.status == 404 else AssertionError
            raise failure(f"GET {path} failed ({err.status}):\n{err.body}") from None
        return json.loads(response.data)  # unparsed: _preload_content=False returns the raw response

    def _discover(self) -> list[_Resource]:
        # kubectl's order: the core group first, then the groups as the server lists them (its priority).
        paths = ["/api/v1"] + [
            f"/apis/{g['preferredVersion']['groupVersion']}" for g in self._json("/apis")["groups"]
        ]
        found = []
        for path in paths:
            for r in self._json(path)["resources"]:
                if "/" in r["name"]:
                    continue  # a subresource (pods/log)
                names = {r["name"], r.get("singularName") or "", r["kind"].lower(), *r.get("shortNames", [])}
                group = path.split("/")[2] if path.startswith("/apis/") else ""
                found.append(
                    _Resource(path, r["name"], r["namespaced"], r["kind"], frozenset(names - {""}), group)
                )
        return found

    def resource(self, name: str) -> _Resource:
        wanted, _, group = name.lower().partition(".")

        def find() -> _Resource | None:
            return next((r for r in self.resources if wanted in r.names and group in ("", r.group)), None)

        with self.lock:
            found = find()
            if found is None:  # nothing discovered yet, or a CRD installed since
                self.resources = self._discover()
                found = find()
        if found is None:
            raise AssertionError(f'the server doesn\'t have a resource type "{name}"')
        return found

    def get(self, request: _GetRequest) -> Any:
        r = self.resource(request.resource)
        path = r.path
        if r.namespaced and not request.all_namespaces:
            path += f"/namespaces/{request.namespace or 'default'}"
        path += f"/{r.plural}"
        if request.name is not None:
            return self._json(f"{path}/{request.name}")
        listed = self._json(path, request.params)
        # kubectl's shape: a v1 List whose items carry their apiVersion and kind.
        for item in listed.get("items", []):
            item.setdefault("apiVersion", listed.get("apiVersion"))
            item.setdefault("kind", r.kind)
        return {
            "apiVersion": "v1",
            "kind": "List",
            "items": listed.get("items", []),
            "metadata": {"resourceVersion": ""},
        }


_APIS: dict[tuple[str, float], _Api] = {}
_APIS_LOCK = threading.Lock()


def _api() -> _Api:
    # Keyed by the kubeconfig's path and age: a new local environment writes new credentials.
    path = os.environ["KUBECONFIG"]
    key = (path, os.stat(path).st_mtime)
    with _APIS_LOCK:
        if key not in _APIS:
            _APIS.clear()
            _APIS[key] = _Api(path)
        return _APIS[key]


def wait_for(predicate: Callable[[], T | None], timeout: float, what: str, interval: float = 0.5) -> T:
    """Poll until `predicate` returns something truthy; fail with `what` on timeout.

    Exceptions inside the predicate count as "not yet" (objects may not exist yet), and the
    last one is shown if time runs out.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:
            last_error = exc
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


def enforce_restricted(namespace: str) -> None:
    """Pod Security "restricted", enforced by the real API server: every pod the product creates in this
    namespace (operator, validation, trainer) must be admitted under it, or the test fails there."""
    kubectl(
        "label",
        "--overwrite",
        "namespace",
        namespace,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/enforce-version=latest",
    )
