"""Read a frozen TensorFlow GraphDef (.pb) without TensorFlow: nodes and constant tensors.

A frozen graph is one protobuf message (tensorflow/core/framework/graph.proto). Of it we
need only each node's name, op, inputs and the attributes that hold constants and layer
settings, so this reads the protobuf wire format directly (~100 lines) instead of pulling
in TensorFlow or a package that ships TensorFlow's compiled protos (tensorboard: tens of
MB, and its proto modules are internal API). Only the field numbers below are used; any
other field is skipped, as protobuf readers do.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

#: TensorFlow DataType enum -> numpy dtype (the types a frozen vision graph holds).
DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 9: np.int64, 10: np.bool_}


@dataclass
class Node:
    """One NodeDef: name, op, input names (":0" and control "^" marks kept as written) and
    attributes decoded to Python values (numbers, strings, lists, numpy arrays)."""

    name: str
    op: str
    inputs: list[str] = field(default_factory=list)
    attrs: dict[str, object] = field(default_factory=dict)


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return result, pos


def _fields(buf: memoryview) -> Iterator[tuple[int, int | memoryview]]:
    """(field number, value) of a message: ints for varints, memoryviews for the rest."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + length], pos + length
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire} (field {number})")
        yield number, value
    if pos != end:
        raise ValueError("truncated protobuf message")


def _shape(buf: memoryview) -> tuple[int, ...]:
    """TensorShapeProto: repeated dim (2) {size (1)}."""
    dims = []
    for number, dim in _fields(buf):
        if number == 2:
            size = next((v for n, v in _fields(dim) if n == 1), 0)
            dims.append(size - (1 << 64) if size >= 1 << 63 else size)  # int64: -1 = unknown
    return tuple(dims)


def _tensor(buf: memoryview) -> np.ndarray:
    """TensorProto: dtype (1), tensor_shape (2), tensor_content (4) or typed values
    (float_val 5, int_val 7; a single value fills the whole shape)."""
    dtype, shape, content, floats, ints = 1, (), None, [], []
    for number, value in _fields(buf):
        if number == 1:
            dtype = value
        elif number == 2:
            shape = _shape(value)
        elif number == 4:
            content = bytes(value)
        elif number == 5:  # packed (length-delimited) or single fixed32
            floats.extend(struct.unpack(f"<{len(value) // 4}f", value))
        elif number == 7:
            ints.extend([value] if isinstance(value, int) else _packed_varints(value))
    if dtype not in DTYPES:
        raise ValueError(f"unsupported tensor dtype {dtype}")
    np_dtype = DTYPES[dtype]
    if content is not None:
        return np.frombuffer(content, dtype=np.dtype(np_dtype).newbyteorder("<")).reshape(shape).copy()
    values = np.array(floats or ints, dtype=np_dtype)
    if values.size <= 1 and shape:  # one value (or none: zero) stands for every element
        return np.full(shape, values[0] if values.size else 0, np_dtype)
    return values.reshape(shape)


def _packed_varints(buf: memoryview) -> list[int]:
    out, pos = [], 0
    while pos < len(buf):
        value, pos = _varint(buf, pos)
        out.append(value)
    return out


def _attr(buf: memoryview) -> object:
    """AttrValue: list (1), s (2), i (3), f (4), b (5), type (6), shape (7), tensor (8)."""
    for number, value in _fields(buf):
        if number == 1:  # strings (2) or ints (3, packed or not)
            items: list[object] = []
            for n, v in _fields(value):
                if n == 2:
                    items.append(bytes(v).decode())
                elif n == 3:
                    items.extend([v] if isinstance(v, int) else _packed_varints(v))
            return items
        if number == 2:
            return bytes(value).decode("utf-8", "replace")
        if number in (3, 6):
            return value
        if number == 4:
            return struct.unpack("<f", value)[0]
        if number == 5:
            return bool(value)
        if number == 7:
            return _shape(value)
        if number == 8:
            return _tensor(value)
    return None


def _node(buf: memoryview) -> Node:
    """NodeDef: name (1), op (2), input (3), attr (5: map entries key 1, value 2)."""
    node = Node("", "")
    for number, value in _fields(buf):
        if number == 1:
            node.name = bytes(value).decode()
        elif number == 2:
            node.op = bytes(value).decode()
        elif number == 3:
            node.inputs.append(bytes(value).decode())
        elif number == 5:
            entry = dict(_fields(value))
            node.attrs[bytes(entry[1]).decode()] = _attr(entry[2]) if 2 in entry else None
    return node


def read_graphdef(path: str | Path) -> dict[str, Node]:
    """Nodes of the frozen GraphDef file at `path`, by name, in file order.

    Raises ValueError (one line naming the file) when it is not a GraphDef.
    """
    data = memoryview(Path(path).read_bytes())
    try:
        nodes = [_node(value) for number, value in _fields(data) if number == 1]
    except (ValueError, IndexError, struct.error, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not a readable TensorFlow GraphDef: {err}") from None
    if not nodes or not all(n.name and n.op for n in nodes):
        raise ValueError(f"{path} is not a TensorFlow GraphDef (no named nodes)")
    return {n.name: n for n in nodes}
