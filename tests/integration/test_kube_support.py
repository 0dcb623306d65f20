"""The tests' `kubectl_json` answers a plain `get` from the API server itself; here it must give what
kubectl gives, against the real server, or every test that polls through it would check something else."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support import kube
from tests.support.kube import kubectl, kubectl_json
from tests.support.operator import apply_crd


def by_kubectl(*args: str) -> Any:
    return json.loads(kubectl(*args, "-o", "json").stdout)


def identity(obj: dict[str, Any]) -> Any:
    if obj["kind"] == "List":
        return sorted(
            (
                i["apiVersion"],
                i["kind"],
                i["metadata"]["namespace" if "namespace" in i["metadata"] else "name"],
                i["metadata"]["name"],
            )
            for i in obj["items"]
        )
    return (obj["apiVersion"], obj["kind"], obj["metadata"]["name"], obj["metadata"]["resourceVersion"])


def test_a_plain_get_answers_like_kubectl(namespace: str) -> None:
    apply_crd()
    for name in ("a", "b"):
        kubectl("create", "configmap", name, "-n", namespace, "--from-literal=k=v")
    kubectl("label", "configmap", "a", "-n", namespace, "pick=yes")
    forms = [
        ("get", "configmap", "a", "-n", namespace),
        ("get", "cm", "-n", namespace),  # a short name
        ("get", "configmaps", "-n", namespace, "-l", "pick=yes"),
        ("get", "configmaps", "-n", namespace, "--field-selector", "metadata.name=b"),
        ("get", "events", "-n", namespace),  # core v1, not events.k8s.io, as kubectl picks
        ("get", "nodes"),
        ("get", "namespace", namespace),
        ("get", "crd"),  # a group resource, cluster-scoped
        ("get", "workloads.kueue.x-k8s.io", "-A"),  # plural.group, every namespace
        ("get", "finetunejob", "-n", namespace),
    ]
    for form in forms:
        assert kube._get_request(form) is not None, form
        assert identity(kubectl_json(*form)) == identity(by_kubectl(*form)), form
    picked = kubectl_json("get", "configmaps", "-n", namespace, "-l", "pick=yes")["items"]
    assert [c["metadata"]["name"] for c in picked] == ["a"]
    assert picked[0]["data"] == {"k": "v"}


def test_exists_tells_a_missing_object_from_a_present_one(namespace: str) -> None:
    kubectl("create", "configmap", "here", "-n", namespace)
    assert kube.exists("configmap", "here", "-n", namespace)
    assert not kube.exists("configmap", "elsewhere", "-n", namespace)
    assert kube.exists("namespace", namespace)
    with pytest.raises(ValueError, match="a type, a name"):
        kube.exists("configmaps", "-n", namespace)


def test_what_kubectl_refuses_fails_and_other_forms_still_run_kubectl(namespace: str) -> None:
    for name in ("a", "b"):
        kubectl("create", "configmap", name, "-n", namespace)
    with pytest.raises(AssertionError, match="404"):
        kubectl_json("get", "configmap", "missing", "-n", namespace)
    with pytest.raises(AssertionError, match="doesn't have a resource type"):
        kubectl_json("get", "nosuchkinds")
    # Several types, type/name and several names go to kubectl, with its answer.
    for form in (
        ("get", "configmaps,secrets", "-n", namespace),
        ("get", "namespace/" + namespace),
        ("get", "configmaps", "a", "b", "-n", namespace),
    ):
        assert kube._get_request(form) is None, form
        assert kubectl_json(*form)["kind"] in {"List", "Namespace"}
