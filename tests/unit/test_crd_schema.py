"""Structural checks on the CRD: the properties that make `kubectl explain` a manual and keep CEL cheap.

The API server checks that the schema is structural; these tests check the project's own bar on top:
a description everywhere, a bound on every string and list, a message on every rule.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from finetune_operator.api import spec as spec_module

ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / "crds" / "finetune.dev_finetunejobs.yaml"


def load_crd() -> dict[str, Any]:
    crd: dict[str, Any] = yaml.safe_load(CRD_PATH.read_text())
    return crd


def version_schema() -> dict[str, Any]:
    (version,) = load_crd()["spec"]["versions"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def walk(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node with its path (a.b[].c, a.map{} for map values)."""
    yield path, schema
    for name, child in schema.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}" if path else name)
    if isinstance(schema.get("items"), dict):
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}{{}}")


# apiVersion and kind are the standard type fields; the API server fills and checks them itself.
UNBOUNDED_OK = {"apiVersion", "kind"}


def nodes() -> list[tuple[str, dict[str, Any]]]:
    return [(p, s) for p, s in walk(version_schema()) if p]


def test_identity() -> None:
    crd = load_crd()
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == "finetunejobs.finetune.dev"
    spec = crd["spec"]
    assert spec["group"] == "finetune.dev"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "FineTuneJob"
    assert spec["names"]["shortNames"] == ["ftj"]
    assert "finetune" in spec["names"]["categories"]
    assert "all" not in spec["names"]["categories"], "kubectl get all must not list training jobs"
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}


def test_printer_columns() -> None:
    (version,) = load_crd()["spec"]["versions"]
    columns = [c for c in version["additionalPrinterColumns"] if c.get("priority", 0) == 0]
    assert [c["name"].upper() for c in columns] == ["STATUS", "PROGRESS", "LOSS", "ETA", "COST", "AGE"]
    status_fields = {p for p, _ in walk(version_schema())}
    for column in version["additionalPrinterColumns"]:
        path = column["jsonPath"].lstrip(".")
        assert path in status_fields or path == "metadata.creationTimestamp", column


def test_every_property_has_a_description() -> None:
    # The API server forbids anything but a type on metadata.
    missing = [p for p, s in nodes() if not s.get("description", "").strip() and p != "metadata"]
    assert missing == []


def test_every_string_is_bounded() -> None:
    unbounded = [
        p
        for p, s in nodes()
        if (s.get("type") == "string" or s.get("x-kubernetes-int-or-string"))
        and p not in UNBOUNDED_OK
        # A date-time is bounded by its format.
        and s.get("format") != "date-time"
        and not ({"maxLength", "enum"} & s.keys())
    ]
    assert unbounded == []


def test_every_list_and_map_is_bounded() -> None:
    assert [p for p, s in nodes() if s.get("type") == "array" and "maxItems" not in s] == []
    maps = [p for p, s in nodes() if s.get("type") == "object" and "additionalProperties" in s]
    assert maps
    assert [p for p in maps if "maxProperties" not in dict(nodes())[p]] == []


def test_every_list_declares_its_list_type() -> None:
    # Server-side apply merges lists by their list type; "atomic", "set" or "map" must be a decision.
    assert [p for p, s in nodes() if s.get("type") == "array" and "x-kubernetes-list-type" not in s] == []


def test_every_object_is_structural() -> None:
    loose = [
        p
        for p, s in nodes()
        if s.get("type") == "object"
        and p != "metadata"
        and "properties" not in s
        and "additionalProperties" not in s
    ]
    assert loose == []
    assert [p for p, s in nodes() if s.get("x-kubernetes-preserve-unknown-fields")] == []


def test_every_spec_integer_has_bounds() -> None:
    unbounded = [
        p
        for p, s in nodes()
        if p.startswith("spec.") and s.get("type") == "integer" and not {"minimum", "maximum"} <= s.keys()
    ]
    assert unbounded == []


def rules() -> list[tuple[str, dict[str, Any]]]:
    return [
        (p or "<root>", r) for p, s in walk(version_schema()) for r in s.get("x-kubernetes-validations", [])
    ]


def test_every_rule_has_a_message_that_names_a_field() -> None:
    assert len(rules()) >= 25
    for path, rule in rules():
        message = rule.get("message", "")
        assert message, (path, rule)
        last = path.split(".")[-1].rstrip("[]")
        named = {last, *(rule.get("fieldPath", "").lstrip(".").split("."))} - {""}
        assert any(name in message for name in named) or (path == "<root>" and "metadata.name" in message), (
            path,
            message,
        )


def test_every_spec_field_but_suspend_is_immutable() -> None:
    """Each spec field has a `self == oldSelf` rule, or (when optional) a has()-guarded rule on spec,
    because a rule on an absent field never runs. A new spec field without a guard fails here."""
    spec = version_schema()["properties"]["spec"]
    spec_rules = [r["rule"] for r in spec["x-kubernetes-validations"]]
    for name, child in spec["properties"].items():
        own = [r["rule"] for r in child.get("x-kubernetes-validations", [])]
        guarded = "self == oldSelf" in own or any(
            f"has(self.{name}) == has(oldSelf.{name})" in r and f"self.{name} == oldSelf.{name}" in r
            for r in spec_rules
        )
        assert guarded is (name != "suspend"), name
        if "self == oldSelf" in own:
            assert name in spec["required"] or child.get("default") == {}, f"{name} may be absent"


def test_optional_objects_with_defaults_are_always_present() -> None:
    """A rule on a sub-object runs only when it exists, so immutable optional objects default to {}."""
    spec = version_schema()["properties"]["spec"]
    for name in ("method", "hyperparameters", "resources", "checkpointing", "retries"):
        assert spec["properties"][name]["default"] == {}


def test_float_string_patterns_match_the_models() -> None:
    paths = [p for p, s in nodes() if s.get("pattern", "").startswith("^[0-9]{1,10}")]
    # six in the spec (dropout, learningRate, warmupRatio, weightDecay, maxGradNorm, validationSplit)
    # and the resolved learning rate in the status
    assert len(paths) == 7
    assert "status.resolved.hyperparameters.learningRate" in paths
    floats = [s for p, s in nodes() if s.get("pattern", "").startswith("^[0-9]{1,10}")]
    assert {s["pattern"] for s in floats} == {spec_module.FLOAT_STRING_PATTERN}
    decimals = {s["pattern"] for p, s in nodes() if p.startswith("spec.budget.")}
    assert decimals == {spec_module.DECIMAL_STRING_PATTERN}


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("2e-4", True),
        ("0.0002", True),
        ("1E+2", True),
        ("0.05", True),
        ("3", True),
        (".5", False),
        ("-0.1", False),
        ("1e400", False),
        ("2e-4x", False),
        ("0x10", False),
        ("nan", False),
        ("", False),
    ],
)
def test_float_string_pattern(value: str, ok: bool) -> None:
    assert bool(re.fullmatch(spec_module.FLOAT_STRING_PATTERN, value)) is ok


def test_patterns_compile() -> None:
    for _, s in nodes():
        if "pattern" in s:
            re.compile(s["pattern"])


def test_defaults_are_valid_against_their_own_schema() -> None:
    for path, s in nodes():
        if "default" not in s or s["default"] == {}:
            continue
        value = s["default"]
        if "enum" in s:
            assert value in s["enum"], path
        if "pattern" in s:
            assert re.fullmatch(s["pattern"], value), path
        if "minimum" in s:
            assert s["minimum"] <= value <= s["maximum"], path


def test_api_doc_names_every_field() -> None:
    """docs/api.md is the prose manual: every field of the CRD appears in it (as `name` or `.name`)."""
    doc = (ROOT / "docs" / "api.md").read_text()
    missing = [
        p
        for p, _ in nodes()
        if p.startswith(("spec.", "status."))
        and not any(f"{mark}{p.split('.')[-1].rstrip('[]{}')}" in doc for mark in ("`", "."))
    ]
    assert missing == []
