"""How the contract's models look on the wire, and the CRD facts they carry.

Every model here is written once and read by three parties: the API server (through the CRD that
`finetune_operator.api.crd` generates from the models), the operator and the trainer. A field's
Python type, bounds, default and description are the pydantic declaration; what only the CRD can say
(a CEL rule with its message, an OpenAPI `format`, a list type) rides along in `Annotated` metadata as
`Cel` and `Crd` markers, which pydantic ignores and the generator reads.

Floats are strings on the wire ("2e-4": exact in YAML, checked by pattern and CEL `double()`), floats
in Python. Money and GPU-hours are decimal strings, `Decimal` in Python, so sums are exact.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Final

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer
from pydantic.alias_generators import to_camel

# Decimal or exponent notation, no sign: "2e-4", "0.05", "1", "1.5E+2". The exponent has at most two
# digits so every accepted string is a finite double (CEL's double() would fail on "1e400").
FLOAT_STRING_PATTERN: Final = r"^[0-9]{1,10}(\.[0-9]{1,20})?([eE][-+]?[0-9]{1,2})?$"
# Money and GPU-hours: plain decimals, so sums and comparisons are exact.
DECIMAL_STRING_PATTERN: Final = r"^[0-9]{1,9}(\.[0-9]{1,4})?$"


@dataclass(frozen=True)
class Cel:
    """One `x-kubernetes-validations` rule of the field (or, in `crd_rules`, of the model) it annotates.

    The same rule is also a pydantic validator of the model, so a spec the API server refused never
    parses either; the message says what to change.
    """

    rule: str
    message: str
    field_path: str | None = None
    reason: str | None = None

    def as_schema(self) -> dict[str, str]:
        out = {"rule": " ".join(self.rule.split()), "message": self.message}
        if self.field_path is not None:
            out["fieldPath"] = self.field_path
        if self.reason is not None:
            out["reason"] = self.reason
        return out


# eq=False: hashed by identity, as typing hashes Annotated metadata and the schema holds dicts and lists.
@dataclass(frozen=True, eq=False)
class Crd:
    """OpenAPI keys merged into the field's CRD schema (e.g. format, x-kubernetes-list-type); a key set to
    None removes what the type would give (e.g. a pattern the CRD expresses as a CEL rule instead)."""

    schema: dict[str, Any] = field(default_factory=dict)

    def __init__(self, **schema: Any) -> None:
        object.__setattr__(self, "schema", {k.replace("__", "-"): v for k, v in schema.items()})


def immutable(field_name: str) -> Cel:
    return Cel("self == oldSelf", f"{field_name} is immutable; create a new FineTuneJob")


class WireModel(BaseModel):
    """camelCase on the wire, snake_case in Python; attribute docstrings are the field descriptions
    (`kubectl explain` shows them). Unknown fields are refused: an operator or trainer that does not
    know a field must say so rather than drop a user's setting."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
    )


class ReadModel(BaseModel):
    """The same wire names as `WireModel`, for what one party writes and another reads back (summaries,
    status): unknown fields are ignored, so a newer writer's extra fields do not stop an older reader."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="ignore",
        use_attribute_docstrings=True,
    )


def _parse_float_string(value: object) -> object:
    """Turn the wire's float strings into floats; numbers pass through for Python callers."""
    if isinstance(value, str):
        if not re.fullmatch(FLOAT_STRING_PATTERN, value):
            raise ValueError(f'must be a decimal or exponent string such as "2e-4" or "0.05", not {value!r}')
        return float(value)
    return value


def _parse_decimal_string(value: object) -> object:
    if isinstance(value, str):
        if not re.fullmatch(DECIMAL_STRING_PATTERN, value):
            raise ValueError(f'must be a decimal string such as "50" or "12.50", not {value!r}')
        try:
            return Decimal(value)
        except InvalidOperation as err:  # unreachable after the pattern, kept for a clear message
            raise ValueError(f"not a decimal: {value!r}") from err
    return value


# A float in Python, a string on the wire ("2e-4" comes back as "0.0002": the same value).
FloatString = Annotated[
    float,
    BeforeValidator(_parse_float_string),
    PlainSerializer(repr, return_type=str),
    Crd(type="string", maxLength=32, pattern=FLOAT_STRING_PATTERN),
]
DecimalString = Annotated[
    Decimal,
    BeforeValidator(_parse_decimal_string),
    PlainSerializer(str, return_type=str),
    Crd(type="string", maxLength=16, pattern=DECIMAL_STRING_PATTERN),
]


def _num(value: float) -> str:
    return f"{value:g}"


def float_range(
    field: str,
    *,
    example: str,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
) -> tuple[Any, Cel]:
    """Bounds of a float string (`Annotated[FloatString, *float_range(...)]`): checked by pydantic in
    Python and by the same CEL rule in the CRD, whose message states the range and an example."""
    checks = [
        f"double(self) {op} {bound!r}"
        for op, bound in ((">", gt), (">=", ge), ("<", lt), ("<=", le))
        if bound is not None
    ]
    low, high = (gt if gt is not None else ge), (lt if lt is not None else le)
    if gt is not None and lt is not None:
        what = f"greater than {_num(gt)} and less than {_num(lt)}"
    elif high is None and gt is not None:
        what = f"greater than {_num(gt)}"
    else:
        opening, closing = "(" if gt is not None else "[", ")" if lt is not None else "]"
        what = f"in {opening}{_num(low or 0)}, {_num(high or 0)}{closing}"
    rule = Cel(" && ".join(checks), f'{field} must be {what}, e.g. "{example}"', reason="FieldValueInvalid")
    return Field(gt=gt, ge=ge, lt=lt, le=le), rule


def with_slash(uri: str) -> str:
    return uri if uri.endswith("/") else uri + "/"
