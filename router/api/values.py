"""google.protobuf.Value <-> plain Python (JSON-shaped) values, by hand for speed:
json_format.MessageToDict costs several times more per argument on the hot path.

Numbers travel as doubles in a Value; an integral double within 2**53 comes back as an
int so workflow code that expects counts gets ints.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from google.protobuf import struct_pb2

from router.errors import InvalidArgument

_MAX_EXACT = 2**53


def to_python(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        n = value.number_value
        if n.is_integer() and -_MAX_EXACT <= n <= _MAX_EXACT:
            return int(n)
        return n
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return {k: to_python(v) for k, v in value.struct_value.fields.items()}
    if kind == "list_value":
        return [to_python(v) for v in value.list_value.values]
    return None  # null_value, or unset


def args_to_python(field: str, values: Iterable[struct_pb2.Value]) -> list[Any]:
    out = []
    for i, v in enumerate(values):
        if v.WhichOneof("kind") == "number_value" and not math.isfinite(v.number_value):
            raise InvalidArgument(field=f"{field}[{i}]", reason="NaN and infinity are not JSON")
        out.append(to_python(v))
    return out


def from_python(obj: Any, out: struct_pb2.Value | None = None) -> struct_pb2.Value:
    """Fill (or create) a Value from a JSON-shaped Python object."""
    v = struct_pb2.Value() if out is None else out
    if obj is None:
        v.null_value = struct_pb2.NULL_VALUE
    elif isinstance(obj, bool):
        v.bool_value = obj
    elif isinstance(obj, int | float):
        v.number_value = float(obj)
    elif isinstance(obj, str):
        v.string_value = obj
    elif isinstance(obj, dict):
        v.struct_value.SetInParent()  # an empty dict is still a struct, not "unset"
        fields = v.struct_value.fields
        for k, item in obj.items():
            from_python(item, fields[str(k)])
    elif isinstance(obj, list | tuple):
        v.list_value.SetInParent()
        values = v.list_value.values
        for item in obj:
            from_python(item, values.add())
    else:
        raise TypeError(f"{type(obj).__name__} is not JSON-shaped")
    return v
