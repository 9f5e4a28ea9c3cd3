"""Store pruned weights compactly, and run them with sparse kernels.

Han, Mao & Dally, "Deep Compression: Compressing Deep Neural Networks with Pruning,
Trained Quantization and Huffman Coding", arXiv 1510.00149 (section 2: a pruned layer is
stored in compressed sparse row form, so its size follows the nonzeros, not the shape).

A pruned model whose weights are mostly zero is no smaller when saved densely (each zero
still costs 4 bytes) and no faster with dense kernels (each zero is still multiplied).
Both costs only shrink when the format changes. On disk, a tensor of ``N`` entries of
``b`` bytes with ``Z`` nonzeros costs (header excluded)

    dense    N * b
    bitmask  N / 8 + Z * b                        one bit per entry marks the nonzeros
    csr      (rows + 1) * 4 + Z * i + Z * b       row pointers, column indices, values
    coo      Z * i + Z * b                        flat indices, values

with ``i`` the bytes of the smallest unsigned integer (1, 2 or 4) that holds the largest
index, so the bitmask wins from about ``b / (b + 1/8)`` sparsity down, the index formats
at very high sparsity. Deep Compression goes further (relative 4-bit indices, shared
weights, Huffman coding); this module keeps the plain formats so each byte is explained.
In compute, :class:`SparseConv2d` and :class:`SparseLinear` multiply a torch sparse CSR
weight: work follows the nonzeros, but irregular access makes them slower than dense GEMM
until sparsity is very high.

Taught in chapters/04_pruning.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import struct
import warnings
from collections.abc import Mapping
from typing import BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_bool
from .profile import _check_model
from .pruning import _copy as _copy_masked
from .pruning import _effective_weight

__all__ = [
    "FORMATS", "encode_tensor", "decode_tensor", "encoded_size", "size_formula",
    "save_sparse", "load_sparse", "sparse_size_bytes",
    "SparseConv2d", "SparseLinear", "to_sparse_kernels",
]

FORMATS = ("dense", "bitmask", "csr", "coo")
_FORMAT_CODES = {name: code for code, name in enumerate(FORMATS)}

# dtype -> (code in the header, integer dtype of the same width that carries its raw bits)
_DTYPES = {
    torch.float32: (0, torch.int32), torch.float16: (1, torch.int16),
    torch.bfloat16: (2, torch.int16), torch.float64: (3, torch.int64),
    torch.int64: (4, torch.int64), torch.int32: (5, torch.int32),
    torch.int16: (6, torch.int16), torch.int8: (7, torch.int8),
    torch.uint8: (8, torch.uint8), torch.bool: (9, torch.uint8),
}
_DTYPE_OF_CODE = {code: dtype for dtype, (code, _) in _DTYPES.items()}
_NUMPY = {torch.int64: np.int64, torch.int32: np.int32, torch.int16: np.int16,
          torch.int8: np.int8, torch.uint8: np.uint8}
_INDEX_TYPES = {1: np.uint8, 2: np.uint16, 4: np.uint32}
_MAX_U32 = 2**32 - 1

_MAGIC = b"LCSPARSE"
_VERSION = 1
_PREFIX = struct.Struct("<BI")  # version, length of the JSON index
_DIGEST = 32                     # SHA-256


# ---------------------------------------------------------------- argument checks

def _check_tensor(t: torch.Tensor, arg: str = "t") -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{arg} must be a torch.Tensor, got {type(t).__name__}")
    if t.layout != torch.strided:
        raise ValueError(f"{arg} must be a dense (strided) tensor, got layout {t.layout}")
    if t.dtype not in _DTYPES:
        raise ValueError(f"{arg}.dtype must be one of {sorted(str(d) for d in _DTYPES)}, "
                         f"got {t.dtype}")
    if t.dim() > 255 or any(s > _MAX_U32 for s in t.shape):
        raise ValueError(f"{arg} must have at most 255 dims of at most {_MAX_U32} entries, "
                         f"got shape {tuple(t.shape)}")


def _check_fmt(fmt: str, allow_auto: bool = True) -> None:
    allowed = FORMATS + ("auto",) if allow_auto else FORMATS
    if fmt not in allowed:
        raise ValueError(f"fmt must be one of {allowed}, got {fmt!r}")


# ---------------------------------------------------------------- one tensor

def _index_bytes(max_index: int) -> int:
    """Bytes of the smallest unsigned integer type that holds ``max_index``."""
    for nbytes in (1, 2, 4):
        if max_index < 2 ** (8 * nbytes):
            return nbytes
    raise ValueError(f"an index of {max_index} does not fit in uint32")


def _little(np_type: type) -> np.dtype:
    """The little-endian numpy dtype of ``np_type``: files read the same on any machine."""
    return np.dtype(np_type).newbyteorder("<")


def _rows(shape: tuple[int, ...]) -> int:
    """CSR rows: dim 0 of a >= 2-D tensor (a conv's output channels), else one row."""
    return shape[0] if len(shape) >= 2 else 1


def size_formula(numel: int, nnz: int, fmt: str, rows: int = 1, itemsize: int = 4,
                 ndim: int = 2) -> int:
    """Bytes of :func:`encode_tensor`'s output, from counts alone.

    Every blob starts with a ``4 + 4 * ndim`` byte header (format, dtype, ndim, index
    width, then each dim as uint32). After it, with ``N = numel``, ``Z = nnz``,
    ``b = itemsize``, ``C = N / rows`` columns and ``i(n)`` the bytes of the smallest of
    uint8/uint16/uint32 that holds ``n - 1``:

        dense    N * b
        bitmask  ceil(N / 8) + Z * b
        csr      (rows + 1) * 4 + Z * i(C) + Z * b     (row pointers are uint32)
        coo      Z * i(N) + Z * b
        auto     the smallest of the four

    Args:
        numel: entries of the tensor.
        nnz: entries that are not zero (``+0.0`` and ``-0.0`` both count as zero).
        fmt: one of :data:`FORMATS` or ``"auto"``.
        rows: CSR rows (dim 0 of a >= 2-D tensor, 1 for a 0-D or 1-D tensor); must divide
            ``numel``.
        itemsize: bytes per value (4 for float32, 2 for float16, 8 for int64, ...).
        ndim: dimensions of the tensor (its shape is in the header).

    Returns:
        The size in bytes, equal to ``len(encode_tensor(t, fmt))`` for a matching tensor.
    """
    for arg, value, low in (("numel", numel, 0), ("nnz", nnz, 0), ("rows", rows, 0),
                            ("ndim", ndim, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{arg} must be an int >= {low}, got {value!r}")
    _check_fmt(fmt)
    if nnz > numel:
        raise ValueError(f"nnz must be in [0, numel={numel}], got {nnz}")
    if ndim > 255:
        raise ValueError(f"ndim must be in [0, 255], got {ndim}")
    if itemsize not in (1, 2, 4, 8):
        raise ValueError(f"itemsize must be one of (1, 2, 4, 8), got {itemsize!r}")
    if (rows == 0 and numel > 0) or (rows > 0 and numel % rows):
        raise ValueError(f"rows must divide numel={numel} (and be > 0 when numel > 0), "
                         f"got {rows}")
    header = 4 + 4 * ndim
    cols = numel // rows if rows else 0
    sizes = {
        "dense": numel * itemsize,
        "bitmask": math.ceil(numel / 8) + nnz * itemsize,
        # indices exist only when nnz > 0, so i(.) of an empty tensor never matters
        "csr": (rows + 1) * 4 + nnz * (_index_bytes(max(cols - 1, 0)) + itemsize),
        "coo": nnz * (_index_bytes(max(numel - 1, 0)) + itemsize),
    }
    return header + (min(sizes.values()) if fmt == "auto" else sizes[fmt])


def _counts(t: torch.Tensor) -> dict[str, int]:
    """The arguments of :func:`size_formula` for tensor ``t``."""
    return {"numel": t.numel(), "nnz": int((t != 0).sum()), "rows": _rows(tuple(t.shape)),
            "itemsize": t.element_size(), "ndim": t.dim()}


def encoded_size(t: torch.Tensor, fmt: str) -> int:
    """``len(encode_tensor(t, fmt))``, computed with :func:`size_formula` (no encoding)."""
    _check_tensor(t)
    _check_fmt(fmt)
    return size_formula(fmt=fmt, **_counts(t))


def _smallest_format(t: torch.Tensor) -> str:
    counts = _counts(t)
    # min keeps the first of equal sizes, so ties go to the simplest format (dense first)
    return min(FORMATS, key=lambda fmt: size_formula(fmt=fmt, **counts))


def encode_tensor(t: torch.Tensor, fmt: str) -> bytes:
    """Serialize ``t`` into a self-describing blob in format ``fmt``.

    Layout: header (``uint8`` format, dtype, ndim, index width; ``uint32`` per dim), then
    the body; all little-endian, sizes as in :func:`size_formula`.

    - ``dense``: every value's raw bytes, row-major.
    - ``bitmask``: ``numpy.packbits`` of ``t != 0`` (one bit per entry, MSB first), then
      the nonzero values in row-major order.
    - ``csr``: ``t`` viewed as a ``(rows, numel / rows)`` matrix (rows = dim 0 for >= 2-D,
      1 otherwise); ``uint32`` row pointers, column indices, nonzero values.
    - ``coo``: flat row-major indices of the nonzeros, then their values.

    Only exact zeros are left out, and ``+0.0`` and ``-0.0`` are both zero: masking
    with ``weight_orig * weight_mask`` (``torch.nn.utils.prune``) turns a pruned negative
    weight into ``-0.0``, and keeping those would store about half the pruned entries.
    So the sparse formats decode ``-0.0`` as ``+0.0`` (``torch.equal`` still holds, as
    ``-0.0 == 0.0``, and no product with the weight changes value); every other value,
    NaN included, keeps its exact bits. ``dense`` keeps every bit, ``-0.0`` included.

    Args:
        t: a dense tensor of float32/16/64, bfloat16, int8/16/32/64, uint8 or bool, on any
            device (the blob is written from a CPU copy).
        fmt: one of :data:`FORMATS`, or ``"auto"`` for the smallest of them.

    Returns:
        The blob; :func:`decode_tensor` restores the tensor.
    """
    _check_tensor(t)
    _check_fmt(fmt)
    if fmt == "auto":
        fmt = _smallest_format(t)
    t = t.detach().cpu().contiguous()
    shape = tuple(t.shape)
    code, int_dtype = _DTYPES[t.dtype]
    # raw bit patterns, one integer per entry: numpy has no bfloat16, and bits are exact
    bits = t.reshape(-1).view(int_dtype).numpy().astype(_little(_NUMPY[int_dtype]))
    keep = (t.reshape(-1) != 0).numpy()  # +0.0 and -0.0 are both "pruned"
    index_bytes = 0
    if fmt == "dense":
        body = [bits.tobytes()]
    elif fmt == "bitmask":
        body = [np.packbits(keep).tobytes(), bits[keep].tobytes()]
    elif fmt == "csr":
        rows = _rows(shape)
        cols = t.numel() // rows if rows else 0
        index_bytes = _index_bytes(max(cols - 1, 0))
        matrix = keep.reshape(rows, cols)
        # row i's nonzeros are values[ptr[i]:ptr[i + 1]], so ptr is the running count
        ptr = np.concatenate([[0], np.cumsum(matrix.sum(axis=1))]).astype("<u4")
        columns = np.nonzero(matrix)[1].astype(_little(_INDEX_TYPES[index_bytes]))
        body = [ptr.tobytes(), columns.tobytes(), bits[keep].tobytes()]
    else:  # coo
        index_bytes = _index_bytes(max(t.numel() - 1, 0))
        flat = np.flatnonzero(keep).astype(_little(_INDEX_TYPES[index_bytes]))
        body = [flat.tobytes(), bits[keep].tobytes()]
    header = struct.pack(f"<4B{len(shape)}I", _FORMAT_CODES[fmt], code, len(shape),
                         index_bytes, *shape)
    return b"".join([header, *body])


def _corrupt(message: str) -> ValueError:
    return ValueError(f"corrupt tensor blob: {message}")


def decode_tensor(blob: bytes) -> torch.Tensor:
    """Restore the tensor that :func:`encode_tensor` wrote (a new CPU tensor).

    Every length and index is checked against the header, so a damaged blob raises
    ``ValueError`` instead of returning garbage.

    Args:
        blob: the bytes (``bytes``, ``bytearray`` or ``memoryview``).
    """
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise TypeError(f"blob must be bytes, got {type(blob).__name__}")
    data = bytes(blob)
    if len(data) < 4:
        raise _corrupt(f"{len(data)} bytes, shorter than the 4-byte header")
    fmt_code, dtype_code, ndim, index_bytes = struct.unpack_from("<4B", data)
    if fmt_code >= len(FORMATS) or dtype_code not in _DTYPE_OF_CODE:
        raise _corrupt(f"unknown format code {fmt_code} or dtype code {dtype_code}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise _corrupt(f"{len(data)} bytes, shorter than its {header}-byte header")
    shape = struct.unpack_from(f"<{ndim}I", data, 4)
    fmt, dtype = FORMATS[fmt_code], _DTYPE_OF_CODE[dtype_code]
    int_dtype = _DTYPES[dtype][1]
    value_type = _little(_NUMPY[int_dtype])
    numel, body = math.prod(shape), data[header:]
    bits = np.zeros(numel, dtype=_NUMPY[int_dtype])  # pruned entries decode as bit zero: +0.0

    def values(offset: int, count: int) -> np.ndarray:
        if len(body) != offset + count * value_type.itemsize:
            raise _corrupt(f"{fmt} body has {len(body)} bytes, expected "
                           f"{offset + count * value_type.itemsize}")
        return np.frombuffer(body, dtype=value_type, count=count, offset=offset)

    if fmt == "dense":
        bits[:] = values(0, numel)
    elif fmt == "bitmask":
        mask_bytes = math.ceil(numel / 8)
        if len(body) < mask_bytes:
            raise _corrupt(f"bitmask needs {mask_bytes} bytes, body has {len(body)}")
        keep = np.unpackbits(np.frombuffer(body, np.uint8, mask_bytes), count=numel).astype(bool)
        bits[keep] = values(mask_bytes, int(keep.sum()))
    else:  # csr and coo: the number of nonzeros follows from the body length
        if index_bytes not in _INDEX_TYPES:
            raise _corrupt(f"index width {index_bytes} is not one of (1, 2, 4)")
        index_type = _little(_INDEX_TYPES[index_bytes])
        rows = _rows(shape)
        start = (rows + 1) * 4 if fmt == "csr" else 0
        nnz, rest = divmod(len(body) - start, index_bytes + value_type.itemsize)
        if len(body) < start or rest:
            raise _corrupt(f"{fmt} body of {len(body)} bytes is not a whole number of entries")
        index = np.frombuffer(body, index_type, nnz, start).astype(np.int64)
        if fmt == "csr":
            cols = numel // rows if rows else 0
            ptr = np.frombuffer(body, "<u4", rows + 1).astype(np.int64)
            if ptr[0] != 0 or ptr[-1] != nnz or (np.diff(ptr) < 0).any() or (index >= cols).any():
                raise _corrupt("csr row pointers or column indices out of range")
            # row of each nonzero, from how many each row holds
            index = np.repeat(np.arange(rows), np.diff(ptr)) * cols + index
        elif nnz and index.max() >= numel:
            raise _corrupt("coo index out of range")
        bits[index] = values(start + nnz * index_bytes, nnz)
    return torch.from_numpy(bits).view(dtype).reshape(shape)


# ---------------------------------------------------------------- a whole state dict

def _state_of(model_or_state_dict: nn.Module | Mapping[str, torch.Tensor]
              ) -> dict[str, torch.Tensor]:
    """The tensors to store, with ``torch.nn.utils.prune`` masks folded into the weights."""
    if isinstance(model_or_state_dict, nn.Module):
        state = model_or_state_dict.state_dict()
    elif isinstance(model_or_state_dict, Mapping):
        state = model_or_state_dict
    else:
        raise TypeError(f"model_or_state_dict must be an nn.Module or a mapping of name to "
                        f"tensor, got {type(model_or_state_dict).__name__}")
    for name, value in state.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise TypeError(f"state dict entries must be str -> torch.Tensor, got {name!r} -> "
                            f"{type(value).__name__}")
    out = {}
    for name, value in state.items():
        base = name[:-len("_orig")]
        if name.endswith("_mask") and name[:-len("_mask")] + "_orig" in state:
            continue  # folded into the weight below
        if name.endswith("_orig") and base + "_mask" in state:
            # what prune's forward pre-hook computes, stored under the plain name, so the
            # file holds the pruned model and loads into an unpruned copy of the architecture
            out[base] = value.detach() * state[base + "_mask"].detach()
        else:
            out[name] = value.detach()
    return out


def _pack(state: dict[str, torch.Tensor], fmt: str) -> bytes:
    blobs = [encode_tensor(value, fmt) for value in state.values()]
    index = json.dumps([[name, len(blob)] for name, blob in zip(state, blobs)],
                       separators=(",", ":")).encode()
    content = b"".join([_MAGIC, _PREFIX.pack(_VERSION, len(index)), index, *blobs])
    # the checksum makes a flipped or missing byte an error, not silently wrong weights
    return content + hashlib.sha256(content).digest()


def save_sparse(model_or_state_dict: nn.Module | Mapping[str, torch.Tensor],
                path_or_file: str | os.PathLike | BinaryIO, fmt: str = "auto") -> int:
    """Write every tensor of a state dict, each encoded with :func:`encode_tensor`.

    File layout: ``b"LCSPARSE"``, ``uint8`` version, ``uint32`` length of a JSON index
    ``[[name, blob bytes], ...]``, the index, the blobs in index order, and the SHA-256 of
    everything before it (32 bytes). Buffers (batch-norm statistics, the int64
    ``num_batches_tracked``) are stored like weights. A layer pruned with
    ``torch.nn.utils.prune`` (keys ``weight_orig`` and ``weight_mask``) is stored as one
    ``weight = weight_orig * weight_mask``: the file holds the pruned model, loadable into
    an unpruned copy of the architecture (the mask is implied by the zeros).

    Args:
        model_or_state_dict: a model (its ``state_dict()`` is saved) or a state dict.
        path_or_file: a path, or a binary file object open for writing.
        fmt: one of :data:`FORMATS` for every tensor, or ``"auto"`` (default) for the
            smallest format of each tensor.

    Returns:
        Bytes written.
    """
    _check_fmt(fmt)
    data = _pack(_state_of(model_or_state_dict), fmt)
    if hasattr(path_or_file, "write"):
        path_or_file.write(data)
    elif isinstance(path_or_file, (str, os.PathLike)):
        with open(path_or_file, "wb") as handle:
            handle.write(data)
    else:
        raise TypeError(f"path_or_file must be a path or a binary file, "
                        f"got {type(path_or_file).__name__}")
    return len(data)


def load_sparse(path_or_file: str | os.PathLike | BinaryIO) -> dict[str, torch.Tensor]:
    """Read a file written by :func:`save_sparse` into a state dict of CPU tensors.

    Raises:
        ValueError: not such a file (wrong magic or version), or its checksum does not
            match (a damaged or truncated file), or its index is inconsistent.
    """
    if hasattr(path_or_file, "read"):
        data = path_or_file.read()
    elif isinstance(path_or_file, (str, os.PathLike)):
        with open(path_or_file, "rb") as handle:
            data = handle.read()
    else:
        raise TypeError(f"path_or_file must be a path or a binary file, "
                        f"got {type(path_or_file).__name__}")
    start = len(_MAGIC) + _PREFIX.size
    if len(data) < start + _DIGEST or not data.startswith(_MAGIC):
        raise ValueError(f"not a lightcnn sparse file: expected {_MAGIC!r} and at least "
                         f"{start + _DIGEST} bytes, got {data[:len(_MAGIC)]!r} and "
                         f"{len(data)} bytes")
    content, digest = data[:-_DIGEST], data[-_DIGEST:]
    if hashlib.sha256(content).digest() != digest:
        raise ValueError("sparse file checksum mismatch: the file is corrupted or truncated "
                         f"({len(data)} bytes)")
    version, index_len = _PREFIX.unpack_from(content, len(_MAGIC))
    if version != _VERSION:
        raise ValueError(f"sparse file version {version} is not supported (expected {_VERSION})")
    try:
        index = json.loads(content[start:start + index_len])
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"sparse file index is not valid JSON: {error}") from None
    offset, state = start + index_len, {}
    for name, nbytes in index:
        state[name] = decode_tensor(content[offset:offset + nbytes])
        offset += nbytes
    if offset != len(content):
        raise ValueError(f"sparse file index covers {offset} bytes, the file holds {len(content)}")
    return state


def sparse_size_bytes(model: nn.Module, fmt: str = "auto", compressed: bool = False) -> int:
    """Bytes of :func:`save_sparse`'s file for ``model``; with ``compressed``, after gzip -9.

    The sparse counterpart of :func:`lightcnn.profile.model_size_bytes`. Unlike
    ``torch.save``, a pruned layer costs one folded weight, not ``weight_orig`` plus
    ``weight_mask``.
    """
    _check_model(model)
    _check_fmt(fmt)
    check_bool("compressed", compressed)
    data = _pack(_state_of(model), fmt)
    return len(gzip.compress(data, compresslevel=9, mtime=0)) if compressed else len(data)


# ---------------------------------------------------------------- sparse kernels

def _csr_parts(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row pointers, column indices and values of a dense 2-D tensor's nonzeros."""
    with warnings.catch_warnings():  # torch warns once per process that CSR is "beta"
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        csr = matrix.detach().to_sparse_csr()
    return csr.crow_indices(), csr.col_indices(), csr.values()


def _check_weight_bias(weight: torch.Tensor, bias: torch.Tensor | None, layout: str) -> None:
    """A sparse layer's weight must have ``layout``'s dims; its bias one entry per output."""
    _check_tensor(weight, "weight")
    ndim = int(layout[0])
    if weight.dim() != ndim:
        raise ValueError(f"weight must be {layout}, got shape {tuple(weight.shape)}")
    if bias is not None and (not isinstance(bias, torch.Tensor)
                             or tuple(bias.shape) != (weight.shape[0],)):
        got = tuple(bias.shape) if isinstance(bias, torch.Tensor) else repr(bias)
        raise ValueError(f"bias must be None or a tensor of shape ({weight.shape[0]},), "
                         f"got {got}")


class _SparseMatrix(nn.Module):
    """Holds a ``(rows, cols)`` CSR weight as three plain buffers (row pointers, column
    indices, values), so ``deepcopy``, ``state_dict`` and ``.to()`` work as for any module
    (a sparse CSR buffer breaks ``deepcopy``); the CSR tensor is rebuilt, without copying,
    in each forward pass."""

    def _set_weight(self, matrix: torch.Tensor, bias: torch.Tensor | None) -> None:
        crow, col, values = _csr_parts(matrix)
        self.register_buffer("crow_indices", crow)
        self.register_buffer("col_indices", col)
        self.register_buffer("values", values)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.weight_shape = tuple(matrix.shape)

    def weight_csr(self) -> torch.Tensor:
        """The weight as a torch sparse CSR tensor."""
        return torch.sparse_csr_tensor(self.crow_indices, self.col_indices, self.values,
                                       size=self.weight_shape, check_invariants=False)

    @property
    def nnz(self) -> int:
        """Stored nonzeros of the weight."""
        return self.values.numel()

    def _density(self) -> str:
        return f"nnz={self.nnz}, density={self.nnz / max(math.prod(self.weight_shape), 1):.3f}"


class SparseConv2d(_SparseMatrix):
    """A ``groups=1`` convolution as im2col followed by a sparse x dense matrix product.

    ``F.unfold`` copies every receptive field into a column, ``(B, C_in, H, W) ->
    (B, C_in*kH*kW, L)`` with ``L = H_out * W_out``, then the CSR weight
    ``(C_out, C_in*kH*kW)`` multiplies those columns, touching only the nonzeros:
    ``MACs = nnz * L`` per image instead of ``C_out * C_in*kH*kW * L``.

    At moderate sparsity (say below 90-95%) this is usually *slower* on a CPU than
    ``nn.Conv2d``, and the chapter measures it: each nonzero's column index sends the
    kernel to a different row of the input columns (irregular memory access, no reuse of
    cache lines or registers); the dense GEMM behind ``nn.Conv2d`` streams contiguous
    tiles through vectorised (SIMD) multiply-adds that a sparse kernel cannot use; and
    ``F.unfold`` materialises ``kH*kW`` copies of the input, memory traffic that the
    dense path's fused kernels largely avoid. Fewer MACs only win once they are few.

    For inference only: the weight is a buffer and takes no gradient.

    Args:
        weight: dense ``(C_out, C_in, kH, kW)`` weight; its exact zeros are left out.
        bias: ``(C_out,)`` or None.
        stride, padding, dilation: as for ``nn.Conv2d`` (ints or pairs; zero padding).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None,
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
                 dilation: int | tuple[int, int] = 1):
        super().__init__()
        _check_weight_bias(weight, bias, "4-D (C_out, C_in, kH, kW)")
        pairs = {}
        for arg, value, low in (("stride", stride, 1), ("padding", padding, 0),
                                ("dilation", dilation, 1)):
            pair = (value, value) if isinstance(value, int) else \
                tuple(value) if isinstance(value, (tuple, list)) else (value,)
            if len(pair) != 2 or any(not isinstance(v, int) or v < low for v in pair):
                raise ValueError(f"{arg} must be an int >= {low} or a pair of them, got {value!r}")
            pairs[arg] = pair
        self.out_channels, self.in_channels, *kernel = weight.shape
        self.kernel_size = tuple(kernel)
        self.stride, self.padding, self.dilation = (pairs["stride"], pairs["padding"],
                                                    pairs["dilation"])
        # (C_out, C_in, kH, kW) -> (C_out, C_in*kH*kW): one filter per row, as im2col orders it
        self._set_weight(weight.reshape(self.out_channels, -1), bias)

    @classmethod
    def from_dense(cls, conv: nn.Conv2d) -> SparseConv2d:
        """The sparse twin of ``conv`` (its pruning mask applied, if it has one).

        Raises:
            TypeError: ``conv`` is not an ``nn.Conv2d``.
            ValueError: ``groups != 1``, a padding mode other than ``"zeros"``, or an
                asymmetric ``padding="same"`` (even kernel).
        """
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv must be a torch.nn.Conv2d, got {type(conv).__name__}")
        if conv.groups != 1:
            raise ValueError(f"groups must be 1 for SparseConv2d, got groups={conv.groups} "
                             f"(grouped and depthwise convs are left dense)")
        if conv.padding_mode != "zeros":
            raise ValueError(f"padding_mode must be 'zeros', got {conv.padding_mode!r}")
        padding = conv.padding
        if isinstance(padding, str):
            # "valid" pads nothing; "same" pads dilation*(k-1) in total, split evenly
            totals = [0 if padding == "valid" else d * (k - 1)
                      for d, k in zip(conv.dilation, conv.kernel_size)]
            if any(total % 2 for total in totals):
                raise ValueError(f"padding='same' with kernel_size={conv.kernel_size} and "
                                 f"dilation={conv.dilation} pads unevenly; not supported")
            padding = tuple(total // 2 for total in totals)
        return cls(_effective_weight(conv), conv.bias, conv.stride, padding, conv.dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)  # (C, H, W) -> (1, C, H, W), as nn.Conv2d accepts both
        batch, _, height, width = x.shape
        cols = F.unfold(x, self.kernel_size, dilation=self.dilation, padding=self.padding,
                        stride=self.stride)                 # (B, C_in*kH*kW, L)
        rows, positions = cols.shape[1], cols.shape[2]
        # batch beside positions, so one sparse product serves the whole batch
        cols = cols.transpose(0, 1).reshape(rows, batch * positions)   # (C_in*kH*kW, B*L)
        out = torch.sparse.mm(self.weight_csr(), cols)                 # (C_out, B*L)
        out = out.reshape(self.out_channels, batch, positions).transpose(0, 1)  # (B, C_out, L)
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1)
        # H_out = (H + 2p - d*(k-1) - 1) // s + 1, and likewise W_out
        h_out, w_out = ((size + 2 * p - d * (k - 1) - 1) // s + 1 for size, p, d, k, s in
                        zip((height, width), self.padding, self.dilation, self.kernel_size,
                            self.stride))
        out = out.reshape(batch, self.out_channels, h_out, w_out)      # (B, C_out, H_out, W_out)
        return out.squeeze(0) if unbatched else out

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"bias={self.bias is not None}, {self._density()}")


class SparseLinear(_SparseMatrix):
    """``y = x W^T + b`` with ``W`` a sparse CSR matrix: ``(W x^T)^T``, since torch
    multiplies a sparse matrix on the left. ``MACs = nnz`` per input row instead of
    ``out_features * in_features``; like :class:`SparseConv2d` it is usually slower than
    ``nn.Linear`` on a CPU until sparsity is very high. For inference only.

    Args:
        weight: dense ``(out_features, in_features)`` weight; its exact zeros are left out.
        bias: ``(out_features,)`` or None.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        _check_weight_bias(weight, bias, "2-D (out_features, in_features)")
        self.out_features, self.in_features = weight.shape
        self._set_weight(weight, bias)

    @classmethod
    def from_dense(cls, linear: nn.Linear) -> SparseLinear:
        """The sparse twin of ``linear`` (its pruning mask applied, if it has one)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be a torch.nn.Linear, got {type(linear).__name__}")
        return cls(_effective_weight(linear), linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)                      # (N, in)
        # (out, in) @ (in, N) -> (out, N), transposed to (N, out)
        out = torch.sparse.mm(self.weight_csr(), flat.t()).t()
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, {self._density()}")


@torch.no_grad()
def to_sparse_kernels(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with every ``nn.Conv2d`` of ``groups=1`` replaced by
    :class:`SparseConv2d` and every ``nn.Linear`` by :class:`SparseLinear`.

    Only exact ``nn.Conv2d``/``nn.Linear`` are replaced (a subclass may change what its
    forward computes); grouped and depthwise convs, batch norm and everything else stay
    as they are. Pruning masks are applied. The input model's values are not changed (a
    pruned layer's cached ``weight = weight_orig * weight_mask`` is recomputed, same
    values, without autograd history, which ``copy.deepcopy`` refuses).

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
    """
    _check_model(model)
    sparse = _copy_masked(model).eval()
    # list first: the loop replaces children of the modules it walks
    for module in list(sparse.modules()):
        for name, child in module.named_children():
            if type(child) is nn.Conv2d and child.groups == 1:
                setattr(module, name, SparseConv2d.from_dense(child))
            elif type(child) is nn.Linear:
                setattr(module, name, SparseLinear.from_dense(child))
    return sparse
