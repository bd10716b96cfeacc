"""Find where an undecodable request went wrong: a walk over the protobuf wire format.

protobuf's decoder only says that *some* string was not UTF-8. The client needs the field
(`texts[2].text`), so when decoding fails the request bytes are walked here against the
message descriptor: every string checked for UTF-8, every sub-message entered, repeated
fields counted. Unknown fields are skipped; the walk never raises and is bounded by the
request's size (each byte is read once, nesting at most MAX_DEPTH deep).
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from wacht.service.observability.redact import path_key

MAX_DEPTH = 32
VARINT, FIXED64, LENGTH, GROUP_START, GROUP_END, FIXED32 = 0, 1, 2, 3, 4, 5


@dataclass(frozen=True)
class WireProblem:
    field: str  # the field path, "" when the message as a whole is malformed
    description: str


class _Malformed(Exception):
    def __init__(self, field: str, description: str) -> None:
        super().__init__(description)
        self.problem = WireProblem(field, description)


def _varint(data: bytes | memoryview, pos: int, end: int, where: str) -> tuple[int, int]:
    result = shift = 0
    while pos < end and shift < 70:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
    raise _Malformed(where, "truncated or overlong varint")


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _map_entry(
    data: memoryview, entry: Descriptor, where: str
) -> tuple[str | None, bool, memoryview | None]:
    """One map entry: its key as text (None when not a string), whether the key was valid
    UTF-8, and the bytes of its value when that is length-delimited."""
    key_field, value_field = entry.fields_by_name["key"], entry.fields_by_name["value"]
    pos, end = 0, len(data)
    key: str | None = None
    value: memoryview | None = None
    while pos < end:
        tag, pos = _varint(data, pos, end, where)
        number, kind = tag >> 3, tag & 7
        if kind != LENGTH:
            pos = _skip(data, pos, end, kind, where)
            continue
        size, pos = _varint(data, pos, end, where)
        if pos + size > end:
            raise _Malformed(where, "field runs past the end of its message")
        body = data[pos : pos + size]
        pos += size
        if number == key_field.number and key_field.type == FieldDescriptor.TYPE_STRING:
            try:
                key = bytes(body).decode("utf-8")
            except UnicodeDecodeError:
                return None, False, None
        elif number == value_field.number:
            value = body
    return key, True, value


def _skip(data: memoryview, pos: int, end: int, kind: int, where: str) -> int:
    if kind == VARINT:
        return _varint(data, pos, end, where)[1]
    if kind == FIXED64:
        pos += 8
    elif kind == FIXED32:
        pos += 4
    elif kind == LENGTH:
        size, pos = _varint(data, pos, end, where)
        pos += size
    else:
        raise _Malformed(where, f"unsupported wire type {kind}")
    if pos > end:
        raise _Malformed(where, "field runs past the end of its message")
    return pos


def _walk(data: memoryview, descriptor: Descriptor, prefix: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise _Malformed(prefix, f"nested deeper than {MAX_DEPTH} messages")
    counts: dict[int, int] = {}
    pos, end = 0, len(data)
    while pos < end:
        tag, pos = _varint(data, pos, end, prefix)
        number, kind = tag >> 3, tag & 7
        field = descriptor.fields_by_number.get(number)
        if field is None or kind != LENGTH:
            if number == 0:
                raise _Malformed(prefix, "field number 0")
            pos = _skip(data, pos, end, kind, _join(prefix, field.name) if field else prefix)
            continue
        index = counts.get(number, 0)
        counts[number] = index + 1
        where = _join(prefix, field.name)
        size, pos = _varint(data, pos, end, where)
        if pos + size > end:
            raise _Malformed(where, "field runs past the end of its message")
        body = data[pos : pos + size]
        pos += size
        repeated = field.is_repeated
        if field.type == FieldDescriptor.TYPE_STRING:
            try:
                bytes(body).decode("utf-8")
            except UnicodeDecodeError as exc:
                at = f"{where}[{index}]" if repeated else where
                raise _Malformed(at, f"not valid UTF-8 (byte {exc.start})") from None
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            entry = field.message_type
            if entry.GetOptions().map_entry:
                key, valid, value = _map_entry(body, entry, where)
                if not valid:
                    raise _Malformed(where, "a map key is not valid UTF-8")
                at = f"{where}[{path_key(key)}]" if key is not None else where
                value_field = entry.fields_by_name["value"]
                if value is None:
                    continue
                if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                    _walk(value, value_field.message_type, at, depth + 1)
                elif value_field.type == FieldDescriptor.TYPE_STRING:
                    try:
                        bytes(value).decode("utf-8")
                    except UnicodeDecodeError as exc:
                        raise _Malformed(at, f"not valid UTF-8 (byte {exc.start})") from None
            else:
                _walk(body, entry, f"{where}[{index}]" if repeated else where, depth + 1)


def find_problem(descriptor: Descriptor, data: bytes) -> WireProblem | None:
    """The first field of `data` (a serialized `descriptor` message) that cannot be decoded,
    or None if the walk finds nothing wrong."""
    try:
        _walk(memoryview(data), descriptor, "", 0)
    except _Malformed as exc:
        return exc.problem
    return None
