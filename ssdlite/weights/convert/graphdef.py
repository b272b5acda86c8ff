"""Read TensorFlow ``GraphDef`` protobuf files without TensorFlow.

A frozen TensorFlow graph (``frozen_inference_graph.pb``) is one serialised
``GraphDef`` message. This module decodes just enough of the protobuf wire
format to recover its nodes, their attributes and the constant tensors that
hold the weights, using only the standard library and numpy.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["GraphFormatError", "Node", "constants", "read_graph"]

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_FIXED_FORMATS = {_I32: ("f", 4), _I64: ("d", 8)}
_UINT64_MASK = (1 << 64) - 1

# TensorProto value fields: field number -> wire type of one element.
_VALUE_WIRES = {
    5: _I32,  # float_val
    6: _I64,  # double_val
    7: _VARINT,  # int_val
    8: _LEN,  # string_val
    9: _I32,  # scomplex_val
    10: _VARINT,  # int64_val
    11: _VARINT,  # bool_val
    12: _I64,  # dcomplex_val
    13: _VARINT,  # half_val
    16: _VARINT,  # uint32_val
    17: _VARINT,  # uint64_val
}
_SIGNED_VALUE_FIELDS = frozenset({7, 10})

# DataType enum -> (numpy dtype, TensorProto value field, dtype of the values in that field).
_TENSOR_DTYPES = {
    1: ("<f4", 5, "<f4"),  # DT_FLOAT
    2: ("<f8", 6, "<f8"),  # DT_DOUBLE
    3: ("<i4", 7, "<i4"),  # DT_INT32
    4: ("u1", 7, "u1"),  # DT_UINT8
    5: ("<i2", 7, "<i2"),  # DT_INT16
    6: ("i1", 7, "i1"),  # DT_INT8
    7: ("O", 8, "O"),  # DT_STRING
    8: ("<c8", 9, "<f4"),  # DT_COMPLEX64
    9: ("<i8", 10, "<i8"),  # DT_INT64
    10: ("?", 11, "?"),  # DT_BOOL
    11: ("i1", 7, "i1"),  # DT_QINT8
    12: ("u1", 7, "u1"),  # DT_QUINT8
    13: ("<i4", 7, "<i4"),  # DT_QINT32
    15: ("<i2", 7, "<i2"),  # DT_QINT16
    16: ("<u2", 7, "<u2"),  # DT_QUINT16
    17: ("<u2", 7, "<u2"),  # DT_UINT16
    18: ("<c16", 12, "<f8"),  # DT_COMPLEX128
    19: ("<f2", 13, "<u2"),  # DT_HALF, stored as its raw bits
    22: ("<u4", 16, "<u4"),  # DT_UINT32
    23: ("<u8", 17, "<u8"),  # DT_UINT64
}

# AttrValue / AttrValue.ListValue field number -> expected wire type.
_ATTR_WIRES = {1: _LEN, 2: _LEN, 3: _VARINT, 4: _I32, 5: _VARINT, 6: _VARINT, 7: _LEN, 8: _LEN}
_LIST_WIRES = {2: _LEN, 3: _VARINT, 4: _I32, 5: _VARINT, 6: _VARINT, 7: _LEN, 8: _LEN}


class GraphFormatError(ValueError):
    """The data is not a well-formed TensorFlow ``GraphDef``."""


@dataclass
class Node:
    """One ``NodeDef`` of a graph.

    ``inputs`` keeps TensorFlow's spelling: ``"name"`` (output 0),
    ``"name:1"`` and ``"^name"`` (control dependency).
    """

    name: str
    op: str
    inputs: list[str]
    attrs: dict[str, object]


def read_graph(path_or_bytes: str | os.PathLike | bytes | bytearray | memoryview) -> dict[str, Node]:
    """Parse a serialised TensorFlow ``GraphDef``.

    Attribute values are decoded to plain Python / numpy objects: strings to
    ``str`` (``bytes`` when not valid UTF-8), ints, floats, bools, dtype enums
    to ``int``, shapes to tuples of ints (``-1`` for an unknown dimension,
    ``None`` for an unknown rank), tensors to numpy arrays of the matching
    dtype and shape (``DT_STRING`` tensors to object arrays of ``bytes``), and
    lists to Python lists of those. Kinds that frozen graphs do not use
    (``func``, ``placeholder``) decode to ``None``.

    Args:
        path_or_bytes: Path of a ``.pb`` file, or the serialised bytes.

    Returns:
        The nodes keyed by name, in the order they appear in the graph.

    Raises:
        GraphFormatError: If the data is empty, truncated or not a GraphDef.
        OSError: If the file cannot be read.
    """
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        data = bytes(path_or_bytes)
        source = "GraphDef data"
    else:
        data = Path(path_or_bytes).read_bytes()
        source = os.fspath(path_or_bytes)
    try:
        return _graph(data)
    except GraphFormatError as exc:
        raise GraphFormatError(f"{source} is not a valid TensorFlow GraphDef: {exc}") from None


def constants(graph: dict[str, Node]) -> dict[str, np.ndarray]:
    """Collect the tensors held by the ``Const`` nodes of a graph.

    Args:
        graph: Nodes as returned by :func:`read_graph`.

    Returns:
        Each ``Const`` node's ``value`` tensor keyed by node name, in graph order.

    Raises:
        GraphFormatError: If a ``Const`` node has no tensor ``value`` attribute.
    """
    tensors = {}
    for name, node in graph.items():
        if node.op == "Const":
            value = node.attrs.get("value")
            if not isinstance(value, np.ndarray):
                raise GraphFormatError(f"Const node {name!r} has no tensor 'value' attribute")
            tensors[name] = value
    return tensors


def _graph(buf: bytes) -> dict[str, Node]:
    if not buf:
        raise GraphFormatError("the data is empty")
    nodes: dict[str, Node] = {}
    for field, wire, value in _fields(buf, 0, len(buf)):
        if field != 1:
            continue
        _check_wire(wire, _LEN, "GraphDef.node")
        try:
            node = _node(buf, *value)
        except GraphFormatError as exc:
            raise GraphFormatError(f"node #{len(nodes)} at byte {value[0]}: {exc}") from None
        if node.name in nodes:
            raise GraphFormatError(f"duplicate node name {node.name!r}")
        nodes[node.name] = node
    if not nodes:
        raise GraphFormatError("it contains no nodes")
    return nodes


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while pos < end:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result & _UINT64_MASK, pos
        shift += 7
        if shift > 63:
            raise GraphFormatError(f"varint longer than 10 bytes before byte {pos}")
    raise GraphFormatError(f"truncated varint at byte {pos}")


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _fields(buf: bytes, pos: int, end: int) -> Iterator[tuple[int, int, Any]]:
    # The value is the decoded int (varint), the byte offset (fixed32/64) or the (start, end) payload range.
    while pos < end:
        key_pos = pos
        key, pos = _varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        value: Any
        if field == 0:
            raise GraphFormatError(f"invalid field number 0 at byte {key_pos}")
        if wire == _VARINT:
            value, pos = _varint(buf, pos, end)
        elif wire == _LEN:
            length, pos = _varint(buf, pos, end)
            value = (pos, pos + length)
            pos += length
        elif wire == _I32:
            value = pos
            pos += 4
        elif wire == _I64:
            value = pos
            pos += 8
        else:
            raise GraphFormatError(f"unsupported wire type {wire} at byte {key_pos}")
        if pos > end:
            raise GraphFormatError(
                f"field {field} at byte {key_pos} ends at byte {pos}, past the end of its enclosing message "
                f"at byte {end} (truncated or corrupt data)"
            )
        yield field, wire, value


def _check_wire(wire: int, expected: int, what: str) -> None:
    if wire != expected:
        raise GraphFormatError(f"{what} has wire type {wire}, expected {expected}")


def _utf8(buf: bytes, span: tuple[int, int], what: str) -> str:
    try:
        return buf[span[0] : span[1]].decode("utf-8")
    except UnicodeDecodeError:
        raise GraphFormatError(f"{what} at byte {span[0]} is not valid UTF-8") from None


def _scalars(buf: bytes, wire: int, value: Any, element_wire: int, what: str) -> list:
    # Writers may emit repeated scalars packed (one length-delimited run) or one field per element.
    if wire == _LEN and element_wire != _LEN:
        start, end = value
        if element_wire == _VARINT:
            values = []
            while start < end:
                item, start = _varint(buf, start, end)
                values.append(item)
            return values
        code, size = _FIXED_FORMATS[element_wire]
        if (end - start) % size:
            raise GraphFormatError(f"packed {what} at byte {start} is not a multiple of {size} bytes")
        return list(struct.unpack_from(f"<{(end - start) // size}{code}", buf, start))
    _check_wire(wire, element_wire, what)
    if element_wire == _VARINT:
        return [value]
    if element_wire == _LEN:
        return [buf[value[0] : value[1]]]
    return [struct.unpack_from("<" + _FIXED_FORMATS[element_wire][0], buf, value)[0]]


def _node(buf: bytes, start: int, end: int) -> Node:
    name = op = ""
    inputs: list[str] = []
    attrs: dict[str, object] = {}
    for field, wire, value in _fields(buf, start, end):
        if field in (1, 2, 3, 5):
            _check_wire(wire, _LEN, f"NodeDef field {field}")
        if field == 1:
            name = _utf8(buf, value, "node name")
        elif field == 2:
            op = _utf8(buf, value, "node op")
        elif field == 3:
            inputs.append(_utf8(buf, value, "node input"))
        elif field == 5:
            key, attr = _attr_entry(buf, *value)
            attrs[key] = attr
    if not name or not op:
        raise GraphFormatError(f"node {name!r} has no name or no op")
    return Node(name=name, op=op, inputs=inputs, attrs=attrs)


def _attr_entry(buf: bytes, start: int, end: int) -> tuple[str, object]:
    key, attr = "", None
    for field, wire, value in _fields(buf, start, end):
        if field == 1:
            _check_wire(wire, _LEN, "attr key")
            key = _utf8(buf, value, "attr key")
        elif field == 2:
            _check_wire(wire, _LEN, "attr value")
            try:
                attr = _attr_value(buf, *value)
            except GraphFormatError as exc:
                raise GraphFormatError(f"attr {key!r}: {exc}") from None
    return key, attr


def _attr_value(buf: bytes, start: int, end: int) -> object:
    result: object = None
    for field, wire, value in _fields(buf, start, end):
        if field not in _ATTR_WIRES:
            continue
        _check_wire(wire, _ATTR_WIRES[field], f"AttrValue field {field}")
        if field == 1:
            result = _list_value(buf, *value)
        elif field == 2:
            result = _text(buf, *value)
        elif field == 3:
            result = _signed64(value)
        elif field == 4:
            result = struct.unpack_from("<f", buf, value)[0]
        elif field == 5:
            result = bool(value)
        elif field == 6:
            result = value
        elif field == 7:
            result = _shape(buf, *value)
        else:
            result = _tensor(buf, *value)
    return result


def _list_value(buf: bytes, start: int, end: int) -> list:
    items: list = []
    for field, wire, value in _fields(buf, start, end):
        if field not in _LIST_WIRES:
            continue
        if field == 2:
            _check_wire(wire, _LEN, "ListValue.s")
            items.append(_text(buf, *value))
        elif field == 7:
            _check_wire(wire, _LEN, "ListValue.shape")
            items.append(_shape(buf, *value))
        elif field == 8:
            _check_wire(wire, _LEN, "ListValue.tensor")
            items.append(_tensor(buf, *value))
        else:
            scalars = _scalars(buf, wire, value, _LIST_WIRES[field], f"ListValue field {field}")
            if field == 3:
                items.extend(_signed64(v) for v in scalars)
            elif field == 5:
                items.extend(bool(v) for v in scalars)
            else:
                items.extend(scalars)
    return items


def _text(buf: bytes, start: int, end: int) -> str | bytes:
    raw = buf[start:end]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


def _shape(buf: bytes, start: int, end: int) -> tuple[int, ...] | None:
    dims = []
    for field, wire, value in _fields(buf, start, end):
        if field == 2:
            _check_wire(wire, _LEN, "TensorShapeProto.dim")
            size = 0
            for dim_field, dim_wire, dim_value in _fields(buf, *value):
                if dim_field == 1:
                    _check_wire(dim_wire, _VARINT, "Dim.size")
                    size = _signed64(dim_value)
            dims.append(size)
        elif field == 3:
            _check_wire(wire, _VARINT, "TensorShapeProto.unknown_rank")
            if value:
                return None
    return tuple(dims)


def _tensor(buf: bytes, start: int, end: int) -> np.ndarray:
    dtype_enum = 0
    shape: tuple[int, ...] | None = ()
    content = None
    values: dict[int, list] = {}
    for field, wire, value in _fields(buf, start, end):
        if field == 1:
            _check_wire(wire, _VARINT, "TensorProto.dtype")
            dtype_enum = value
        elif field == 2:
            _check_wire(wire, _LEN, "TensorProto.tensor_shape")
            shape = _shape(buf, *value)
        elif field == 4:
            _check_wire(wire, _LEN, "TensorProto.tensor_content")
            content = value
        elif field in _VALUE_WIRES:
            values.setdefault(field, []).extend(
                _scalars(buf, wire, value, _VALUE_WIRES[field], f"TensorProto field {field}")
            )
    if dtype_enum not in _TENSOR_DTYPES:
        raise GraphFormatError(f"unsupported tensor dtype enum {dtype_enum}")
    if shape is None or any(d < 0 for d in shape):
        raise GraphFormatError(f"tensor has a partially unknown shape {shape}")
    dtype_name, value_field, value_dtype = _TENSOR_DTYPES[dtype_enum]
    dtype = np.dtype(dtype_name)
    count = math.prod(shape)
    if content is not None and content[1] > content[0] and dtype.kind != "O":
        nbytes = content[1] - content[0]
        if nbytes != count * dtype.itemsize:
            raise GraphFormatError(
                f"tensor_content has {nbytes} bytes, shape {shape} of {dtype} needs {count * dtype.itemsize}"
            )
        # One copy out of the file buffer into a native-order, writable array.
        flat = np.frombuffer(buf, dtype=dtype, count=count, offset=content[0]).astype(dtype.newbyteorder("="))
        return flat.reshape(shape)
    return _from_values(values.get(value_field, []), value_field, dtype, np.dtype(value_dtype), count).reshape(shape)


def _from_values(items: list, field: int, dtype: np.dtype, value_dtype: np.dtype, count: int) -> np.ndarray:
    if field in _SIGNED_VALUE_FIELDS:
        items = [_signed64(v) for v in items]
    try:
        flat = np.array(items, dtype=value_dtype).view(dtype)
    except (ValueError, OverflowError) as exc:
        raise GraphFormatError(f"bad values for a {dtype} tensor: {exc}") from None
    flat = flat.astype(dtype.newbyteorder("="), copy=False)
    if flat.size > count:
        raise GraphFormatError(f"tensor has {flat.size} values but its shape holds {count}")
    # TensorFlow fills a tensor from a short value list by repeating the last value, or zeros when there is none.
    fill = flat[-1] if flat.size else (b"" if dtype.kind == "O" else 0)
    try:
        filled = np.full(count, fill, dtype=flat.dtype)
    except (ValueError, OverflowError, MemoryError):
        raise GraphFormatError(f"tensor of {count} elements is too large to allocate") from None
    filled[: flat.size] = flat
    return filled
