"""Protobuf messages as the CLI prints them: JSON-shaped Python values, table rows.

``json_format.MessageToDict`` is not used: proto3 JSON drops fields at their default
(``started: false`` of a duplicate start, ``failed_over: false``, ``0``, ``""``, ``[]``),
prints 64-bit integers as strings and integral numbers in a ``google.protobuf.Value`` as
``20.0``. Here every field is printed, walking the descriptor.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Sequence
from typing import Any, cast

from google.protobuf import struct_pb2, timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from router.api.values import to_python

__all__ = ["cell", "message_rows", "message_to_json"]

# Rendered whole (as a JSON value or a time), never walked field by field.
_LEAF_MESSAGES = frozenset(
    m.DESCRIPTOR.full_name
    for m in (timestamp_pb2.Timestamp, struct_pb2.Value, struct_pb2.Struct, struct_pb2.ListValue)
)


def message_to_json(msg: Message) -> Any:
    """``msg`` as a JSON-shaped value (``json.dumps`` prints it as is).

    Every field is present: scalars at their default too; a field with explicit presence
    (a sub-message, ``optional``, a oneof member) that is unset is ``None``. 64-bit
    integers are ints; enums their value's name (the number when unknown); bytes base64;
    ``Timestamp`` ISO 8601 UTC ending in ``Z``; ``Value``/``Struct``/``ListValue`` plain
    JSON with integral numbers within 2**53 as ints; repeated fields lists; maps objects.
    """
    if isinstance(msg, timestamp_pb2.Timestamp):
        return msg.ToJsonString()
    if isinstance(msg, struct_pb2.Value):
        return _finite(to_python(msg))
    if isinstance(msg, struct_pb2.Struct):
        return _finite({k: to_python(v) for k, v in msg.fields.items()})
    if isinstance(msg, struct_pb2.ListValue):
        return [_finite(to_python(v)) for v in msg.values]
    return {f.name: _field(msg, f) for f in _fields(msg)}


def _fields(msg: Message) -> Sequence[FieldDescriptor]:
    # The stubs type a message's descriptor as the pure-Python or the upb class; same API.
    return cast(Sequence[FieldDescriptor], msg.DESCRIPTOR.fields)


def _field(msg: Message, field: FieldDescriptor) -> Any:
    value = getattr(msg, field.name)
    if _is_map(field):
        entry = field.message_type
        assert entry is not None
        val_field = entry.fields_by_name["value"]
        # JSON object keys are strings; a bool key is spelled as JSON spells it.
        return {cell(k): _single(val_field, v) for k, v in value.items()}
    if field.is_repeated:
        return [_single(field, v) for v in value]
    if field.has_presence and not msg.HasField(field.name):
        return None
    return _single(field, value)


def _single(field: FieldDescriptor, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return message_to_json(value)
    if field.type == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        known = field.enum_type.values_by_number.get(value)
        return value if known is None else known.name
    if field.type == FieldDescriptor.TYPE_BYTES:
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, float):
        return _finite(value)
    return value  # bool, str, and every integer type (Python ints, never strings)


def _finite(value: Any) -> Any:
    """NaN and infinities as proto3 JSON spells them: JSON has no such numbers. Objects
    with their keys sorted: a Struct is a map, whose order is the runtime's, so the same
    value would print differently from call to call (done here, for printing, not on the
    router's request path)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _is_map(field: FieldDescriptor) -> bool:
    entry: Descriptor | None = field.message_type
    return field.is_repeated and entry is not None and entry.GetOptions().map_entry


def message_rows(msg: Message, prefix: str = "") -> list[tuple[str, str]]:
    """``(field, value)`` rows for a field/value table: sub-messages flattened into dotted
    names (``decision.receipt.sequence``), everything else one cell."""
    rows: list[tuple[str, str]] = []
    for field in _fields(msg):
        name = prefix + field.name
        if (
            field.type == FieldDescriptor.TYPE_MESSAGE
            and not field.is_repeated
            and field.message_type is not None
            and field.message_type.full_name not in _LEAF_MESSAGES
            and msg.HasField(field.name)
        ):
            rows += message_rows(getattr(msg, field.name), f"{name}.")
        else:
            rows.append((name, cell(_field(msg, field))))
    return rows


def cell(value: Any) -> str:
    """One JSON-shaped value as a table cell: JSON's words for true/false, nothing for
    null, a list of strings joined by "; ", other lists and objects as JSON."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "; ".join(value)
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)
