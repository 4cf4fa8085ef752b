"""Reader for dlib's binary serialization of DNNs (`dlib::serialize`), without dlib.

dlib writes a network as nested records: `add_loss_layer` (version 1, loss details, subnet),
then for every layer from the output down to the input only the wrapper's version int
(`add_layer` writes its subnet *before* its own details), then the input layer, then the
layer details from the input back up to the output. The byte stream is therefore not
self-describing: the caller passes the expected layer chain and every name, version and
shape read is checked against it, so a wrong or damaged file fails with a ValueError that
names the byte offset instead of loading garbage.

Encodings (dlib/serialize.h, dlib/dnn/tensor.h): integers are a control byte (low nibble =
byte count, 0x80 = negative) followed by little-endian magnitude bytes; strings are an int
length plus raw bytes; bools are the characters '0'/'1'; floats and doubles are an int64
mantissa and an int16 exponent (value = mantissa * 2**exponent); tensors (version 2) are
num_samples, k, nr, nc then raw little-endian float32 data; alias tensors (version 1) are
only the four dims.
"""
from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

# float_details exponents that encode non-finite values (dlib/float_details.h).
_SPECIAL_EXPONENTS = {32000: math.inf, 32001: -math.inf, 32002: math.nan}


class DlibReader:
    """Cursor over a dlib-serialized byte string; every read checks bounds and format."""

    def __init__(self, data: bytes, source: str) -> None:
        self.data = memoryview(data)
        self.source = source
        self.pos = 0

    def error(self, message: str, at: int | None = None) -> ValueError:
        """A ValueError naming the file and the byte offset where parsing failed."""
        return ValueError(f"{self.source}: offset {self.pos if at is None else at}: {message}")

    def take(self, n: int, what: str) -> memoryview:
        """The next n bytes; a ValueError when the file ends first (truncated file)."""
        if n < 0 or self.pos + n > len(self.data):
            raise self.error(f"file ends while reading {what} ({n} bytes needed, "
                             f"{len(self.data) - self.pos} left): truncated or not a dlib file")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def int(self, what: str = "integer") -> int:
        """A dlib variable-length integer (ser_helper::pack_int)."""
        start = self.pos
        control = self.take(1, what)[0]
        size = control & 0x0F
        if control & 0x70 or not 1 <= size <= 8:
            raise self.error(f"bad integer control byte 0x{control:02x} for {what}", start)
        value = int.from_bytes(self.take(size, what), "little")
        return -value if control & 0x80 else value

    def string(self, what: str = "string") -> str:
        """A length-prefixed string."""
        start = self.pos
        length = self.int(f"length of {what}")
        raw = bytes(self.take(length, what))
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise self.error(f"{what} is not ASCII: {raw[:40]!r}", start) from None

    def bool(self, what: str = "bool") -> bool:
        """A bool, stored as the character '0' or '1'."""
        start = self.pos
        byte = bytes(self.take(1, what))
        if byte not in (b"0", b"1"):
            raise self.error(f"expected '0' or '1' for {what}, found {byte!r}", start)
        return byte == b"1"

    def float(self, what: str = "float") -> float:
        """A float or double stored as mantissa and exponent (float_details)."""
        mantissa = self.int(f"mantissa of {what}")
        exponent = self.int(f"exponent of {what}")
        if exponent in _SPECIAL_EXPONENTS:
            return _SPECIAL_EXPONENTS[exponent]
        return math.ldexp(mantissa, exponent)

    def version(self, what: str, allowed: Collection[int]) -> int:
        """An int version tag that must be one of `allowed`."""
        start = self.pos
        found = self.int(f"version of {what}")
        if found not in allowed:
            raise self.error(f"unexpected version {found} of {what} (expected one of "
                             f"{sorted(allowed)})", start)
        return found

    def expect_string(self, what: str, expected: str) -> None:
        """A record name string that must equal `expected` (dlib's per-layer version tag)."""
        start = self.pos
        found = self.string(what)
        if found != expected:
            raise self.error(f"expected {what} record {expected!r}, found {found!r}", start)

    def expect_int(self, what: str, expected: int) -> None:
        """An int field that must equal the architecture's value."""
        start = self.pos
        found = self.int(what)
        if found != expected:
            raise self.error(f"{what} is {found}, expected {expected}", start)

    def tensor(self, what: str = "tensor") -> np.ndarray:
        """A tensor as a read-only float32 array of shape (num_samples, k, nr, nc)."""
        self.version(what, {2})
        dims = tuple(self.int(f"dimension of {what}") for _ in range(4))
        start = self.pos
        if min(dims) < 0:
            raise self.error(f"negative dimension {dims} of {what}", start)
        count = math.prod(dims)
        raw = self.take(4 * count, f"data of {what} {dims}")
        return np.frombuffer(raw, dtype="<f4").reshape(dims)

    def alias_tensor(self, what: str) -> tuple[int, int, int, int]:
        """An alias_tensor: only the (num_samples, k, nr, nc) of a view into params."""
        self.version(what, {1})
        n, k, nr, nc = (self.int(f"dimension of {what}") for _ in range(4))
        return n, k, nr, nc

    def expect_alias(self, what: str, expected: tuple[int, int, int, int]) -> None:
        """An alias_tensor whose dims must equal `expected`."""
        start = self.pos
        found = self.alias_tensor(what)
        if found != expected:
            raise self.error(f"{what} has shape {found}, expected {expected}", start)

    def expect_end(self) -> None:
        """Everything was consumed; trailing bytes mean the file is not the expected network."""
        if self.pos != len(self.data):
            raise self.error(f"{len(self.data) - self.pos} unexpected bytes after the network")


def _params(r: DlibReader, what: str, size: int) -> np.ndarray:
    """A layer's flat parameter tensor, which must hold exactly `size` floats."""
    start = r.pos
    params = r.tensor(f"{what} params")
    if params.size != size:
        raise r.error(f"{what} params hold {params.size} floats, expected {size}", start)
    return params.reshape(-1)


def _skip_multipliers(r: DlibReader, what: str, names: Sequence[str]) -> None:
    """Training-only learning-rate / weight-decay multipliers (doubles)."""
    for name in names:
        r.float(f"{what} {name}")


@dataclass(frozen=True)
class Con:
    """`con<filters, size, size, stride, stride>` (con_4). Padding is dlib's default: 0 when
    stride != 1, else size // 2. Returns weight (filters, in, size, size), bias (filters,)."""

    in_channels: int
    filters: int
    size: int
    stride: int
    key: str
    wrapper: ClassVar[str] = "add_layer"

    @property
    def padding(self) -> int:
        return 0 if self.stride != 1 else self.size // 2

    def read(self, r: DlibReader) -> dict[str, np.ndarray]:
        r.expect_string("con", "con_4")
        shape = (self.filters, self.in_channels, self.size, self.size)
        n = math.prod(shape)
        params = _params(r, "con", n + self.filters)
        for field, want in (("num_filters", self.filters), ("nr", self.size), ("nc", self.size),
                            ("stride_y", self.stride), ("stride_x", self.stride),
                            ("padding_y", self.padding), ("padding_x", self.padding)):
            r.expect_int(f"con {field}", want)
        r.expect_alias("con filters", shape)
        r.expect_alias("con biases", (1, self.filters, 1, 1))
        _skip_multipliers(r, "con", ("learning_rate", "weight_decay", "bias_learning_rate",
                                     "bias_weight_decay"))
        return {"weight": params[:n].reshape(shape), "bias": params[n:]}


@dataclass(frozen=True)
class Affine:
    """`affine` in CONV_MODE: y = x * gamma[c] + beta[c] (a frozen batch norm).
    Returns weight = gamma (channels,), bias = beta (channels,)."""

    channels: int
    key: str
    wrapper: ClassVar[str] = "add_layer"

    def read(self, r: DlibReader) -> dict[str, np.ndarray]:
        r.expect_string("affine", "affine_")
        params = _params(r, "affine", 2 * self.channels)
        r.expect_alias("affine gamma", (1, self.channels, 1, 1))
        r.expect_alias("affine beta", (1, self.channels, 1, 1))
        r.expect_int("affine mode (0 = CONV_MODE)", 0)
        return {"weight": params[:self.channels], "bias": params[self.channels:]}


@dataclass(frozen=True)
class FcNoBias:
    """`fc_no_bias<outputs>` (fc_2). dlib computes x (N, inputs) @ W with W stored
    (inputs, outputs); returned as weight (outputs, inputs), the nn.Linear layout."""

    inputs: int
    outputs: int
    key: str
    wrapper: ClassVar[str] = "add_layer"

    def read(self, r: DlibReader) -> dict[str, np.ndarray]:
        r.expect_string("fc", "fc_2")
        r.expect_int("fc num_outputs", self.outputs)
        r.expect_int("fc num_inputs", self.inputs)
        params = _params(r, "fc", self.inputs * self.outputs)
        r.expect_alias("fc weights", (self.inputs, self.outputs, 1, 1))
        r.alias_tensor("fc biases")  # unused (empty) alias in FC_NO_BIAS mode
        r.expect_int("fc bias mode (1 = FC_NO_BIAS)", 1)
        _skip_multipliers(r, "fc", ("learning_rate", "weight_decay", "bias_learning_rate",
                                    "bias_weight_decay"))
        return {"weight": params.reshape(self.inputs, self.outputs).T}


@dataclass(frozen=True)
class Pool:
    """`max_pool` / `avg_pool` (record "<kind>_2"); size 0 means the whole input
    (`*_pool_everything`). Padding follows dlib's default like Con."""

    kind: str  # "max" or "avg"
    size: int
    stride: int
    wrapper: ClassVar[str] = "add_layer"

    def read(self, r: DlibReader) -> dict[str, np.ndarray]:
        r.expect_string(f"{self.kind}_pool", f"{self.kind}_pool_2")
        padding = 0 if self.stride != 1 else self.size // 2
        for field, want in (("nr", self.size), ("nc", self.size), ("stride_y", self.stride),
                            ("stride_x", self.stride), ("padding_y", padding),
                            ("padding_x", padding)):
            r.expect_int(f"{self.kind}_pool {field}", want)
        return {}


@dataclass(frozen=True)
class Relu:
    """`relu` (no parameters)."""

    wrapper: ClassVar[str] = "add_layer"

    def read(self, r: DlibReader) -> dict[str, np.ndarray]:
        r.expect_string("relu", "relu_")
        return {}


@dataclass(frozen=True)
class AddPrev:
    """`add_prev<tagN>`: adds the tagged output (the tag id is not serialized)."""

    tag: int
    wrapper: ClassVar[str] = "add_layer"

    def read(self, r: DlibReader) -> dict[str, np.ndarray]:
        r.expect_string("add_prev", "add_prev_")
        return {}


@dataclass(frozen=True)
class Tag:
    """`tagN`: serialized as a version int only."""

    id: int
    wrapper: ClassVar[str] = "add_tag_layer"


@dataclass(frozen=True)
class Skip:
    """`skipN`: serialized as a version int only."""

    tag: int
    wrapper: ClassVar[str] = "add_skip_layer"


Layer = Con | Affine | FcNoBias | Pool | Relu | AddPrev | Tag | Skip


@dataclass(frozen=True)
class ParsedNetwork:
    """What a dlib network file holds that inference needs.

    layers: (layer spec, its arrays) from the input side to the output, as passed in.
    input_mean: per-channel (R, G, B) mean of input_rgb_image_sized.
    loss: loss_metric parameters (margin, distance threshold), for reference.
    """

    layers: list[tuple[Layer, dict[str, np.ndarray]]]
    input_mean: tuple[float, float, float]
    input_size: int
    loss: dict[str, float]


def _read_loss_metric(r: DlibReader) -> dict[str, float]:
    r.expect_string("loss", "loss_metric_2")
    return {"margin": r.float("loss_metric margin"),
            "distance_threshold": r.float("loss_metric dist_thresh")}


def _read_input_rgb_image_sized(r: DlibReader, size: int) -> tuple[float, float, float]:
    r.expect_string("input layer", "input_rgb_image_sized")
    mean = (r.float("avg_red"), r.float("avg_green"), r.float("avg_blue"))
    r.expect_int("input rows", size)
    r.expect_int("input columns", size)
    return mean


def _read_layer_state(r: DlibReader, version: int, on_input: bool) -> None:
    """add_layer's bookkeeping after the details: 3 bools and cached tensors (usually empty)."""
    for flag in ("this_layer_setup_called", "gradient_input_is_stale",
                 "get_output_and_gradient_input_disabled"):
        r.bool(flag)
    r.tensor("x_grad")
    r.tensor("cached_output")
    if on_input:
        r.tensor("grad_final")
        if version == 3:
            r.int("sample_expansion_factor")
    elif version == 2:
        r.tensor("params_grad")


def read_metric_network(data: bytes, source: str, layers: Sequence[Layer],
                        input_size: int) -> ParsedNetwork:
    """Parse `loss_metric<layers...<input_rgb_image_sized<input_size>>>`.

    layers: the network from the input side (the layer right on the input layer, which must be
    an add_layer) to the output, e.g. [Con, Affine, Relu, ..., FcNoBias]. Raises ValueError
    naming the offset at the first record that differs from this architecture.
    """
    if not layers or layers[0].wrapper != "add_layer":
        raise ValueError("the layer on the input must be a computational layer (add_layer)")
    r = DlibReader(data, source)
    r.version("add_loss_layer", {1})
    loss = _read_loss_metric(r)
    versions = []
    for depth, layer in enumerate(reversed(layers)):  # headers: output side first
        name = f"{layer.wrapper}<{type(layer).__name__}> (depth {depth})"
        if layer.wrapper != "add_layer":
            versions.append(r.version(name, {1}))
        elif depth == len(layers) - 1:  # add_layer directly on the input layer
            versions.append(r.version(name, {2, 3}))
        else:
            versions.append(r.version(name, {1, 2}))
    versions.reverse()
    input_mean = _read_input_rgb_image_sized(r, input_size)
    parsed: list[tuple[Layer, dict[str, np.ndarray]]] = []
    for index, (layer, version) in enumerate(zip(layers, versions)):  # details: input first
        if layer.wrapper != "add_layer":
            parsed.append((layer, {}))
            continue
        arrays = layer.read(r)
        _read_layer_state(r, version, on_input=index == 0)
        parsed.append((layer, arrays))
    r.expect_end()
    return ParsedNetwork(parsed, input_mean, input_size, loss)
