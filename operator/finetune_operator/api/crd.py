"""The FineTuneJob CRD, generated from the pydantic models (pure: models in, a dict out).

Each field's OpenAPI schema comes from its declaration: the Python type gives `type` (and `enum`,
`items`, `properties`), pydantic's constraints give the bounds, the attribute docstring (or the
model's) the description, the default the `default`; `Cel` and `Crd` markers in the field's
`Annotated` metadata add the CEL rules and what only OpenAPI says (`format`, list types). A model's
own rules are its `crd_rules`, its schema extras its `crd_schema`. `make generate` writes the result
to crds/ and the chart; tests/unit/test_generated.py fails when a written file is stale.
"""

from __future__ import annotations

import enum
import inspect
import types
import typing
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

import annotated_types
from finetune_contract.wire import Cel, Crd
from pydantic import BaseModel, StringConstraints
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from . import API_VERSION, GROUP, KIND, PLURAL, VERSION
from .spec import FineTuneJobSpec
from .status import FineTuneJobStatus

JSON = dict[str, Any]
# Key order of a schema node in the written YAML: what it is, its bounds, then what is inside.
_ORDER: Final = (
    "type",
    "x-kubernetes-int-or-string",
    "format",
    "default",
    "enum",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "pattern",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "required",
    "description",
    "x-kubernetes-validations",
    "properties",
    "additionalProperties",
    "items",
)
# Child names are <name>-validate-<8 hex> (58 chars at most) and <name>-train-a<attempt>, whose
# indexed pods are <job>-<index>; 40 keeps all of them within the 63 characters of a DNS label with
# room to spare. A Service per attempt needs an RFC 1035 label (leading letter).
MAX_NAME_LENGTH: Final = 40
NAME_PATTERN: Final = "^[a-z]([-a-z0-9]*[a-z0-9])?$"
PRINTER_COLUMNS: Final = [
    {
        "name": "Status",
        "type": "string",
        "jsonPath": ".status.phase",
        "description": "Lifecycle phase, derived from the conditions.",
    },
    {
        "name": "Progress",
        "type": "integer",
        "jsonPath": ".status.progress.percent",
        "description": "Percent of the planned training steps done (0-100).",
    },
    {
        "name": "Loss",
        "type": "string",
        "jsonPath": ".status.metrics.trainLoss",
        "description": "Latest training loss.",
    },
    {
        "name": "ETA",
        "type": "string",
        "jsonPath": ".status.progress.eta",
        "description": "Estimated time left for training, e.g. 1h12m.",
    },
    {
        "name": "Cost",
        "type": "string",
        "jsonPath": ".status.usage.estimatedCost",
        "description": "Estimated cost so far, in the unit of the operator's GPU price table (same unit as "
        "spec.budget.maxCost).",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {
        "name": "Method",
        "type": "string",
        "jsonPath": ".spec.method.type",
        "priority": 1,
        "description": "lora, qlora or full.",
    },
    {
        "name": "Base Model",
        "type": "string",
        "jsonPath": ".spec.baseModel.uri",
        "priority": 1,
        "description": "The model being fine-tuned.",
    },
    {
        "name": "Attempts",
        "type": "integer",
        "jsonPath": ".status.attempts",
        "priority": 1,
        "description": "Trainer attempts started so far.",
    },
]


def _text(doc: str | None) -> str:
    return " ".join(inspect.cleandoc(doc).split()) if doc else ""


def _ordered(schema: JSON) -> JSON:
    known = {k: schema[k] for k in _ORDER if k in schema}
    return known | {k: v for k, v in schema.items() if k not in known}


def _flatten(tp: Any, metadata: list[Any]) -> Any:
    """Strip Annotated and Optional, collecting the metadata on the way; the bare type is returned."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp, *extra = typing.get_args(tp)
            metadata.extend(extra)
        elif origin in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(members) != 1:
                raise TypeError(f"the CRD has no schema for a union of {members}")
            tp = members[0]
        else:
            return tp


def _constraints(metadata: list[Any]) -> list[Any]:
    """Pydantic FieldInfo in metadata carries its own constraints: unfold them."""
    out: list[Any] = []
    for item in metadata:
        if isinstance(item, FieldInfo):
            out.extend(_constraints(list(item.metadata)))
        else:
            out.append(item)
    return out


def _bare_schema(tp: Any, *, with_defaults: bool) -> JSON:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return object_schema(tp, with_defaults=with_defaults)
    origin = typing.get_origin(tp)
    if origin is list:
        (item,) = typing.get_args(tp)
        return {"type": "array", "items": type_schema(item, [], with_defaults=with_defaults)}
    if origin is dict:
        _, value = typing.get_args(tp)
        return {"type": "object", "additionalProperties": type_schema(value, [], with_defaults=with_defaults)}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return {"type": "string", "enum": [m.value for m in tp]}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer"}
    if tp in (float, Decimal):
        return {"type": "number"}
    if tp is str:
        return {"type": "string"}
    if tp is datetime:
        return {"type": "string", "format": "date-time"}
    raise TypeError(f"the CRD has no schema for {tp!r}")


def type_schema(annotation: Any, metadata: list[Any], *, with_defaults: bool) -> JSON:
    """The schema of one type with its constraints and markers."""
    collected = list(metadata)
    tp = _flatten(annotation, collected)
    schema = _bare_schema(tp, with_defaults=with_defaults)
    kind = schema.get("type")
    rules: list[JSON] = []
    for item in _constraints(collected):
        if isinstance(item, Cel):
            rules.append(item.as_schema())
        elif isinstance(item, Crd):
            for key, value in item.schema.items():
                if value is None:
                    schema.pop(key, None)
                else:
                    schema[key] = value
        elif isinstance(item, StringConstraints):
            if item.min_length is not None:
                schema["minLength"] = item.min_length
            if item.max_length is not None:
                schema["maxLength"] = item.max_length
            if item.pattern is not None:
                schema["pattern"] = str(item.pattern)
        elif isinstance(item, annotated_types.MinLen):
            schema[{"array": "minItems", "object": "minProperties"}.get(str(kind), "minLength")] = (
                item.min_length
            )
        elif isinstance(item, annotated_types.MaxLen):
            schema[{"array": "maxItems", "object": "maxProperties"}.get(str(kind), "maxLength")] = (
                item.max_length
            )
        elif isinstance(item, annotated_types.Ge) and kind == "integer":
            schema["minimum"] = item.ge
        elif isinstance(item, annotated_types.Le) and kind == "integer":
            schema["maximum"] = item.le
        # Float-string bounds (Gt, Lt, ... on a string) are CEL rules next to them; validators and
        # serializers are Python-only.
    if schema.get("type") == "integer" and "format" not in schema:
        schema["format"] = "int32"
    if rules:
        # The field's own rules (e.g. immutability) come before those of the model it holds.
        schema["x-kubernetes-validations"] = rules + schema.get("x-kubernetes-validations", [])
    return schema


def _default(field: FieldInfo) -> Any:
    """The CRD default of a field, or PydanticUndefined. Empty strings, lists and maps mean "unset"."""
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
        if isinstance(value, BaseModel):
            return {}
        return value if value else PydanticUndefined
    value = field.default
    if value is PydanticUndefined or value is None or value == "":
        return PydanticUndefined
    return value.value if isinstance(value, enum.Enum) else value


def object_schema(model: type[BaseModel], *, with_defaults: bool = True) -> JSON:
    properties: JSON = {}
    required: list[str] = []
    for name, field in model.model_fields.items():
        alias = field.alias or name
        schema = type_schema(field.annotation, list(field.metadata), with_defaults=with_defaults)
        if field.description:
            schema["description"] = _text(field.description)
        default = _default(field) if with_defaults else PydanticUndefined
        if default is not PydanticUndefined:
            schema["default"] = default
        if field.is_required():
            required.append(alias)
        properties[alias] = _ordered(schema)
    out: JSON = {"type": "object"}
    if model.__doc__:
        out["description"] = _text(model.__doc__)
    if required:
        out["required"] = required
    rules = [r.as_schema() for r in getattr(model, "crd_rules", ())]
    if rules:
        out["x-kubernetes-validations"] = rules
    extra = getattr(model, "crd_schema", None)
    if isinstance(extra, Crd):
        out.update(extra.schema)
    out["properties"] = properties
    return _ordered(out)


def openapi_schema() -> JSON:
    spec = object_schema(FineTuneJobSpec)
    status = object_schema(FineTuneJobStatus, with_defaults=False)
    return {
        "type": "object",
        "description": "FineTuneJob fine-tunes a large language model (LoRA, QLoRA or full) on a JSONL dataset "
        "in S3 and writes the adapter, checkpoints and evaluation reports back to S3. The operator validates "
        "the inputs in a CPU-only pod before any GPU is held, then runs the trainer as a batch/v1 Job.",
        "required": ["spec"],
        "x-kubernetes-validations": [
            {
                "rule": f"self.metadata.name.size() <= {MAX_NAME_LENGTH}",
                "message": f"metadata.name must be at most {MAX_NAME_LENGTH} characters, so that the names of "
                "the job's pods, Jobs and ConfigMaps fit in 63; choose a shorter name",
                "fieldPath": ".metadata",
                "reason": "FieldValueInvalid",
            },
            {
                "rule": f"self.metadata.name.matches('{NAME_PATTERN}')",
                "message": "metadata.name must be an RFC 1035 label (lowercase letters, digits and '-', starting "
                "with a letter, ending with a letter or digit); choose another name",
                "fieldPath": ".metadata",
                "reason": "FieldValueInvalid",
            },
        ],
        "properties": {
            "apiVersion": {
                "type": "string",
                "description": f"APIVersion defines the versioned schema of this representation of an object "
                f"({API_VERSION}).",
            },
            "kind": {
                "type": "string",
                "description": f"Kind is the REST resource this object represents ({KIND}).",
            },
            # The API server owns metadata's schema; the name rules are the CEL rules above.
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }


def custom_resource_definition() -> JSON:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{GROUP}",
            "labels": {
                "app.kubernetes.io/name": "finetune-operator",
                "app.kubernetes.io/part-of": "finetune-operator",
            },
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "shortNames": ["ftj"],
                "categories": ["finetune", "ml"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                }
            ],
        },
    }
