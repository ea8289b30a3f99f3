"""Protobuf messages as plain JSON-ready dicts: every field present, integers kept as integers.

(protobuf's MessageToDict turns 64-bit integers into strings and drops default values.)
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message


def message_to_dict(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            out[field.name] = {k: _scalar_or_message(value_field, v) for k, v in value.items()}
        elif field.is_repeated:
            out[field.name] = [_scalar_or_message(field, v) for v in value]
        else:
            out[field.name] = _scalar_or_message(field, value)
    return out


def _scalar_or_message(field: FieldDescriptor, value: Any) -> Any:
    return message_to_dict(value) if field.type == FieldDescriptor.TYPE_MESSAGE else value
