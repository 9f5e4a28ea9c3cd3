"""Deep Compression's last stage: Huffman coding, relative sparse indices, one stored file.

Han, Mao & Dally, "Deep Compression: Compressing Deep Neural Networks with Pruning, Trained
Quantization and Huffman Coding", ICLR 2016 (arXiv 1510.00149). After pruning (chapter 4)
and k-means weight sharing with fine-tuned centroids (chapter 5), a layer is a set of
surviving positions and one b-bit cluster index per survivor. The paper stores the
positions as *relative* indices (section 2: the gap from one survivor to the next, in a
few bits; a gap that does not fit gets a filler zero, a stored zero weight) and, in
section 4, Huffman-codes both streams, because neither is uniform: k-means puts few
weights in the extreme clusters, and gaps are mostly short. Here a filler symbol stores
no weight (it only says "skip this many zeros").

A Huffman code gives a symbol of probability ``p_s`` a codeword of about ``-log2 p_s``
bits, so its mean length ``L = sum_s p_s l_s`` satisfies ``H <= L < H + 1`` with
``H = -sum_s p_s log2 p_s`` the entropy (Shannon's bound). Codes here are *canonical*:
the codewords follow from the code lengths alone (sorted by length, then symbol), so the
file stores one length per symbol, not the codewords.

The file (``save_compressed``) holds, after a magic number and a JSON header of names and
shapes: per shared layer its float32 codebook, then its cluster indices and its gaps; every
other tensor raw; and the SHA-256 of all of it. A truncated or corrupted file fails the
checksum and is never decoded. The two streams are stored one of two ways (``coding``):

- ``"fixed"``: the paper's P+Q format. Each cluster index in ``b = ceil(log2 K)`` bits
  (``K`` centroids), each relative index (gap or filler) in ``gap_bits`` bits, packed most
  significant bit first. Han et al. store the index difference "in 8 bits for conv layer
  and 5 bits for fc layer" (section 2) and report 5-bit indices for LeNet-300-100, LeNet-5
  and VGG-16, 4-bit ones for AlexNet (tables 2-5).
- ``"huffman"``: P+Q+H, the same two streams Huffman-coded, each with its code table.

Both code the same symbols, so the difference between the two files (code tables
included) is Huffman coding's own saving (20-30% of the storage in the paper, section 4), not a change of index format.

The codec is written here rather than taken from a library (dahuffman, huffman on PyPI)
because it is the technique taught, it must be canonical (lengths-only tables, which
those do not store), and it is about 150 lines. Taught in chapters/09_putting_it_together.
"""

from __future__ import annotations

import hashlib
import heapq
import io
import json
import math
import os
import struct
from collections import Counter
from dataclasses import dataclass
from typing import BinaryIO, Mapping

import numpy as np
import torch
from torch import nn

from ._checks import (check_array, check_file, check_instance, check_int, check_ints,
                      check_mapping, check_module, check_str)
from .pruning import prunable_layers
from .weight_sharing import shared_layers, unshare

__all__ = ["huffman_code_lengths", "canonical_codes", "huffman_encode", "huffman_decode",
           "entropy_bits", "relative_indices", "absolute_indices", "LayerStreams",
           "layer_streams", "save_compressed", "load_compressed", "compressed_size_bytes",
           "CompressedFileError", "MAGIC", "CODINGS"]

MAGIC = b"LCDC\x01"           # lightcnn Deep Compression, format version 1
_DIGEST = 32                   # SHA-256 bytes at the end of the file
CODINGS = ("huffman", "fixed")  # how the index and gap streams are stored


class CompressedFileError(ValueError):
    """A compressed file that is truncated, corrupted or not one of ours."""


# ---------------------------------------------------------------------------- Huffman

def _check_symbols(symbols: np.ndarray | torch.Tensor, arg: str = "symbols") -> np.ndarray:
    if isinstance(symbols, torch.Tensor):
        symbols = symbols.detach().cpu().numpy()
    if not isinstance(symbols, np.ndarray) or symbols.ndim != 1:
        raise ValueError(f"{arg} must be a 1-D array of non-negative integers")
    if symbols.size and (not np.issubdtype(symbols.dtype, np.integer) or symbols.min() < 0
                         or symbols.max() > 0xFFFF):
        raise ValueError(f"{arg} must hold integers in [0, 65535], got dtype {symbols.dtype}"
                         + (f", range [{symbols.min()}, {symbols.max()}]" if symbols.size else ""))
    return symbols.astype(np.int64)


def huffman_code_lengths(counts: Mapping[int, int]) -> dict[int, int]:
    """Codeword length of each symbol in an optimal prefix code for ``counts``.

    Huffman's algorithm: repeatedly merge the two least frequent subtrees; every merge
    adds one bit to the codewords of all the symbols below it. Ties break by the smallest
    symbol, so the lengths are deterministic. A single symbol gets a 1-bit code.

    Raises:
        ValueError: ``counts`` is empty or holds a count below 1.
    """
    check_mapping("counts", counts)
    if not counts:
        raise ValueError("counts must name at least one symbol")
    if any(not isinstance(c, (int, np.integer)) or c < 1 for c in counts.values()):
        raise ValueError("counts must be positive integers")
    if len(counts) == 1:
        return {next(iter(counts)): 1}
    lengths = dict.fromkeys(counts, 0)
    # (count, smallest symbol below, symbols below): the smallest symbol breaks ties
    heap = [(int(c), s, [s]) for s, c in counts.items()]
    heapq.heapify(heap)
    while len(heap) > 1:
        c1, s1, a = heapq.heappop(heap)
        c2, s2, b = heapq.heappop(heap)
        for s in a + b:
            lengths[s] += 1        # both subtrees move one level down
        heapq.heappush(heap, (c1 + c2, min(s1, s2), a + b))
    return lengths


def canonical_codes(lengths: Mapping[int, int]) -> dict[int, tuple[int, int]]:
    """``{symbol: (codeword, length)}`` of the canonical code with these lengths.

    Symbols sorted by (length, symbol) get consecutive codewords; moving to a longer
    length shifts the next codeword left: ``code_{i+1} = (code_i + 1) << (l_{i+1} - l_i)``.

    Raises:
        ValueError: a length below 1, or lengths that violate Kraft's inequality
            ``sum 2^-l <= 1`` (no prefix code has them).
    """
    check_mapping("lengths", lengths)
    if not lengths or any(not isinstance(l, (int, np.integer)) or l < 1 for l in lengths.values()):
        raise ValueError("lengths must map at least one symbol to a length >= 1")
    if sum(2.0 ** -l for l in lengths.values()) > 1 + 1e-12:
        raise ValueError("lengths violate Kraft's inequality: no prefix code has them")
    codes, code, previous = {}, 0, None
    for symbol, length in sorted(lengths.items(), key=lambda sl: (sl[1], sl[0])):
        if previous is not None:
            code = (code + 1) << (length - previous)
        codes[symbol] = (code, int(length))
        previous = length
    return codes


def entropy_bits(symbols: np.ndarray | torch.Tensor) -> float:
    """``H = -sum_s p_s log2 p_s``: the fewest bits per symbol any code of these symbols
    can average, one symbol at a time (0 for an empty or one-symbol stream)."""
    symbols = _check_symbols(symbols)
    if symbols.size == 0:
        return 0.0
    p = np.bincount(symbols).astype(np.float64)
    p = p[p > 0] / symbols.size
    return float(-(p * np.log2(p)).sum())


def huffman_encode(symbols: np.ndarray | torch.Tensor) -> tuple[bytes, int, dict[int, int]]:
    """Huffman-code ``symbols``: ``(payload, number of bits, code lengths)``.

    The payload is the codewords, most significant bit first, packed into bytes (the
    last byte padded with zeros); the lengths are all a decoder needs (canonical code).
    """
    symbols = _check_symbols(symbols)
    if symbols.size == 0:
        return b"", 0, {}
    lengths = huffman_code_lengths(dict(Counter(symbols.tolist())))
    codes = canonical_codes(lengths)
    table = np.zeros((2, int(symbols.max()) + 1), dtype=np.int64)
    for s, (code, length) in codes.items():
        table[:, s] = code, length
    code, length = table[0, symbols], table[1, symbols]
    width = int(length.max())
    # (n, width) bit matrix, codeword i right-aligned in row i; keep each row's last
    # length_i bits, in order: the concatenated codewords
    shifts = np.arange(width - 1, -1, -1)
    bits = (code[:, None] >> shifts[None, :]) & 1
    keep = np.arange(width)[None, :] >= (width - length)[:, None]
    stream = bits[keep].astype(np.uint8)
    return np.packbits(stream).tobytes(), int(stream.size), lengths


def huffman_decode(payload: bytes, nbits: int, lengths: Mapping[int, int],
                   count: int) -> np.ndarray:
    """The ``count`` symbols coded in the first ``nbits`` bits of ``payload``.

    Canonical decoding: read bits into a code; at each length ``l``, the codes of that
    length are the consecutive values from ``first[l]``, so the code is complete when
    ``code - first[l] < number of codes of length l``.

    Raises:
        CompressedFileError: the bits end before ``count`` symbols, or do not form codewords.
    """
    check_instance("payload", payload, (bytes, bytearray, memoryview), "bytes")
    check_int("nbits", nbits, 0)
    check_mapping("lengths", lengths)
    check_int("count", count, 0)
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    if nbits > 8 * len(payload):
        raise CompressedFileError(f"stream of {nbits} bits in {len(payload)} bytes")
    codes = canonical_codes(lengths)
    order = sorted(codes, key=lambda s: (codes[s][1], s))
    max_len = max(length for _, length in codes.values())
    first, number, offset = [0] * (max_len + 1), [0] * (max_len + 1), [0] * (max_len + 1)
    for i, s in enumerate(order):
        code, length = codes[s]
        if number[length] == 0:
            first[length], offset[length] = code, i
        number[length] += 1
    bits = np.unpackbits(np.frombuffer(payload, dtype=np.uint8))[:nbits].tolist()
    out, code, length, i = [], 0, 0, 0
    for bit in bits:
        code, length = (code << 1) | bit, length + 1
        if length > max_len:
            raise CompressedFileError("bit stream holds a code longer than any codeword")
        k = code - first[length]
        if number[length] and 0 <= k < number[length]:
            out.append(order[offset[length] + k])
            code = length = 0
            i += 1
            if i == count:
                break
    if i < count:
        raise CompressedFileError(f"bit stream ended after {i} of {count} symbols")
    return np.asarray(out, dtype=np.int64)


# ------------------------------------------------------------------ relative indices

def relative_indices(positions: np.ndarray | torch.Tensor, bits: int) -> np.ndarray:
    """Gaps between sorted nonzero ``positions`` (flat indices), each in ``[0, 2^bits)``.

    Symbol ``g < E = 2^bits - 1`` means: skip ``g`` zeros, then the next survivor. A gap
    of ``E`` or more zeros is first cut by *filler* symbols ``E`` (skip ``E`` zeros, no
    survivor), Han et al.'s filler zero without a stored value: their filler is an entry
    whose weight is zero, so it also costs a cluster index; here it costs its ``bits``
    only, and the largest jump one symbol makes is ``2^bits - 1`` positions, not ``2^bits``.
    """
    check_array("positions", positions)
    if isinstance(positions, torch.Tensor):
        positions = positions.detach().cpu().numpy()
    positions = np.asarray(positions)
    if positions.ndim != 1 or (positions.size and not np.issubdtype(positions.dtype, np.integer)):
        raise ValueError("positions must be a 1-D array of integers")
    positions = positions.astype(np.int64)
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16:
        raise ValueError(f"bits must be an int in [1, 16], got {bits!r}")
    if positions.size and (positions.min() < 0 or np.any(np.diff(positions) <= 0)):
        raise ValueError("positions must be non-negative and strictly increasing")
    escape = 2**bits - 1
    skips = np.diff(positions, prepend=-1) - 1          # zeros before each survivor
    fillers = skips // escape
    out = np.full(int(fillers.sum()) + positions.size, escape, dtype=np.int64)
    # survivor i sits after all fillers of survivors 0..i and after survivors 0..i-1
    ends = np.cumsum(fillers + 1) - 1
    out[ends] = skips % escape
    return out


def absolute_indices(gaps: np.ndarray, bits: int) -> np.ndarray:
    """The positions :func:`relative_indices` coded as ``gaps`` (its inverse)."""
    check_array("gaps", gaps, 1, integer=True)
    check_int("bits", bits, 1, 16)
    escape = 2**bits - 1
    gaps = np.asarray(gaps, dtype=np.int64)
    if gaps.size and (gaps.min() < 0 or gaps.max() > escape):
        raise ValueError(f"gaps must hold symbols in [0, {escape}] for bits={bits}, got "
                         f"values in [{gaps.min()}, {gaps.max()}]")
    advance = np.where(gaps == escape, escape, gaps + 1)
    ends = np.cumsum(advance) - 1
    return ends[gaps != escape]


# ------------------------------------------------------------------- fixed-width codes

def _pack_fixed(symbols: np.ndarray, width: int) -> bytes:
    """``symbols`` (each below ``2^width``) as ``width``-bit codes, most significant bit
    first, packed into ``ceil(n * width / 8)`` bytes (the last one padded with zeros)."""
    # (n,) -> (n, width) bit matrix, row i the binary digits of symbol i -> one bit stream
    shifts = np.arange(width - 1, -1, -1, dtype=np.int64)
    bits = (symbols.astype(np.int64)[:, None] >> shifts[None, :]) & 1
    return np.packbits(bits.reshape(-1).astype(np.uint8)).tobytes()


def _unpack_fixed(payload: bytes, width: int, count: int) -> np.ndarray:
    """The ``count`` symbols :func:`_pack_fixed` wrote at ``width`` bits each."""
    bits = np.unpackbits(np.frombuffer(payload, dtype=np.uint8), count=count * width)
    # (count, width) bits -> integers: sum_k bit_k * 2^(width - 1 - k)
    weights = 1 << np.arange(width - 1, -1, -1, dtype=np.int64)
    return bits.reshape(count, width).astype(np.int64) @ weights


def _index_bits(codebook_size: int) -> int:
    # b = ceil(log2 K) bits name one of K centroids (at least 1)
    return max(1, (codebook_size - 1).bit_length())


# ------------------------------------------------------------------------- the file

@dataclass
class LayerStreams:
    """What a shared layer becomes in the file, with the numbers behind its size.

    Attributes:
        name: the layer's name in the model.
        shape: its weight's shape.
        codebook: float32 centroids, ``2^bits`` of them.
        indices: each survivor's cluster index, in position order.
        gaps: the relative indices of the survivors (with fillers).
        gap_bits: the width that sets the filler symbol.
    """

    name: str
    shape: tuple[int, ...]
    codebook: np.ndarray
    indices: np.ndarray
    gaps: np.ndarray
    gap_bits: int

    def __post_init__(self):
        check_str("name", self.name)
        check_ints("shape", self.shape, 0)
        for name in ("codebook", "indices", "gaps"):
            check_instance(name, getattr(self, name), np.ndarray, "a numpy array")
        check_int("gap_bits", self.gap_bits, 1, 16)

    def bits(self) -> dict[str, float]:
        """Huffman bits of each stream against its entropy and its fixed-width size."""
        index_bits = huffman_encode(self.indices)[1]
        gap_bits = huffman_encode(self.gaps)[1]
        b = _index_bits(self.codebook.size)
        return {"survivors": int(self.indices.size), "index_huffman": index_bits,
                "index_entropy": entropy_bits(self.indices) * self.indices.size,
                "index_fixed": b * self.indices.size, "gap_huffman": gap_bits,
                "gap_entropy": entropy_bits(self.gaps) * self.gaps.size,
                "gap_fixed": self.gap_bits * self.gaps.size}


def layer_streams(model: nn.Module, gap_bits: int = 5) -> list[LayerStreams]:
    """The index and gap streams of every layer shared with ``keep_zeros=True``.

    Raises:
        ValueError: a shared layer without a mask (shared without ``keep_zeros``), or no
            shared layer at all.
    """
    check_module("model", model)
    check_int("gap_bits", gap_bits, 1, 16)
    books = shared_layers(model)
    if not books:
        raise ValueError("model has no shared layer: share it with "
                         "lc.weight_sharing.share_weights(model, bits, keep_zeros=True)")
    out = []
    for name, p in books.items():
        if p.mask is None:
            raise ValueError(f"layer {name!r} was shared without keep_zeros=True: its zeros "
                             "are not marked, so there are no positions to code")
        mask = p.mask.detach().reshape(-1).bool()
        positions = mask.nonzero().reshape(-1).numpy()
        out.append(LayerStreams(
            name, tuple(p.indices.shape), p.codebook.detach().float().numpy().copy(),
            p.indices.reshape(-1)[mask].numpy().astype(np.int64),
            relative_indices(positions, gap_bits), gap_bits))
    return out


def _table(lengths: Mapping[int, int]) -> bytes:
    # canonical: a symbol count, then (symbol u16, length u8) per symbol
    return struct.pack("<H", len(lengths)) + b"".join(
        struct.pack("<HB", s, l) for s, l in sorted(lengths.items()))


def _read_table(data: memoryview, at: int) -> tuple[dict[int, int], int]:
    (n,) = struct.unpack_from("<H", data, at)
    at += 2
    lengths = {}
    for _ in range(n):
        s, l = struct.unpack_from("<HB", data, at)
        lengths[s] = l
        at += 3
    return lengths, at


def _encode(model: nn.Module, gap_bits: int, coding: str = "huffman") -> bytes:
    streams = layer_streams(model, gap_bits)
    plain = unshare(model).state_dict()
    shared_keys = {f"{s.name}.weight" for s in streams}
    header = {"layers": [], "tensors": []}
    if coding != "huffman":            # absent means Huffman: files from before the option
        header["coding"] = coding
    body = io.BytesIO()
    for s in streams:
        if coding == "huffman":        # per stream: code table, then the codewords
            index_payload, index_nbits, index_lengths = huffman_encode(s.indices)
            gap_payload, gap_nbits, gap_lengths = huffman_encode(s.gaps)
            body_parts = [_table(index_lengths), index_payload, _table(gap_lengths), gap_payload]
        else:                          # per stream: n symbols of a fixed width, no table
            b = _index_bits(s.codebook.size)
            index_nbits, gap_nbits = b * s.indices.size, s.gap_bits * s.gaps.size
            body_parts = [_pack_fixed(s.indices, b), _pack_fixed(s.gaps, s.gap_bits)]
        header["layers"].append([s.name, list(s.shape), int(s.codebook.size), s.gap_bits,
                                 int(s.indices.size), int(index_nbits), int(s.gaps.size),
                                 int(gap_nbits)])
        body.write(s.codebook.astype("<f4").tobytes())
        for part in body_parts:
            body.write(part)
    for key, t in plain.items():
        if key in shared_keys:
            continue
        array = t.detach().cpu().numpy()
        header["tensors"].append([key, list(array.shape), array.dtype.str.lstrip("<>|=")])
        body.write(array.astype(array.dtype.newbyteorder("<")).tobytes())
    head = json.dumps(header, separators=(",", ":")).encode()
    blob = MAGIC + struct.pack("<I", len(head)) + head + body.getvalue()
    return blob + hashlib.sha256(blob).digest()


def save_compressed(model: nn.Module, path_or_file: str | os.PathLike | BinaryIO,
                    gap_bits: int = 5, coding: str = "huffman") -> int:
    """Write ``model`` (pruned, then shared with ``keep_zeros=True``) as one compressed
    file; returns the bytes written, every header and table included.

    The file's size, with ``H`` the bytes of its JSON header and, per shared layer, ``K``
    centroids, ``n`` survivors, ``g`` relative indices (``n`` plus the fillers) and
    ``b = ceil(log2 K)`` index bits::

        bytes = 5 (magic) + 4 (header length) + H
                + sum over shared layers of (4 K + index stream + gap stream)
                + bytes of every other tensor (as stored: 4 per float32 entry)
                + 32 (SHA-256)

        coding="fixed":   index stream = ceil(n b / 8),   gap stream = ceil(g gap_bits / 8)
        coding="huffman": each stream = 2 + 3 s + ceil(L / 8), with s distinct symbols
                          (its canonical code table) and L the bits of its codewords

    A shared layer's weight is stored only as these streams; its positions past the last
    survivor cost nothing (the header's shape gives the size).

    Args:
        gap_bits: relative indices take symbols in ``[0, 2^gap_bits)``; longer gaps use
            filler symbols. Han et al. use 8 bits for conv layers and 5 for fully
            connected ones in section 2, and 5 (LeNets, VGG-16) or 4 (AlexNet) in their
            tables.
        coding: ``"fixed"`` stores both streams at fixed width (the paper's P+Q),
            ``"huffman"`` Huffman-codes them (P+Q+H). :func:`load_compressed` reads either.
    """
    check_module("model", model)
    check_file("path_or_file", path_or_file, "write")
    check_int("gap_bits", gap_bits, 1, 16)
    check_str("coding", coding, CODINGS)
    blob = _encode(model, gap_bits, coding)
    if isinstance(path_or_file, (str, os.PathLike)):
        with open(path_or_file, "wb") as f:
            f.write(blob)
    else:
        path_or_file.write(blob)
    return len(blob)


def compressed_size_bytes(model: nn.Module, gap_bits: int = 5, coding: str = "huffman") -> int:
    """Bytes :func:`save_compressed` writes for ``model`` with the same arguments."""
    check_module("model", model)
    check_int("gap_bits", gap_bits, 1, 16)
    check_str("coding", coding, CODINGS)
    return len(_encode(model, gap_bits, coding))


def load_compressed(path_or_file: str | os.PathLike | BinaryIO) -> dict[str, torch.Tensor]:
    """The state dict stored by :func:`save_compressed` (plain weights, zeros included),
    after checking the file's SHA-256: a damaged file is never decoded. Either coding is
    read; the header says which.

    Raises:
        CompressedFileError: not a compressed file, truncated, its checksum fails, or its
            content does not add up (an unknown coding, a stream longer than the file,
            positions outside the layer).
    """
    check_file("path_or_file", path_or_file, "read")
    if isinstance(path_or_file, (str, os.PathLike)):
        with open(path_or_file, "rb") as f:
            blob = f.read()
    else:
        blob = path_or_file.read()
    if len(blob) < len(MAGIC) + 4 + _DIGEST or not blob.startswith(MAGIC):
        raise CompressedFileError("not a lightcnn compressed file (bad magic number or "
                                  "too short to hold one)")
    if hashlib.sha256(blob[:-_DIGEST]).digest() != blob[-_DIGEST:]:
        raise CompressedFileError("checksum mismatch: the file is truncated or corrupted; "
                                  "nothing was loaded")
    data = memoryview(blob)[:-_DIGEST]
    (head_len,) = struct.unpack_from("<I", data, len(MAGIC))
    at = len(MAGIC) + 4
    header = json.loads(bytes(data[at:at + head_len]))
    at += head_len
    coding = header.get("coding", "huffman")
    if coding not in CODINGS:
        raise CompressedFileError(f"unknown coding {coding!r} in the header; "
                                  f"known: {list(CODINGS)}")
    state = {}
    for name, shape, k, gap_bits, survivors, index_nbits, n_gaps, gap_nbits in header["layers"]:
        codebook = np.frombuffer(data, dtype="<f4", count=k, offset=at).copy()
        at += 4 * k
        streams = []
        widths = (_index_bits(k), gap_bits)
        for count, nbits, width in ((survivors, index_nbits, widths[0]),
                                    (n_gaps, gap_nbits, widths[1])):
            if coding == "huffman":
                lengths, at = _read_table(data, at)
            elif nbits != count * width:
                raise CompressedFileError(f"layer {name!r}: {nbits} bits for {count} "
                                          f"symbols of {width} bits")
            size = math.ceil(nbits / 8)
            if at + size > len(data):
                raise CompressedFileError(f"layer {name!r}: a stream of {size} bytes runs "
                                          "past the end of the file")
            payload = bytes(data[at:at + size])
            streams.append(huffman_decode(payload, nbits, lengths, count) if coding == "huffman"
                           else _unpack_fixed(payload, width, count))
            at += size
        indices, gaps = streams
        numel = int(np.prod(shape))
        positions = absolute_indices(gaps, gap_bits)
        if positions.size != indices.size or (positions.size and positions[-1] >= numel) \
                or (indices.size and indices.max() >= k):
            raise CompressedFileError(f"layer {name!r}: its streams do not describe "
                                      f"{survivors} weights of a {shape} tensor with {k} "
                                      "centroids")
        weight = np.zeros(numel, dtype=np.float32)
        weight[positions] = codebook[indices]
        state[f"{name}.weight"] = torch.from_numpy(weight.reshape(shape))
    for key, shape, dtype in header["tensors"]:
        dt = np.dtype(dtype).newbyteorder("<")
        n = int(np.prod(shape))
        state[key] = torch.from_numpy(
            np.frombuffer(data, dtype=dt, count=n, offset=at).astype(dt.newbyteorder("=")).reshape(shape).copy())
        at += n * dt.itemsize
    if at != len(data):
        raise CompressedFileError(f"{len(data) - at} bytes left over after the last tensor")
    return state
