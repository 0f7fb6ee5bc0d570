"""Schemaless protobuf: the fields of a message read from its wire format alone (pure, bounded).

Without the ``.proto`` only the wire shows: field numbers and wire types. A varint is shown as its
unsigned value, fixed32/fixed64 as unsigned integers, a length-delimited field as a nested message when
its bytes parse fully as one (and are not plain text), else as a UTF-8 string, else as base64 bytes.
Groups (wire types 3 and 4, deprecated) are not followed: a message holding one does not parse.

Bounds: nesting depth (:data:`MAX_DEPTH`) and a budget of fields per top-level message
(:data:`MAX_FIELDS`); past the budget the decoder stops and says so (``truncated``). Nothing here
raises on bad input: :func:`decode_message` returns None when the bytes are not a message.
"""

from __future__ import annotations

import base64
import re
from typing import Any

MAX_DEPTH = 8
MAX_FIELDS = 256
MAX_STRING = 4096  # characters of one string or bytes field shown (the rest is cut, ``cut`` says so)

WIRE_NAMES = ("varint", "i64", "len", "sgroup", "egroup", "i32")

# C0 controls other than TAB, LF, CR, plus DEL: their presence means "not text"
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class _Budget:
    __slots__ = ("left",)

    def __init__(self, left: int) -> None:
        self.left = left


def read_varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """``(value, next position)``; ``(-1, pos)`` when no whole varint of at most 10 bytes is there."""
    value = 0
    shift = 0
    i = pos
    while i < end and shift < 70:
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            if value >= 1 << 64:
                return -1, pos
            return value, i
        shift += 7
    return -1, pos


def _scan(data: bytes, start: int, end: int) -> bool:
    """Whether ``data[start:end]`` is a sequence of whole fields (structure only, no values)."""
    pos = start
    while pos < end:
        key, pos = read_varint(data, pos, end)
        if key < 0:
            return False
        wire = key & 7
        if key >> 3 == 0:
            return False
        if wire == 0:
            value, pos2 = read_varint(data, pos, end)
            if value < 0:
                return False
            pos = pos2
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, pos2 = read_varint(data, pos, end)
            if length < 0:
                return False
            pos = pos2 + length
        else:
            return False
        if pos > end:
            return False
    return True


def _is_text(raw: bytes) -> str | None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if _CONTROL.search(text) is not None:
        return None
    return text


def _fields(data: bytes, start: int, end: int, depth: int, budget: _Budget) -> list[dict[str, Any]]:
    # structure already checked by _scan
    out: list[dict[str, Any]] = []
    pos = start
    while pos < end:
        if budget.left <= 0:
            out.append({"truncated": True})
            return out
        budget.left -= 1
        key, pos = read_varint(data, pos, end)
        wire = key & 7
        field: dict[str, Any] = {"field": key >> 3, "wire": WIRE_NAMES[wire]}
        if wire == 0:
            value, pos = read_varint(data, pos, end)
            field["value"] = value
        elif wire == 1:
            field["value"] = int.from_bytes(data[pos:pos + 8], "little")
            pos += 8
        elif wire == 5:
            field["value"] = int.from_bytes(data[pos:pos + 4], "little")
            pos += 4
        else:
            length, pos = read_varint(data, pos, end)
            sub_end = pos + length
            raw = data[pos:sub_end]
            text = _is_text(raw)
            if text is None and length and depth < MAX_DEPTH and _scan(data, pos, sub_end):
                field["message"] = _fields(data, pos, sub_end, depth + 1, budget)
            elif text is not None:
                field["string"] = text[:MAX_STRING]
                if len(text) > MAX_STRING:
                    field["cut"] = True
            else:
                field["bytes"] = base64.b64encode(raw[:MAX_STRING]).decode("ascii")
                if length > MAX_STRING:
                    field["cut"] = True
            pos = sub_end
        out.append(field)
    return out


def decode_message(data: bytes, *, max_fields: int = MAX_FIELDS) -> list[dict[str, Any]] | None:
    """The fields of ``data`` as a protobuf message, in wire order, or None when it is not one.

    Each field is ``{"field": n, "wire": "varint"|"i64"|"i32"|"len", ...}`` with ``value`` (integers),
    or one of ``message`` (nested fields), ``string``, ``bytes`` (base64) for ``len``; ``cut`` marks a
    string or bytes value shown in part. A last element ``{"truncated": true}`` tells the field budget
    ran out. An empty message is ``[]``.
    """
    end = len(data)
    if not _scan(data, 0, end):
        return None
    return _fields(data, 0, end, 0, _Budget(max_fields))
