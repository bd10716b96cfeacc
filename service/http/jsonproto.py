"""JSON bodies to protobuf requests with protobuf's canonical JSON mapping, and back.

`parse` checks the decoded JSON against the message descriptor first, so that a wrong type
is reported as an INVALID_ARGUMENT field violation with the same path gRPC validation uses
(`texts[0].text`, `threshold_overrides[insult].review`), and never echoes the client's value
(json_format's own messages quote it). Either the proto name or the JSON name of a field is
accepted, as json_format does.
"""

from __future__ import annotations

import math
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from wacht.service.api import errors

M = TypeVar("M", bound=Message)
MAX_VIOLATIONS = 20
_INTS = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
_FLOATS = (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _is_map(field: FieldDescriptor) -> bool:
    return (
        field.type == FieldDescriptor.TYPE_MESSAGE
        and field.message_type.GetOptions().map_entry
    )


def _fields(descriptor: Descriptor) -> dict[str, FieldDescriptor]:
    out: dict[str, FieldDescriptor] = {}
    for field in descriptor.fields:
        out[field.name] = field
        out[field.json_name] = field
    return out


class _Checker:
    def __init__(self) -> None:
        self.violations: list[tuple[str, str]] = []

    def add(self, path: str, description: str) -> None:
        if len(self.violations) < MAX_VIOLATIONS:
            self.violations.append((path, description))

    def message(self, value: Any, descriptor: Descriptor, path: str) -> None:
        if not isinstance(value, dict):
            self.add(path, f"expected an object ({descriptor.name}), got {_kind(value)}")
            return
        fields = _fields(descriptor)
        for key, item in value.items():
            field = fields.get(key)
            at = f"{path}.{key}" if path else key
            if field is None:
                known = ", ".join(f.name for f in descriptor.fields) or "none"
                self.add(at, f"unknown field; {descriptor.name} has: {known}")
                continue
            at = f"{path}.{field.name}" if path else field.name
            if item is None:
                continue  # null = the default, as in the canonical mapping
            if _is_map(field):
                self.map(item, field, at)
            elif field.is_repeated:
                if not isinstance(item, list):
                    self.add(at, f"expected an array, got {_kind(item)}")
                    continue
                for i, element in enumerate(item):
                    self.scalar_or_message(element, field, f"{at}[{i}]")
            else:
                self.scalar_or_message(item, field, at)

    def map(self, value: Any, field: FieldDescriptor, path: str) -> None:
        if not isinstance(value, dict):
            self.add(path, f"expected an object (a map), got {_kind(value)}")
            return
        value_field = field.message_type.fields_by_name["value"]
        for key, item in value.items():
            self.scalar_or_message(item, value_field, f"{path}[{key}]")

    def scalar_or_message(self, value: Any, field: FieldDescriptor, path: str) -> None:
        kind = field.type
        if kind == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type.full_name.startswith("google.protobuf."):
                return  # well-known types have their own JSON forms; json_format checks them
            self.message(value, field.message_type, path)
        elif kind == FieldDescriptor.TYPE_STRING:
            if not isinstance(value, str):
                self.add(path, f"expected a string, got {_kind(value)}")
        elif kind == FieldDescriptor.TYPE_BOOL:
            if not isinstance(value, bool):
                self.add(path, f"expected true or false, got {_kind(value)}")
        elif kind == FieldDescriptor.TYPE_ENUM:
            enum = field.enum_type
            if isinstance(value, bool) or not isinstance(value, str | int):
                self.add(path, f"expected a {enum.name} name, got {_kind(value)}")
            elif isinstance(value, str) and value not in enum.values_by_name:
                names = ", ".join(enum.values_by_name)
                self.add(path, f"unknown {enum.name} value; one of: {names}")
        elif kind in _INTS:
            low, high = _INTS[kind]
            number = value
            if isinstance(value, str):
                try:
                    number = int(value)
                except ValueError:
                    number = None
            if isinstance(number, float) and number.is_integer():
                number = int(number)
            if isinstance(number, bool) or not isinstance(number, int):
                self.add(path, f"expected an integer, got {_kind(value)}")
            elif not low <= number <= high:
                self.add(path, f"integer out of range [{low}, {high}]")
        elif kind in _FLOATS:
            if isinstance(value, str) and value in ("NaN", "Infinity", "-Infinity"):
                return
            if isinstance(value, bool) or not isinstance(value, int | float):
                self.add(path, f"expected a number, got {_kind(value)}")
            elif isinstance(value, float) and not math.isfinite(value):
                self.add(path, "expected a finite number")
        elif kind == FieldDescriptor.TYPE_BYTES and not isinstance(value, str):
            self.add(path, f"expected base64 in a string, got {_kind(value)}")


def check(data: Any, descriptor: Descriptor, path: str = "") -> list[tuple[str, str]]:
    """Field violations of `data` as JSON for `descriptor` (empty = it will parse)."""
    checker = _Checker()
    checker.message(data, descriptor, path)
    return checker.violations


def parse(data: Any, cls: type[M]) -> M:
    """`data` (decoded JSON) as a `cls` message; INVALID_ARGUMENT naming each bad field."""
    violations = check(data, cls.DESCRIPTOR)
    if violations:
        raise errors.invalid_argument(violations)
    message = cls()
    try:
        json_format.ParseDict(data, message)
    except (json_format.ParseError, ValueError, TypeError):
        # the check above covers the mapping; what is left (e.g. bad base64) is not echoed
        raise errors.invalid_argument(
            [("", f"the body does not map to {cls.DESCRIPTOR.full_name}")]
        ) from None
    return message


def to_json(message: Message) -> dict[str, Any]:
    """The canonical JSON mapping (lowerCamelCase names, enums by name, 64-bit ints as
    strings), with every field present so that clients need no defaults table."""
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)
