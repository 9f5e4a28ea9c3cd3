"""Bit-packed binary inference: signs in 64-bit words, XNOR and popcount, a binary conv,
and FINN's integer thresholds between binary layers.

Rastegari et al., "XNOR-Net", arXiv 1603.05279, section 3.2: with ``a, b`` in {-1, +1}^n
stored as bits (1 for +1, 0 for -1), the dot product is

    a . b = (#equal) - (#different) = n - 2 * popcount(a XOR b)

so 64 multiply-accumulates cost one XOR and one POPCNT on a 64-bit word, and a whole
512-bit register's worth one VPXORQ and one VPOPCNTQ where AVX-512 VPOPCNTDQ exists.
Padding bits are 0 in both operands: their XOR is 0 and they never count.

Umuroglu et al., "FINN: A Framework for Fast, Scalable Binarized Neural Network
Inference", arXiv 1612.07119, section 4.2.2: a binary layer's batch norm followed by the
next layer's sign is a comparison of the integer dot product with one integer threshold
per channel, so a packed network can stay in bits from its first binary layer to its last
(:func:`integer_thresholds`, ``pack_model(..., thresholds=True)``).

Two implementations of the same arithmetic:

* ``"torch"``: pure PyTorch (a 256-entry popcount table over the bytes), runs anywhere, the
  reference the tests hold the fast kernel to;
* ``"numba"``: the kernel compiled for this CPU by numba (LLVM). Chosen over a C++
  extension because it compiles in seconds, with no compiler toolchain or PyTorch
  headers, on any OS. Its inner loop is written in LLVM IR (:func:`_xnor_tile_intrinsic`):
  a register tile of 4 rows x 32 columns, 16 vectors of 8 counts that never leave the
  registers, lowered to ``vpopcntq`` on CPUs with AVX-512 VPOPCNTDQ (and to whatever
  popcount the CPU has elsewhere).

``backend="auto"`` takes numba when it is installed and the torch code otherwise.

A binary conv is im2col on packed bits: pack each pixel's channels into words once
(``(B, H, W, C)`` -> ``(B, H, W, ceil(C/64))``), pad with the word of +1s, and multiply the
``k x k`` windows of words with the packed kernel by XNOR GEMM. The torch backend gathers
the windows (:meth:`PackedBinaryConv2d.im2col`); the numba kernel reads them in place
through two index arrays, one start per output position and one offset per tap.

Taught in chapters/06_binary_networks.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
from collections import Counter
from types import SimpleNamespace
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_bool, check_int, check_module, check_path, check_sequence, check_str
from .binary import BinaryConv2d, BinaryLinear, activation_scale_map, binary_layers
from .runtime import cpuinfo_fields

__all__ = ["BACKENDS", "TILE_ROWS", "TILE_COLS", "available_backends", "popcount_peak",
           "gemm_instructions", "measure_xnor_gemm", "pack_signs", "unpack_signs", "popcount",
           "xnor_gemm", "integer_thresholds", "PackedBinaryConv2d", "PackedBinaryLinear",
           "PackedMaxPool2d", "PackSigns", "pack_model", "PARALLEL_MIN_MACS",
           "parallel_threshold"]

BACKENDS = ("torch", "numba")
# The numba kernel's register tile: 4 rows (output positions) x 32 columns (output
# channels) = 4 x 4 vectors of 8 uint64 counts, 16 of AVX-512's 32 vector registers.
TILE_ROWS, TILE_COLS = 4, 32
# a packed conv with fewer binary MACs than this runs on one thread whatever torch's thread
# count (see parallel_threshold). Measured on the book's CPU (2 cores, numba's OpenMP layer),
# timed interleaved with other layers as in a network: a 64-channel 3x3 conv on a 14x14 map
# (7.2 M) took 0.019 ms on 1 thread and 0.029 ms forced onto 2 (waking the second thread
# costs more than its half of the work), on a 28x28 map (29 M) 0.046 and 0.044 ms, and a
# 256-channel one on 14x14 (116 M) 0.123 and 0.092 ms
PARALLEL_MIN_MACS = 16_000_000
_BIT = torch.tensor([1 << i for i in range(63)] + [-(1 << 63)], dtype=torch.int64)
_POPCOUNT_TABLE = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int64)


def available_backends() -> tuple[str, ...]:
    """The backends that run here: ``"torch"`` always, ``"numba"`` when it is installed."""
    return BACKENDS if importlib.util.find_spec("numba") is not None else ("torch",)


def popcount_peak(cores: int | None = None, cpuinfo: str = "/proc/cpuinfo") -> dict:
    """The most binary multiply-accumulates per second popcount can do on this CPU.

    ``peak = cores x bits per popcount instruction x instructions per cycle x clock``, with
    one popcount instruction per cycle per core: 512 bits with AVX-512 VPOPCNTDQ
    (``avx512_vpopcntdq`` in the CPU flags), 64 bits with scalar ``POPCNT`` otherwise (the
    assumption behind XNOR-Net's 64x). The clock is the one the kernel reports (``cpu MHz``:
    the base clock under a hypervisor, so boost clocks can beat the "peak"). The XOR, the
    loads and the additions are not counted: a real kernel stays below this ceiling (each
    VPOPCNTQ needs a VPXORQ and a VPADDQ too; a core that issues two 512-bit vector
    instructions per cycle, as Zen 4 does, tops out at 2/3 of it).

    Returns:
        dict with ``clock_ghz`` (None where unknown), ``cores``, ``vpopcntdq``,
        ``bits_per_cycle`` (per core) and ``peak_binary_macs_per_s`` (None where the clock
        is unknown).
    """
    cores = torch.get_num_threads() if cores is None else cores
    if isinstance(cores, bool) or not isinstance(cores, int) or cores < 1:
        raise ValueError(f"cores must be a positive int, got {cores!r}")
    check_path("cpuinfo", cpuinfo)
    fields = cpuinfo_fields(cpuinfo)
    try:
        clock = float(fields["cpu MHz"]) / 1000.0
    except (KeyError, ValueError):
        clock = None
    vpopcntdq = "avx512_vpopcntdq" in fields.get("flags", "").split()
    bits = 512 if vpopcntdq else 64
    return {"clock_ghz": clock, "cores": cores, "vpopcntdq": vpopcntdq,
            "bits_per_cycle": bits,
            "peak_binary_macs_per_s": None if clock is None else cores * bits * clock * 1e9}


def _backend(backend: str) -> str:
    if backend == "auto":
        return available_backends()[-1]
    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {backend!r}")
    if backend not in available_backends():
        raise ValueError(f"backend {backend!r} is not available here (pip install numba)")
    return backend


def pack_signs(x: Tensor) -> Tensor:
    """Pack the last axis of a tensor of +1 and -1 into int64 words.

    Element ``j`` goes to bit ``j % 64`` of word ``j // 64`` (1 for +1, 0 for -1); the
    unused high bits of the last word are 0. ``(..., n) -> (..., ceil(n / 64))``.

    Raises:
        TypeError: ``x`` is not a float or signed-integer tensor (bool and unsigned types
            cannot hold -1).
        ValueError: ``x`` holds a value other than +1 and -1, or its last axis is empty.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a tensor, got {type(x).__name__}")
    if x.dtype == torch.bool or x.is_complex() or not (x.is_floating_point() or x.is_signed()):
        raise TypeError(f"x must be a float or signed-integer tensor of +1 and -1, got {x.dtype}")
    if x.ndim == 0 or x.shape[-1] == 0:
        raise ValueError(f"x needs a non-empty last axis to pack, got shape {tuple(x.shape)}")
    if not bool(((x == 1) | (x == -1)).all()):
        bad = x[(x != 1) & (x != -1)].flatten()[0].item()
        raise ValueError(f"x must hold only +1 and -1 (binarize with sign first), found {bad}")
    return _pack_bits(x > 0)


def _pack_bits(bits: Tensor) -> Tensor:
    """``(..., n)`` bool -> ``(..., ceil(n/64))`` int64, element j at bit j % 64."""
    n = bits.shape[-1]
    words = -(-n // 64)
    bits = F.pad(bits.to(torch.int64), (0, words * 64 - n))  # padding bits are 0
    # distinct powers of two never carry, so the sum is the bitwise OR (bit 63: -2^63)
    return (bits.view(*bits.shape[:-1], words, 64) * _BIT).sum(-1)


def unpack_signs(words: Tensor, n: int) -> Tensor:
    """Inverse of :func:`pack_signs`: ``(..., ceil(n/64))`` int64 -> ``(..., n)`` float of +-1."""
    if not isinstance(words, Tensor) or words.dtype != torch.int64:
        raise TypeError(f"words must be an int64 tensor, got "
                        f"{words.dtype if isinstance(words, Tensor) else type(words).__name__}")
    if not isinstance(n, int) or not 64 * (words.shape[-1] - 1) < n <= 64 * words.shape[-1]:
        raise ValueError(f"n must be in ({64 * (words.shape[-1] - 1)}, "
                         f"{64 * words.shape[-1]}] for {words.shape[-1]} words, got {n!r}")
    bits = (words.unsqueeze(-1) & _BIT) != 0  # (..., W) -> (..., W, 64)
    return bits.flatten(-2)[..., :n].float() * 2 - 1


def popcount(words: Tensor) -> Tensor:
    """Number of set bits of each int64 word (pure PyTorch: a table over its 8 bytes)."""
    if not isinstance(words, Tensor) or words.dtype != torch.int64:
        raise TypeError("words must be an int64 tensor")
    as_bytes = words.contiguous().view(torch.uint8).view(*words.shape, 8)
    return _POPCOUNT_TABLE[as_bytes.long()].sum(-1)


def _ones_words(channels: int) -> Tensor:
    """``(ceil(C/64),)`` int64: the packed +1s of one pixel (bits set for the C channels)."""
    return _pack_bits(torch.ones(channels, dtype=torch.bool))


def _xnor_tile_intrinsic():
    """The kernel's inner loop in LLVM IR: a numba intrinsic
    ``xnor_tile(rows, cols, mode, src, starts, m0, offsets, steps, b, n0, b_stride, dest,
    thresholds, flip, n_bits)`` computing, for ``i < rows`` and ``j < cols`` (compile-time
    constants),

        pc[i, j] = sum_{k < steps} popcount(src[starts[m0 + i] + offsets[k]]
                                            XOR b[n0 + k b_stride + j])

    Row ``i`` of the left matrix is read in place at ``starts[m0 + i] + offsets[k]``: a GEMM
    passes ``starts = m W`` and ``offsets = k``, a conv the first word of each output
    position's window and each tap's offset in the padded input, so im2col costs no copy.
    The ``rows x cols/8`` accumulators are SSA vectors carried around the loop (phi nodes),
    so LLVM keeps them in registers: each step loads ``cols/8`` vectors of the right matrix,
    broadcasts ``rows`` words of the left one and issues ``rows x cols/8`` XOR, VPOPCNTQ and
    ADD. Written in IR because numba's loop vectorizer, given the same loops in Python,
    keeps the accumulators in memory (a load and a store per popcount). ``mode`` says where
    the tile goes:

    * 0: ``dest[i cols + j] = pc`` (a uint64 buffer; for tiles cut by the matrix's edge);
    * 1: ``dest[m0 + i, n0 + j] = n_bits - 2 pc``, the dot products, converted to dest's
      float32 or int32;
    * 2 (``cols == 32``): the next layer's input bits, bit j of the uint32
      ``dest[m0 + i, n0 / 32]`` = ``(pc <= thresholds[n0 + j]) XOR flip[n0 + j]``.
    """
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic

    @intrinsic
    def xnor_tile(typingctx, rows, cols, mode, src, starts, m0, offsets, steps, b, n0,
                  b_stride, dest, thresholds, flip, n_bits):
        literal = (rows, cols, mode)
        if not all(isinstance(v, types.IntegerLiteral) for v in literal) \
                or cols.literal_value % 8 or (mode.literal_value == 2 and cols.literal_value != 32):
            return None
        dest_types = {0: (types.uint64,), 1: (types.float32, types.int32), 2: (types.uint32,)}
        if not all(isinstance(a, types.Array) and a.layout == "C"
                   for a in (src, starts, offsets, b, dest)) \
                or dest.dtype not in dest_types.get(mode.literal_value, ()) \
                or dest.ndim != (1 if mode.literal_value == 0 else 2):
            return None   # numba reports a typing error
        n_rows, n_vectors, mode_ = rows.literal_value, cols.literal_value // 8, mode.literal_value
        sig = types.void(rows, cols, mode, src, starts, m0, offsets, steps, b, n0, b_stride,
                         dest, thresholds, flip, n_bits)

        def codegen(context, builder, signature, args):
            i8, i32, i64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
            vector = ir.VectorType(i64, 8)
            arrays = {i: context.make_array(signature.args[i])(context, builder, args[i])
                      for i in (3, 4, 6, 8, 11, 12, 13)}
            src_p, starts_p, offsets_p, b_p = (arrays[i].data for i in (3, 4, 6, 8))
            m0_, steps_, n0_, b_stride_, n_bits_ = args[5], args[7], args[9], args[10], args[14]
            ctpop = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vector, [vector]), "llvm.ctpop.v8i64")

            def const(value, kind=i64):
                return ir.Constant(kind, value)

            def element(pointer, index):
                return builder.gep(pointer, [index], inbounds=True)

            def vector_at(pointer, index, kind=vector):  # consecutive elements, unaligned
                return builder.bitcast(element(pointer, index), kind.as_pointer())

            row_starts = [builder.load(element(starts_p, builder.add(m0_, const(i))))
                          for i in range(n_rows)]
            entry = builder.block
            loop = builder.append_basic_block("xnor_tile_loop")
            done = builder.append_basic_block("xnor_tile_done")
            builder.branch(loop)
            builder.position_at_end(loop)
            k = builder.phi(i64)
            acc_in = [[builder.phi(vector) for _ in range(n_vectors)] for _ in range(n_rows)]
            b_row = builder.add(n0_, builder.mul(k, b_stride_))
            b_vectors = [builder.load(vector_at(b_p, builder.add(b_row, const(8 * v))), align=8)
                         for v in range(n_vectors)]
            offset = builder.load(element(offsets_p, k))
            acc = []
            for i in range(n_rows):
                word = builder.load(element(src_p, builder.add(row_starts[i], offset)))
                a = _splat(builder, word, vector)      # the word in all 8 lanes
                acc.append([builder.add(acc_in[i][v], builder.call(ctpop, [builder.xor(a, bv)]))
                            for v, bv in enumerate(b_vectors)])
            k_next = builder.add(k, const(1))
            k.add_incoming(const(0), entry)
            k.add_incoming(k_next, builder.block)
            for i in range(n_rows):
                for v in range(n_vectors):
                    acc_in[i][v].add_incoming(ir.Constant(vector, [0] * 8), entry)
                    acc_in[i][v].add_incoming(acc[i][v], builder.block)
            builder.cbranch(builder.icmp_signed("<", k_next, steps_), loop, done)  # steps >= 1
            builder.position_at_end(done)

            dest_p = arrays[11].data
            if mode_ == 0:
                for i in range(n_rows):
                    for v in range(n_vectors):
                        builder.store(acc[i][v], vector_at(dest_p, const((i * n_vectors + v) * 8)),
                                      align=8)
                return context.get_dummy_value()
            ld = cgutils.unpack_tuple(builder, arrays[11].shape)[1]   # dest's row length
            if mode_ == 1:
                # d = n_bits - 2 pc, converted to dest's type, 8 columns per store
                float_out = isinstance(signature.args[11].dtype, types.Float)
                kind = ir.VectorType(ir.FloatType() if float_out else i32, 8)
                for i in range(n_rows):
                    row = builder.add(builder.mul(builder.add(m0_, const(i)), ld), n0_)
                    for v in range(n_vectors):
                        d = builder.sub(_splat(builder, n_bits_, vector),
                                        builder.shl(acc[i][v], ir.Constant(vector, [1] * 8)))
                        d = builder.sitofp(d, kind) if float_out else builder.trunc(d, kind)
                        builder.store(d, vector_at(dest_p, builder.add(row, const(8 * v)), kind),
                                      align=4)
                return context.get_dummy_value()
            # mode 2: bit j = (pc <= T_j) XOR flip_j, 8 bits per vector, 32 per uint32
            t_p, flip_p = arrays[12].data, arrays[13].data
            for i in range(n_rows):
                word = const(0, i32)
                for v in range(n_vectors):
                    col = builder.add(n0_, const(8 * v))
                    t = builder.load(vector_at(t_p, col), align=8)
                    bytes8 = ir.VectorType(i8, 8)
                    f = builder.load(vector_at(flip_p, col, bytes8), align=1)
                    bits = builder.xor(builder.icmp_signed("<=", acc[i][v], t),
                                       builder.icmp_unsigned("!=", f, ir.Constant(bytes8, [0] * 8)))
                    byte = builder.zext(builder.bitcast(bits, i8), i32)
                    word = builder.or_(word, builder.shl(byte, const(8 * v, i32)))
                index = builder.add(builder.mul(builder.add(m0_, const(i)), ld),
                                    builder.udiv(n0_, const(32)))
                builder.store(word, element(dest_p, index), align=4)
            return context.get_dummy_value()

        return sig, codegen

    return xnor_tile


def _splat(builder, value, vector_type):
    """``value`` in every lane of ``vector_type`` (LLVM IR)."""
    from llvmlite import ir
    undefined = ir.Constant(vector_type, ir.Undefined)
    lane = builder.insert_element(undefined, value, ir.Constant(ir.IntType(32), 0))
    mask = ir.Constant(ir.VectorType(ir.IntType(32), vector_type.count), [0] * vector_type.count)
    return builder.shuffle_vector(lane, undefined, mask)


@functools.lru_cache(maxsize=1)
def _numba_kernels() -> SimpleNamespace:
    """Compile the numba kernels once per process (each signature on its first call)."""
    import numba
    from numba import njit, prange

    xnor_tile = _xnor_tile_intrinsic()

    def tiles(src, starts, offsets, b, n_cols, n_bits, out, thresholds, flip, out_bits,
              chunk, n_chunks):
        # C = A B for the left matrix read through (starts, offsets) and b = (K, N_pad)
        # words, N_pad a multiple of TILE_COLS (zero columns past n_cols). Tiles go
        # column-panel by column-panel: a panel of b (K x 32 words, 9 KB at K = 36) stays
        # in L1 while every row of A streams past it. Either out[m, n] = n_bits - 2 pc
        # (int32 or float32), or, with thresholds (padded to N_pad), the next layer's input
        # bits into out_bits (M, ...) uint32. This call does the tiles of chunk `chunk` of
        # `n_chunks` (one chunk per thread).
        m_rows, steps = starts.shape[0], offsets.shape[0]
        b_stride = b.shape[0] // steps
        rows = TILE_ROWS if m_rows >= TILE_ROWS else 1
        m_tiles = (m_rows + rows - 1) // rows
        total = m_tiles * (b_stride // TILE_COLS)
        acc = np.empty(TILE_ROWS * TILE_COLS, np.uint64)
        begin = chunk * total // n_chunks
        nt, mt = begin // m_tiles, begin % m_tiles     # tile t = nt m_tiles + mt
        for _ in range(begin, (chunk + 1) * total // n_chunks):
            n0 = nt * TILE_COLS
            m0 = min(mt * rows, m_rows - rows)          # the last tile may overlap
            mt += 1
            if mt == m_tiles:
                nt, mt = nt + 1, 0
            if thresholds.shape[0] != 0:
                if rows == TILE_ROWS:
                    xnor_tile(TILE_ROWS, TILE_COLS, 2, src, starts, m0, offsets, steps, b, n0,
                              b_stride, out_bits, thresholds, flip, n_bits)
                else:
                    xnor_tile(1, TILE_COLS, 2, src, starts, m0, offsets, steps, b, n0,
                              b_stride, out_bits, thresholds, flip, n_bits)
            elif n0 + TILE_COLS <= n_cols:
                if rows == TILE_ROWS:
                    xnor_tile(TILE_ROWS, TILE_COLS, 1, src, starts, m0, offsets, steps, b, n0,
                              b_stride, out, thresholds, flip, n_bits)
                else:
                    xnor_tile(1, TILE_COLS, 1, src, starts, m0, offsets, steps, b, n0,
                              b_stride, out, thresholds, flip, n_bits)
            else:   # the last panel of a matrix whose width is not a multiple of TILE_COLS
                if rows == TILE_ROWS:
                    xnor_tile(TILE_ROWS, TILE_COLS, 0, src, starts, m0, offsets, steps, b, n0,
                              b_stride, acc, thresholds, flip, n_bits)
                else:
                    xnor_tile(1, TILE_COLS, 0, src, starts, m0, offsets, steps, b, n0,
                              b_stride, acc, thresholds, flip, n_bits)
                for i in range(rows):
                    for j in range(n_cols - n0):
                        out[m0 + i, n0 + j] = n_bits - 2 * np.int64(acc[i * TILE_COLS + j])

    def conv_indices(batch, hp, wp, wc, kh, kw, sh, sw, oh, ow):
        # im2col as two index arrays into padded (B, Hp, Wp, Wc): output position
        # (n, y, x) starts at word ((n Hp + y sh) Wp + x sw) Wc, tap (i, j, w) adds
        # (i Wp + j) Wc + w, in the kernel's (kh, kw, word) order
        starts = np.empty(batch * oh * ow, np.int64)
        for n in range(batch):
            for y in range(oh):
                for x in range(ow):
                    starts[(n * oh + y) * ow + x] = ((n * hp + y * sh) * wp + x * sw) * wc
        offsets = np.empty(kh * kw * wc, np.int64)
        for i in range(kh):
            for j in range(kw):
                for w in range(wc):
                    offsets[(i * kw + j) * wc + w] = (i * wp + j) * wc + w
        return starts, offsets

    def fill_border(padded, ph, pw, channels):
        # the +1 padding: every channel bit set in the border pixels (and only there)
        batch, hp, wp, wc = padded.shape
        for w in range(wc):
            m = min(64, channels - 64 * w)
            ones = ~np.uint64(0) if m == 64 else (np.uint64(1) << np.uint64(m)) - np.uint64(1)
            for n in range(batch):
                for y in range(hp):
                    if y < ph or y >= hp - ph:
                        for x in range(wp):
                            padded[n, y, x, w] = ones
                    else:
                        for x in range(pw):
                            padded[n, y, x, w] = ones
                            padded[n, y, wp - 1 - x, w] = ones

    def pack_padded(x, ph, pw):
        # x (B, C, H, W) float32, C-contiguous -> (B, H + 2 ph, W + 2 pw, ceil(C/64)) words of
        # x >= 0: channel by channel, over a whole plane of H W pixels (contiguous in x, so
        # the loop vectorizes), into a plane of words, then into the padded layout
        batch, channels, h, w = x.shape
        wc = (channels + 63) // 64
        padded = np.empty((batch, h + 2 * ph, w + 2 * pw, wc), np.uint64)
        fill_border(padded, ph, pw, channels)
        planes = x.reshape(batch, channels, h * w)
        plane = np.empty(h * w, np.uint64)
        for n in range(batch):
            for k in range(wc):
                plane[:] = 0
                for j in range(min(64, channels - 64 * k)):
                    bit = np.uint64(1) << np.uint64(j)
                    src = planes[n, 64 * k + j]
                    for p in range(h * w):
                        plane[p] |= bit if src[p] >= 0 else np.uint64(0)
                for y in range(h):
                    for p in range(w):
                        padded[n, y + ph, pw + p, k] = plane[y * w + p]
        return padded

    def pack_padded_nhwc(x, ph, pw):
        # the same from x (B, H, W, C): the channels of a pixel are contiguous
        batch, h, w, channels = x.shape
        wc = (channels + 63) // 64
        padded = np.empty((batch, h + 2 * ph, w + 2 * pw, wc), np.uint64)
        fill_border(padded, ph, pw, channels)
        for n in range(batch):
            for y in range(h):
                for p in range(w):
                    for k in range(wc):
                        word = np.uint64(0)
                        for j in range(min(64, channels - 64 * k)):
                            if x[n, y, p, 64 * k + j] >= 0:
                                word |= np.uint64(1) << np.uint64(j)
                        padded[n, y + ph, pw + p, k] = word
        return padded

    def pad_words(words, ph, pw, channels):
        # words (B, H, W, Wc), already packed (a thresholded layer's output) -> padded
        batch, h, w, wc = words.shape
        padded = np.empty((batch, h + 2 * ph, w + 2 * pw, wc), np.uint64)
        fill_border(padded, ph, pw, channels)
        padded[:, ph:ph + h, pw:pw + w, :] = words
        return padded

    def pack_rows(x, out):
        # x (P, C) float32 -> out (P, ceil(C/64)) words, bit 1 where x >= 0
        p_rows, channels = x.shape
        for p in range(p_rows):
            for w in range(out.shape[1]):
                word = np.uint64(0)
                for j in range(min(64, channels - 64 * w)):
                    if x[p, 64 * w + j] >= 0:
                        word |= np.uint64(1) << np.uint64(j)
                out[p, w] = word

    fast = dict(boundscheck=False)
    fill_border = njit(**fast)(fill_border)
    tiles = njit(**fast)(tiles)

    @njit(parallel=True, **fast)
    def tiles_parallel(src, starts, offsets, b, n_cols, n_bits, out, thresholds, flip,
                       out_bits, n_chunks):
        for chunk in prange(n_chunks):  # the chunks run on numba's threads
            tiles(src, starts, offsets, b, n_cols, n_bits, out, thresholds, flip, out_bits,
                  chunk, n_chunks)

    pack_padded = njit(**fast)(pack_padded)

    @njit(parallel=True, **fast)
    def conv_parallel(x, ph, pw, starts, offsets, b, n_cols, n_bits, out, thresholds, flip,
                      out_bits, n_chunks):
        # the whole float-in conv on n_chunks threads in one compiled call (one dispatch):
        # the input packed on one thread, then each thread does a share of the tiles
        src = pack_padded(x, ph, pw).reshape(-1)
        for chunk in prange(n_chunks):
            tiles(src, starts, offsets, b, n_cols, n_bits, out, thresholds, flip, out_bits,
                  chunk, n_chunks)

    def pack_images(x, out, n0, n1):
        # images n0..n1 of x (B, C, H, W) float32 -> out (B, H W, ceil(C/64)) words of x >= 0,
        # a plane of H W pixels at a time (contiguous in x: the loop vectorizes)
        channels, hw = x.shape[1], x.shape[2] * x.shape[3]
        planes = x.reshape(x.shape[0], channels, hw)
        plane = np.empty(hw, np.uint64)
        for n in range(n0, n1):
            for k in range(out.shape[2]):
                plane[:] = 0
                for j in range(min(64, channels - 64 * k)):
                    bit = np.uint64(1) << np.uint64(j)
                    src = planes[n, 64 * k + j]
                    for p in range(hw):
                        plane[p] |= bit if src[p] >= 0 else np.uint64(0)
                out[n, :, k] = plane

    pack_images = njit(**fast)(pack_images)

    @njit(parallel=True, **fast)
    def pack_signs(x, out, n_chunks):
        # pack_images with the images shared among n_chunks threads
        batch = x.shape[0]
        for chunk in prange(n_chunks):
            pack_images(x, out, chunk * batch // n_chunks, (chunk + 1) * batch // n_chunks)

    @njit(**fast)
    def conv_serial(x, ph, pw, starts, offsets, b, n_cols, n_bits, thresholds, flip, oh, ow):
        # the whole float-in, float-out conv on one thread in one call: pack, then the tiles
        out = np.empty((x.shape[0], oh, ow, n_cols), np.float32)
        tiles(pack_padded(x, ph, pw).reshape(-1), starts, offsets, b, n_cols, n_bits,
              out.reshape(-1, n_cols), thresholds, flip, np.empty((0, 0), np.uint32), 0, 1)
        return out

    return SimpleNamespace(
        numba=numba, max_threads=numba.config.NUMBA_NUM_THREADS, tiles=tiles,
        tiles_parallel=tiles_parallel, conv_serial=conv_serial, conv_parallel=conv_parallel,
        pack_signs=pack_signs, pack_images=pack_images,
        conv_indices=njit(**fast)(conv_indices), pack_padded=pack_padded,
        pack_padded_nhwc=njit(**fast)(pack_padded_nhwc), pad_words=njit(**fast)(pad_words),
        pack_rows=njit(**fast)(pack_rows))


_NO_THRESHOLDS = np.empty(0, np.int64)
_NO_FLIP = np.empty(0, np.bool_)
_NO_BITS = np.empty((0, 0), np.uint32)
_NO_OUT = np.empty((0, 0), np.float32)


def parallel_threshold(macs: int) -> contextlib.AbstractContextManager:
    """A context: inside it, packed convs with at least ``macs`` binary MACs
    (``B OH OW O n``) share their work among torch's threads; smaller ones run on one
    thread. Outside it the threshold is :data:`PARALLEL_MIN_MACS`. ``parallel_threshold(0)``
    sends every conv through the parallel kernel, to measure what a second thread costs on a
    small layer."""
    check_int("macs", macs, 0)   # here, not on entering the block
    return _parallel_threshold(macs)


@contextlib.contextmanager
def _parallel_threshold(macs: int) -> Iterator[None]:
    global PARALLEL_MIN_MACS
    previous, PARALLEL_MIN_MACS = PARALLEL_MIN_MACS, macs
    try:
        yield
    finally:
        PARALLEL_MIN_MACS = previous


def _run_tiles(*args, threads: int | None = None) -> None:
    """Run the tiled kernel with one chunk of tiles per thread (``threads``, by default
    torch's thread setting, capped at numba's pool); on one thread, without opening a
    parallel region."""
    kernels = _numba_kernels()
    threads = min(torch.get_num_threads() if threads is None else threads, kernels.max_threads)
    if threads <= 1:
        kernels.tiles(*args, 0, 1)
    else:
        kernels.numba.set_num_threads(threads)
        kernels.tiles_parallel(*args, threads)


def gemm_instructions() -> dict[str, int]:
    """How often the compiled numba GEMM uses each popcount instruction (compiles it if
    needed): ``{"vpopcntq": n, "popcnt": n}`` from its x86 assembly. The register-tiled
    kernel shows ``vpopcntq`` where the CPU has AVX-512 VPOPCNTDQ (16 per step of its
    4 x 32 tile); without it, LLVM lowers the same vector popcount to other instructions."""
    a = torch.zeros(TILE_ROWS, 1, dtype=torch.int64)
    xnor_gemm(a, torch.zeros(1, TILE_COLS, dtype=torch.int64), 64, "numba", b_transposed=True)
    asm = "\n".join(_numba_kernels().tiles.inspect_asm().values()).lower()
    vector = asm.count("vpopcntq")
    return {"vpopcntq": vector, "popcnt": asm.count("popcnt") - vector}


def _as_u64(t: Tensor) -> np.ndarray:
    return t.detach().numpy().view(np.uint64)


def _float_array(x: Tensor) -> np.ndarray:
    """``x`` as a C-contiguous float32 numpy array, copying only when it must."""
    if x.dtype != torch.float32 or x.requires_grad or not x.is_contiguous():
        x = x.detach().float().contiguous()
    return x.numpy()


def _check_words(name: str, t: Tensor) -> None:
    if not isinstance(t, Tensor) or t.dtype != torch.int64 or t.ndim != 2:
        raise ValueError(f"{name} must be a 2-D int64 tensor of packed words, got "
                         f"{(t.dtype, tuple(t.shape)) if isinstance(t, Tensor) else type(t)}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (call .contiguous() first)")


def _pad_columns(bt: Tensor) -> np.ndarray:
    """``(K, N)`` int64 words -> flat ``(K, N_pad)`` uint64, N_pad the next multiple of
    TILE_COLS (zero columns: their results are computed and dropped)."""
    n_pad = -(-bt.shape[1] // TILE_COLS) * TILE_COLS
    if n_pad != bt.shape[1]:
        bt = F.pad(bt, (0, n_pad - bt.shape[1]))
    return _as_u64(bt.contiguous()).reshape(-1)


def xnor_gemm(a: Tensor, b: Tensor, n_bits: int, backend: str = "auto",
              b_transposed: bool = False) -> Tensor:
    """``a @ b.T`` for packed +-1 matrices: ``out[m, n] = n_bits - 2 popcount(a_m XOR b_n)``.

    Args:
        a: ``(M, W)`` int64 words (:func:`pack_signs` of an ``(M, n_bits)`` matrix).
        b: ``(N, W)`` words, or ``(W, N)`` with ``b_transposed`` (the layout the numba
            kernel reads; packed layers keep their weights that way).
        n_bits: the number of +-1 positions in a row, at most ``64 W`` (rows may hold
            padding bits anywhere, as long as they are 0 in both operands).
        backend: ``"auto"``, ``"torch"`` or ``"numba"``.

    Returns:
        ``(M, N)`` int32, equal to the float product of the unpacked matrices.
    """
    _check_words("a", a)
    _check_words("b", b)
    check_bool("b_transposed", b_transposed)
    words = a.shape[1]
    b_words = b.shape[0] if b_transposed else b.shape[1]
    if b_words != words:
        raise ValueError(f"a and b must have the same number of words per row, got "
                         f"{words} and {b_words}")
    if isinstance(n_bits, bool) or not isinstance(n_bits, int) or not 1 <= n_bits <= 64 * words:
        raise ValueError(f"n_bits must be an int in [1, {64 * words}] for {words} words, "
                         f"got {n_bits!r}")
    backend = _backend(backend)
    if backend == "numba":
        bt = b if b_transposed else b.t()
        out = torch.empty(a.shape[0], bt.shape[1], dtype=torch.int32)
        if a.shape[0] and bt.shape[1]:
            starts = np.arange(a.shape[0], dtype=np.int64) * words
            _run_tiles(_as_u64(a).reshape(-1), starts, np.arange(words, dtype=np.int64),
                 _pad_columns(bt), bt.shape[1], n_bits, out.numpy(), _NO_THRESHOLDS, _NO_FLIP,
                 _NO_BITS)
        return out
    rows = b.t() if b_transposed else b
    out = torch.empty(a.shape[0], rows.shape[0], dtype=torch.int32)
    step = max(1, (1 << 22) // max(1, rows.shape[0] * words))  # bound the (m, N, W) temporary
    for m0 in range(0, a.shape[0], step):
        x = a[m0:m0 + step, None, :] ^ rows[None, :, :]        # (m, N, W)
        out[m0:m0 + step] = (n_bits - 2 * popcount(x).sum(-1)).to(torch.int32)
    return out


def measure_xnor_gemm(m: int = 256, k: int = 2304, n: int = 256, threads: int = 1,
                      warmup: int = 10, repeats: int = 50, backend: str = "auto",
                      number: int | None = 1, until_stable: bool = False,
                      max_number: int = 64) -> dict:
    """Achieved binary MACs per second of :func:`xnor_gemm` at ``M x K x N`` (K in bits),
    against this CPU's popcount peak.

    ``achieved = M N K / median time``; ``peak = threads x 512 bits per VPOPCNTQ x 1 VPOPCNTQ
    per cycle x clock`` (64 bits per POPCNT without AVX-512 VPOPCNTDQ; see
    :func:`popcount_peak`, whose clock is the one the kernel reports: boost clocks can
    beat it); ``fraction_of_peak = achieved / peak``. The operands are random packed signs
    in the layout the packed layers use (``b`` as ``(W, N)``); timed with
    :func:`lightcnn.profile.time_interleaved` at ``threads`` threads.

    ``number``, ``until_stable`` and ``max_number`` are :func:`lightcnn.time_interleaved`'s:
    the smallest shape takes well under a millisecond, so ``number=None`` (samples of at
    least 1 ms) keeps the clock's granularity out of its spread.

    Returns:
        dict with ``shape``, ``threads``, ``median_ms``, ``iqr_ms``, ``stable`` (the IQR
        at most 20% of the median: else not a result), ``binary_macs``,
        ``binary_macs_per_s``, ``peak_binary_macs_per_s`` and ``fraction_of_peak`` (None
        where the clock is unknown).
    """
    from .profile import time_interleaved  # local: profile is heavier than this module needs

    for arg, value in (("m", m), ("k", k), ("n", n), ("threads", threads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg} must be a positive int, got {value!r}")
    check_int("number", number, 1, none=True)
    check_bool("until_stable", until_stable)
    check_int("max_number", max_number, 1)
    g = torch.Generator().manual_seed(0)
    a = _pack_bits(torch.rand(m, k, generator=g) < 0.5)
    bt = _pack_bits(torch.rand(n, k, generator=g) < 0.5).t().contiguous()
    t = time_interleaved({"xnor_gemm": lambda: xnor_gemm(a, bt, k, backend, b_transposed=True)},
                         threads, warmup, repeats, 1, number, until_stable,
                         max_number)["xnor_gemm"]
    macs = m * n * k
    achieved = macs / (t.median_ms / 1e3)
    peak = popcount_peak(threads)["peak_binary_macs_per_s"]
    return {"shape": f"{m}x{k}x{n}", "threads": threads, "median_ms": t.median_ms,
            "stable": t.stable,
            "iqr_ms": t.iqr_ms, "binary_macs": macs, "binary_macs_per_s": achieved,
            "peak_binary_macs_per_s": peak,
            "fraction_of_peak": None if peak is None else achieved / peak}


# Modules that act on each channel on its own, value by value: between a binary layer and
# the next sign they fold into one threshold per channel.
_ELEMENTWISE = (nn.BatchNorm1d, nn.BatchNorm2d, nn.Hardtanh, nn.ReLU, nn.ReLU6, nn.LeakyReLU,
                nn.PReLU, nn.Tanh, nn.Identity, nn.Dropout)


def _keeps_sign(module: nn.Module) -> bool:
    """Whether ``sign(module(x)) = sign(x)`` for every x: such a module may sit after a max
    pool (which commutes with the sign) without changing the bits."""
    if isinstance(module, nn.Hardtanh):
        return module.min_val < 0 <= module.max_val
    return isinstance(module, (nn.Identity, nn.Dropout))


def _bn_scale(bn: nn.Module) -> Tensor:
    """``gamma / sqrt(var + eps)`` per channel: the slope a batch norm gives its input."""
    gamma = bn.weight if bn.affine else torch.ones_like(bn.running_var)
    return gamma / torch.sqrt(bn.running_var + bn.eps)


@torch.no_grad()
def integer_thresholds(layer: BinaryConv2d | BinaryLinear, ops: Sequence[nn.Module] = (),
                       name: str = "layer") -> tuple[Tensor, Tensor]:
    """FINN's integer thresholds (Umuroglu et al. 2017, section 4.2.2): the comparison with
    one integer per output channel that replaces a binary layer's bias, the element-wise
    ``ops`` after it (its batch norm and activation) and the next layer's sign.

    A ``bnn`` layer's output channel ``o`` is ``y = d + b_o`` for the integer dot product
    ``d`` of n signs (``d`` in {-n, -n+2, ..., n}; ``bireal`` multiplies ``d`` by
    ``alpha_o > 0`` first, which moves the threshold only); a batch norm makes it
    ``s_o (y - mu_o) + beta_o`` with slope ``s_o = gamma_o / sqrt(var_o + eps)``, and
    ``sign(.) = +1`` where that is >= 0, that is where

        d >= t_o = mu_o - b_o - beta_o / s_o    if s_o > 0   (``descending[o]`` False)
        d <= t_o                                 if s_o < 0   (the comparison flips)

    An activation such as Hardtanh keeps the sign and changes nothing. The real-valued
    ``t_o`` can disagree with the float32 network by one rounding at a tie, so the threshold
    is not computed from the formula: ``layer``'s arithmetic and ``ops`` are evaluated in
    float32 on all n + 1 values ``d`` can take, and ``t_o`` is the smallest (largest, when
    descending) ``d`` whose sign is +1. The bits then equal the float simulation's exactly.
    A channel whose sign never changes gets ``t_o = -n`` (always +1) or ``n + 2`` (never).

    Args:
        layer: a binary conv or linear layer with binary activations and no activation
            scale (``bnn``, ``bireal``; XNOR-Net's ``K`` needs the real-valued input).
        ops: the element-wise modules between its output and the next sign, in order
            (batch norms, Hardtanh/ReLU-like activations, dropout, identity).
        name: the layer's name, for error messages.

    Returns:
        ``(thresholds, descending)``: ``(O,)`` int64 on the dot product and ``(O,)`` bool;
        the next layer's input bit is ``d <= t`` where ``descending``, else ``d >= t``.

    Raises:
        ValueError (naming the layer): a layer without binary activations or with an
            activation scale; an op that is not element-wise per channel (the output is
            then not followed by a sign of itself); a batch norm with scale 0 in some
            channel, or a weight scale alpha of 0 (no threshold can express "ignore the
            input"); ops whose sign is not monotone in ``d``.
        TypeError: ``ops`` is not a list or tuple of modules, or ``name`` not a str.
    """
    check_str("name", name)
    check_sequence("ops", ops, nn.Module)
    if not isinstance(layer, (BinaryConv2d, BinaryLinear)) or not layer.scheme.binary_activations:
        raise ValueError(f"layer {name!r} must be a BinaryConv2d or BinaryLinear with binary "
                         f"activations (scheme 'bnn'), got {type(layer).__name__}")
    if layer.scheme.activation_scale:
        raise ValueError(f"layer {name!r} (scheme {layer.scheme.name!r}) scales its output by "
                         "XNOR-Net's K, a function of its real-valued input: its output is "
                         "not a function of the integer dot product (use scheme 'bnn')")
    if layer.scheme.weight_scale:
        zero = (layer.weight_alpha() == 0).nonzero().flatten().tolist()
        if zero:
            raise ValueError(f"layer {name!r}: its weight scale alpha is 0 in channel(s) "
                             f"{zero[:8]}: the output there ignores the dot product, and no "
                             "threshold on it expresses that")
    ops = list(ops)
    for op in ops:
        if not isinstance(op, _ELEMENTWISE):
            raise ValueError(f"layer {name!r} is followed by {type(op).__name__}, not by an "
                             "element-wise op and a sign: its output cannot be a threshold "
                             f"(allowed before the sign: "
                             f"{', '.join(t.__name__ for t in _ELEMENTWISE)})")
        if isinstance(op, (nn.BatchNorm1d, nn.BatchNorm2d)):
            zero = (_bn_scale(op) == 0).nonzero().flatten().tolist()
            if zero:
                raise ValueError(f"layer {name!r}: its batch norm has scale 0 in channel(s) "
                                 f"{zero[:8]}: the sign ignores the dot product there, and no "
                                 "threshold on it expresses that")
    n = layer.weight[0].numel()
    out_channels = layer.weight.shape[0]
    d = torch.arange(-n, n + 1, 2, dtype=torch.float32)        # every value d can take
    conv = isinstance(layer, BinaryConv2d)
    # the layer's own arithmetic on d, as BinaryConv2d.forward does it, then the ops
    y = (d.view(1, 1, -1, 1).expand(1, out_channels, n + 1, 1) if conv
         else d.view(-1, 1).expand(n + 1, out_channels)).contiguous()
    view = (1, -1, 1, 1) if conv else (1, -1)
    if layer.scheme.weight_scale:
        y = y * layer.weight_alpha().view(view)
    if layer.bias is not None:
        y = y + layer.bias.view(view)
    for op in ops:
        y = copy.deepcopy(op).eval()(y)
    plus = (y >= 0)[0, :, :, 0] if conv else (y >= 0).t()      # (O, n + 1), d ascending
    rising = (plus[:, 1:] >= plus[:, :-1]).all(1)
    falling = (plus[:, 1:] <= plus[:, :-1]).all(1)
    if not bool((rising | falling).all()):
        bad = (~(rising | falling)).nonzero().flatten().tolist()
        raise ValueError(f"layer {name!r}: the sign after its ops is not monotone in the dot "
                         f"product in channel(s) {bad[:8]}: no single threshold exists")
    descending = ~rising                     # constant channels count as ascending
    index = torch.arange(n + 1).expand(out_channels, -1)
    first = torch.where(plus, index, n + 1).min(1).values      # n + 1: never +1
    last = torch.where(plus, index, -1).max(1).values          # -1: never +1
    thresholds = torch.where(descending, -n + 2 * last, -n + 2 * first)
    return thresholds.to(torch.int64), descending


def _popcount_thresholds(thresholds: Tensor, descending: Tensor, n_bits: int
                         ) -> tuple[np.ndarray, np.ndarray]:
    """The same comparison on the popcount ``pc`` of ``a XOR w`` (``d = n - 2 pc``), as the
    kernel makes it: ``bit = (pc <= T) XOR flip``. ``d >= t`` is ``pc <= floor((n - t)/2)``;
    ``d <= t`` is ``pc >= ceil((n - t)/2)``, the negation of ``pc <= ceil((n - t)/2) - 1``."""
    gap = n_bits - thresholds
    t = torch.where(descending, -((-gap) // 2) - 1, gap // 2)
    # padded to whole tiles with columns whose bit is 0 (pc <= -1 never holds)
    pad = -len(t) % TILE_COLS
    return (np.concatenate([t.numpy(), np.full(pad, -1)]).astype(np.int64),
            np.concatenate([descending.numpy(), np.zeros(pad, np.bool_)]).astype(np.bool_))


def _threshold_bits(dots: Tensor, thresholds: Tensor, descending: Tensor) -> Tensor:
    """``(M, O)`` dot products -> ``(M, ceil(O/64))`` words of the next layer's input."""
    return _pack_bits(torch.where(descending, dots <= thresholds, dots >= thresholds))


def _check_packed_args(thresholds, packed_input) -> None:
    """The packed layers' ``thresholds`` (None or two tensors) and ``packed_input`` (a bool);
    the thresholds' shapes are checked against the layer in ``_init_common``."""
    if thresholds is not None and not (isinstance(thresholds, (tuple, list))
                                       and len(thresholds) == 2
                                       and all(isinstance(t, Tensor) for t in thresholds)):
        text = repr(thresholds)
        text = text if len(text) <= 80 else text[:77] + "..."
        raise TypeError("thresholds must be None or a pair (thresholds, descending) of "
                        f"tensors from integer_thresholds, got {type(thresholds).__name__}: "
                        f"{text}")
    check_bool("packed_input", packed_input)


class _PackedLayer(nn.Module):
    """What the packed conv and linear layers share: thresholds, the kernel's cached layout."""

    def _init_common(self, layer: BinaryConv2d | BinaryLinear, backend: str,
                     thresholds: tuple[Tensor, Tensor] | None, packed_input: bool) -> None:
        self.backend = _backend(backend)
        self.scheme = layer.scheme
        self.packed_input = bool(packed_input)
        if self.packed_input and layer.scheme.activation_scale:
            raise ValueError("a layer with XNOR-Net's activation scale needs its real-valued "
                             "input, not packed words (packed_input=True)")
        with torch.no_grad():
            alpha = layer.weight_alpha() if layer.scheme.weight_scale else None
        self.register_buffer("alpha", alpha)
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().clone())
        if thresholds is not None:
            t, descending = thresholds
            if t.shape != (layer.weight.shape[0],) or descending.shape != t.shape:
                raise ValueError(f"thresholds must be two ({layer.weight.shape[0]},) tensors, "
                                 f"got {tuple(t.shape)} and {tuple(descending.shape)}")
            t, descending = t.to(torch.int64).clone(), descending.to(torch.bool).clone()
        else:
            t = descending = None
        self.register_buffer("thresholds", t)
        self.register_buffer("descending", descending)
        self._cache: dict = {}
        self._plans: dict = {}

    def __getstate__(self) -> dict:
        # the caches hold numpy arrays and closures built from this module's buffers: a copy
        # or an unpickled module rebuilds its own (closures do not pickle)
        state = self.__dict__.copy()
        state["_cache"], state["_plans"] = {}, {}
        return state

    def _cached(self, key: str, build, *tensors: Tensor | None):
        """A value derived from ``tensors`` (buffers), rebuilt when one of them is replaced or
        changed in place (``load_state_dict`` copies into them)."""
        version = tuple((t.data_ptr(), t._version) for t in tensors if t is not None)
        hit = self._cache.get(key)
        if hit is None or hit[0] != version:
            if len(self._cache) > 16:   # input shapes come and go: keep the cache small
                self._cache.clear()
            hit = (version, build())
            self._cache[key] = hit
        return hit[1]

    def _operands(self, shape: tuple, indices) -> tuple:
        """What the numba kernel reads besides the input, per input shape: the kernel padded
        to whole tiles, the thresholds on the popcount (or empty arrays), and the two index
        arrays ``indices()`` returns. One dictionary lookup per call."""
        w, t = self.weight_bits, self.thresholds
        key = (shape, w.data_ptr(), w._version, None if t is None else
               (t.data_ptr(), t._version, self.descending.data_ptr(), self.descending._version))
        hit = self._cache.get(key)
        if hit is None:
            if len(self._cache) > 16:   # input shapes and versions come and go
                self._cache.clear()
            thresholds = ((_NO_THRESHOLDS, _NO_FLIP) if t is None else
                          _popcount_thresholds(t, self.descending, self.n_bits))
            hit = (_pad_columns(self.kernel_words()), *thresholds, *indices())
            self._cache[key] = hit
        return hit

    def _scale(self, y: Tensor, x: Tensor | None) -> Tensor:
        """The float work after the integer dot products: alpha, K, bias."""
        if self.alpha is not None:
            y = y * self.alpha.view(1, -1, *[1] * (y.ndim - 2))
        if self.scheme.activation_scale:
            y = y * self._activation_scale(x)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, *[1] * (y.ndim - 2))
        return y


class PackedBinaryConv2d(_PackedLayer):
    """Inference-only binary conv (``bnn``/``xnor``) that runs on packed bits.

    Stores the signs of the weights packed along ``(kh, kw, C)`` (``ceil(kh kw C / 64)``
    words per output channel: what :func:`lightcnn.binary.packed_weight_bytes` counts),
    alpha and the bias. The kernel's layout (channels of each tap packed separately, padded
    to whole words) is rebuilt from them and not saved.

    Args:
        thresholds: ``(thresholds, descending)`` from :func:`integer_thresholds`: the layer
            then returns the next layer's input bits, ``(B, OH, OW, ceil(O/64))`` int64
            words, instead of float outputs.
        packed_input: the input is such words (from a thresholded layer) instead of a
            float ``(B, C, H, W)`` tensor.
    """

    def __init__(self, layer: BinaryConv2d, backend: str = "auto",
                 thresholds: tuple[Tensor, Tensor] | None = None, packed_input: bool = False):
        super().__init__()
        _check_packed_args(thresholds, packed_input)
        if not isinstance(layer, BinaryConv2d) or not layer.scheme.binary_activations:
            raise ValueError("layer must be a BinaryConv2d with binary activations "
                             "(scheme 'bnn' or 'xnor')")
        if layer.groups != 1 or layer.dilation != (1, 1):
            raise ValueError("the packed conv supports groups=1 and dilation=1")
        self.in_channels, self.out_channels = layer.in_channels, layer.out_channels
        self.kernel_size, self.stride, self.padding = (layer.kernel_size, layer.stride,
                                                       layer.padding)
        self.n_bits = self.kernel_size[0] * self.kernel_size[1] * self.in_channels
        with torch.no_grad():
            signs = torch.where(layer.weight >= 0, 1.0, -1.0)      # (O, C, kh, kw)
            taps = signs.permute(0, 2, 3, 1).reshape(self.out_channels, -1)
            self.register_buffer("weight_bits", pack_signs(taps))   # (O, ceil(K/64))
        self._init_common(layer, backend, thresholds, packed_input)

    def kernel_words(self) -> Tensor:
        """``(kh kw ceil(C/64), O)`` words: each tap's channels packed on their own."""
        def build():
            kh, kw = self.kernel_size
            c = self.in_channels
            signs = unpack_signs(self.weight_bits, kh * kw * c)
            taps = signs.view(self.out_channels, kh * kw, c) > 0
            words = _pack_bits(taps)                                # (O, kh kw, ceil(C/64))
            return words.reshape(self.out_channels, -1).t().contiguous()
        return self._cached("kernel_words", build, self.weight_bits)

    def pad_words(self, words: Tensor) -> Tensor:
        """``(B, H, W, Wc)`` words -> ``(B, H + 2p, W + 2p, Wc)``, padded with the word of +1s
        (bits set for the C channels, 0 above)."""
        b, h, w, n_words = words.shape
        ph, pw = self.padding
        padded = _ones_words(self.in_channels).expand(b, h + 2 * ph, w + 2 * pw, n_words).clone()
        padded[:, ph:ph + h, pw:pw + w] = words
        return padded

    def pack_input(self, x: Tensor) -> Tensor:
        """Step 1: ``(B, C, H, W)`` float -> ``(B, H + 2p, W + 2p, ceil(C/64))`` words of the
        signs, padded with the word of +1s (bits set for the C channels, 0 above)."""
        if x.shape[1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got {x.shape[1]}")
        if self.backend == "numba":
            ph, pw = self.padding
            padded = _numba_kernels().pack_padded(_float_array(x), ph, pw)
            return torch.from_numpy(padded.view(np.int64))
        return self.pad_words(_pack_bits(x.permute(0, 2, 3, 1) >= 0))

    def im2col(self, padded: Tensor) -> Tensor:
        """Step 2: im2col on words, ``(B, Hp, Wp, Wc) -> (B OH OW, kh kw Wc)``: each row
        holds one output position's window, in the kernel's (kh, kw, word) order."""
        kh, kw = self.kernel_size
        sh, sw = self.stride
        cols = padded.unfold(1, kh, sh).unfold(2, kw, sw)          # (B, OH, OW, Wc, kh, kw)
        b, oh, ow, n_words = cols.shape[:4]
        return cols.permute(0, 1, 2, 4, 5, 3).reshape(b * oh * ow, kh * kw * n_words)

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        """``(OH, OW)`` for an ``h x w`` input."""
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1

    def _activation_scale(self, x: Tensor) -> Tensor:
        return activation_scale_map(x, self.kernel_size, self.stride, self.padding)

    def _check_input(self, x: Tensor) -> tuple[int, int, int]:
        words = -(-self.in_channels // 64)
        if self.packed_input:
            if not isinstance(x, Tensor) or x.dtype != torch.int64 or x.ndim != 4 \
                    or x.shape[-1] != words:
                raise ValueError(f"expected packed words (B, H, W, {words}) int64, got "
                                 f"{(x.dtype, tuple(x.shape)) if isinstance(x, Tensor) else x}")
            return x.shape[0], x.shape[1], x.shape[2]
        if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected a (B, {self.in_channels}, H, W) tensor, got "
                             f"{tuple(x.shape) if isinstance(x, Tensor) else x}")
        return x.shape[0], x.shape[2], x.shape[3]

    def forward(self, x: Tensor) -> Tensor:
        if self.backend == "numba":
            return self._numba_forward(x)
        b, h, w = self._check_input(x)
        oh, ow = self.output_size(h, w)
        padded = self.pad_words(x) if self.packed_input else self.pack_input(x)
        dots = xnor_gemm(self.im2col(padded), self.kernel_words(), self.n_bits, "torch",
                         b_transposed=True)                         # (B OH OW, O) int32
        if self.thresholds is not None:
            return _threshold_bits(dots, self.thresholds, self.descending).view(b, oh, ow, -1)
        return self._scale(dots.view(b, oh, ow, -1).permute(0, 3, 1, 2).float(), x)

    def _numba_forward(self, x: Tensor) -> Tensor:
        # Everything that depends only on the input's shape, layout and dtype, the thread
        # count and the buffers (the checks, the operands, which kernel) is decided once, in
        # a plan kept under that key: at 64 channels on a 14x14 map the kernel takes about
        # 10 us, and the Python around it used to take as long again (issue 31).
        if not isinstance(x, Tensor):
            self._check_input(x)                                    # raises, naming x
        threads = min(torch.get_num_threads(), _numba_kernels().max_threads)
        buffers = self._buffers     # not self.weight_bits: nn.Module.__getattr__ is slow
        w, t = buffers["weight_bits"], buffers["thresholds"]
        key = (x.shape, x.stride(), x.dtype, x.requires_grad, threads, PARALLEL_MIN_MACS,
               w.data_ptr(), w._version)
        if t is not None:
            key += (t.data_ptr(), t._version, buffers["descending"]._version)
        run = self._plans.get(key)
        if run is None:
            self._check_input(x)
            if len(self._plans) > 16:   # input shapes and versions come and go
                self._plans.clear()
            run = self._plans[key] = self._numba_plan(x, threads)
        y = run(x)
        if t is None and (buffers["alpha"] is not None or buffers["bias"] is not None
                          or self.scheme.activation_scale):
            y = self._scale(y, x)
        return y

    def _numba_plan(self, x: Tensor, threads: int):
        """The numba path for inputs like ``x`` on ``threads`` threads: a function of the
        input that runs steps 1-3 (pack, im2col, XNOR GEMM) and returns the dot products
        (B, O, OH, OW) float32 in channels-last memory, or the thresholded words."""
        kernels = _numba_kernels()
        b, h, w = self._check_input(x)
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        oh, ow = self.output_size(h, w)
        o, n_bits, c = self.out_channels, self.n_bits, self.in_channels
        kernel, t, flip, starts, offsets = self._operands((b, h, w), lambda: kernels.conv_indices(
            b, h + 2 * ph, w + 2 * pw, -(-c // 64), kh, kw, sh, sw, oh, ow))
        plain = x.dtype == torch.float32 and not x.requires_grad
        if self.packed_input:
            def pack(x):
                return kernels.pad_words(_as_u64(x), ph, pw, c)
        elif not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
            def pack(x):
                return kernels.pack_padded_nhwc(
                    x.detach().permute(0, 2, 3, 1).float().numpy(), ph, pw)
        elif x.is_contiguous() and plain:
            def pack(x):
                return kernels.pack_padded(x.numpy(), ph, pw)
        else:
            def pack(x):
                return kernels.pack_padded(_float_array(x), ph, pw)
        if b * oh * ow * o * n_bits < PARALLEL_MIN_MACS:
            threads = 1     # too little work to share: a parallel region costs more than it saves
        if self.thresholds is not None:
            def run(x):
                words = torch.zeros(b * oh * ow, -(-o // 64), dtype=torch.int64)
                _run_tiles(pack(x).reshape(-1), starts, offsets, kernel, o, n_bits, _NO_OUT, t,
                           flip, words.numpy().view(np.uint32), threads=threads)
                return words.view(b, oh, ow, -1)
            return run
        if threads <= 1 and not self.packed_input and x.is_contiguous():
            get = Tensor.numpy if plain else _float_array

            def run(x):    # the common case on one thread: one compiled call does steps 1 to 3
                dots = kernels.conv_serial(get(x), ph, pw, starts, offsets, kernel, o, n_bits,
                                           t, flip, oh, ow)
                # (B, OH, OW, O) -> an NCHW view in channels-last memory, as oneDNN likes it
                return torch.from_numpy(dots.transpose(0, 3, 1, 2))
            return run

        if not self.packed_input and x.is_contiguous():
            get = Tensor.numpy if plain else _float_array

            def run(x):    # the same on several threads, still one compiled call
                dots = np.empty((b, oh, ow, o), np.float32)
                kernels.numba.set_num_threads(threads)
                kernels.conv_parallel(get(x), ph, pw, starts, offsets, kernel, o, n_bits,
                                      dots.reshape(-1, o), t, flip, _NO_BITS, threads)
                return torch.from_numpy(dots.transpose(0, 3, 1, 2))
            return run

        def run(x):
            # steps 2 and 3: the XNOR GEMM reads the windows in place, through two index arrays
            dots = np.empty((b, oh, ow, o), np.float32)
            _run_tiles(pack(x).reshape(-1), starts, offsets, kernel, o, n_bits,
                       dots.reshape(-1, o), t, flip, _NO_BITS, threads=threads)
            return torch.from_numpy(dots.transpose(0, 3, 1, 2))
        return run

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, scheme={self.scheme.name}, "
                f"backend={self.backend}"
                + (", packed_input=True" if self.packed_input else "")
                + (", thresholds=True" if self.thresholds is not None else ""))


class PackedBinaryLinear(_PackedLayer):
    """Inference-only binary linear layer (``bnn``/``xnor``) on packed bits; ``thresholds``
    and ``packed_input`` as for :class:`PackedBinaryConv2d`, with ``(B, ceil(F/64))`` words."""

    def __init__(self, layer: BinaryLinear, backend: str = "auto",
                 thresholds: tuple[Tensor, Tensor] | None = None, packed_input: bool = False):
        super().__init__()
        _check_packed_args(thresholds, packed_input)
        if not isinstance(layer, BinaryLinear) or not layer.scheme.binary_activations:
            raise ValueError("layer must be a BinaryLinear with binary activations")
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.n_bits = self.in_features
        with torch.no_grad():
            self.register_buffer("weight_bits",
                                 pack_signs(torch.where(layer.weight >= 0, 1.0, -1.0)))
        self._init_common(layer, backend, thresholds, packed_input)

    def kernel_words(self) -> Tensor:
        """``(ceil(F/64), O)`` words: the weights as the kernel reads them."""
        return self._cached("kernel_words", lambda: self.weight_bits.t().contiguous(),
                            self.weight_bits)

    def _activation_scale(self, x: Tensor) -> Tensor:
        return x.abs().mean(-1, keepdim=True)

    def forward(self, x: Tensor) -> Tensor:
        words_in = -(-self.in_features // 64)
        if self.packed_input:
            if x.dtype != torch.int64 or x.ndim != 2 or x.shape[1] != words_in:
                raise ValueError(f"expected packed words (B, {words_in}) int64, got "
                                 f"{(x.dtype, tuple(x.shape))}")
            words = x.contiguous()
        elif self.backend == "numba":
            words = torch.empty(x.shape[0], words_in, dtype=torch.int64)
            _numba_kernels().pack_rows(x.detach().float().contiguous().numpy(), _as_u64(words))
        else:
            words = _pack_bits(x >= 0)
        if self.backend == "numba" and words.shape[0]:
            batch = words.shape[0]
            kernel, t, flip, starts, offsets = self._operands(words.shape, lambda: (
                np.arange(batch, dtype=np.int64) * words_in, np.arange(words_in, dtype=np.int64)))
            src = _as_u64(words).reshape(-1)
            if self.thresholds is not None:
                out = torch.zeros(batch, -(-self.out_features // 64), dtype=torch.int64)
                _run_tiles(src, starts, offsets, kernel, self.out_features, self.n_bits, _NO_OUT,
                           t, flip, out.numpy().view(np.uint32))
                return out
            y = torch.empty(batch, self.out_features, dtype=torch.float32)
            _run_tiles(src, starts, offsets, kernel, self.out_features, self.n_bits, y.numpy(),
                       t, flip, _NO_BITS)
        else:
            dots = xnor_gemm(words, self.weight_bits, self.in_features, "torch")
            if self.thresholds is not None:
                return _threshold_bits(dots, self.thresholds, self.descending)
            y = dots.float()
        return self._scale(y, x)


class PackedMaxPool2d(nn.Module):
    """Max pooling on packed signs, ``(B, H, W, Wc)`` words -> ``(B, OH, OW, Wc)``.

    The largest of some +-1 values is +1 if any is +1: the bitwise OR of their bits. It is
    the max pool of the float network because sign is monotone, ``sign(max x) = max sign(x)``.
    Padding is the bit of -1 (0), which never wins, as max pooling's -inf padding.
    """

    def __init__(self, pool: nn.MaxPool2d):
        super().__init__()
        if not isinstance(pool, nn.MaxPool2d):
            raise ValueError(f"pool must be an nn.MaxPool2d, got {type(pool).__name__}")
        pair = nn.modules.utils._pair
        if pair(pool.dilation) != (1, 1) or pool.ceil_mode or pool.return_indices:
            raise ValueError("the packed max pool supports dilation=1, ceil_mode=False and "
                             "return_indices=False")
        self.kernel_size, self.stride, self.padding = (pair(pool.kernel_size),
                                                       pair(pool.stride or pool.kernel_size),
                                                       pair(pool.padding))

    def forward(self, words: Tensor) -> Tensor:
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        x = F.pad(words, (0, 0, pw, pw, ph, ph))                   # pad W and H with 0 words
        oh = (x.shape[1] - kh) // sh + 1
        ow = (x.shape[2] - kw) // sw + 1
        out = torch.zeros(x.shape[0], oh, ow, x.shape[3], dtype=torch.int64)
        for i in range(kh):
            for j in range(kw):
                out |= x[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]
        return out

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class PackSigns(nn.Module):
    """The signs of a float feature map as packed words, ``(B, C, H, W)`` float ->
    ``(B, H, W, ceil(C/64))`` int64, bit ``c % 64`` of word ``c // 64`` set where
    ``x >= 0`` (+1), as the packed layers read them.

    :func:`pack_model` puts it in front of the max pools before the first binary layer, so
    they run on words (:class:`PackedMaxPool2d`) instead of float maps 32x larger:
    ``sign(max x) = max sign(x)``.
    """

    def __init__(self, backend: str = "auto"):
        super().__init__()
        self.backend = _backend(backend)

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.ndim != 4 or not x.is_floating_point():
            raise ValueError(f"expected a float (B, C, H, W) tensor, got "
                             f"{(x.dtype, tuple(x.shape)) if isinstance(x, Tensor) else x}")
        b, c, h, w = x.shape
        if self.backend != "numba":
            return _pack_bits(x.permute(0, 2, 3, 1) >= 0)
        kernels = _numba_kernels()
        words = torch.empty(b, h, w, -(-c // 64), dtype=torch.int64)
        out = words.numpy().view(np.uint64).reshape(b, h * w, -1)
        threads = min(torch.get_num_threads(), kernels.max_threads, b)
        if threads <= 1 or x.numel() < PARALLEL_MIN_MACS // 64:
            kernels.pack_images(_float_array(x), out, 0, b)
        else:
            kernels.numba.set_num_threads(threads)
            kernels.pack_signs(_float_array(x), out, threads)
        return words

    def extra_repr(self) -> str:
        return f"backend={self.backend}"


class _LeafTracer(torch.fx.Tracer):
    """torch.fx tracer that keeps binary layers as single nodes."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (BinaryConv2d, BinaryLinear)) or super().is_leaf_module(m, qualname)


def _integer_plan(model: nn.Module) -> dict[str, dict]:
    """For each binary layer that feeds another: its thresholds, the modules they replace
    (removed), the max pools on the way (to run on words) and the consumer's name.

    Follows the fx graph from each binary layer's output through single-use modules:
    element-wise ones (folded), then max pools and sign-keeping ones, to a binary layer. A
    layer from which no binary layer can be reached keeps its float output (the network's
    last binary layers); one that reaches a binary layer another way is refused by name.
    """
    try:
        graph = _LeafTracer().trace(model)
    except Exception as e:   # fx raises many types for untraceable control flow
        raise ValueError(f"thresholds=True needs a model torch.fx can trace: {e}") from e
    modules = dict(model.named_modules())
    binary = {n for n, m in binary_layers(model).items() if m.scheme.binary_activations}
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")

    def reaches_binary(node) -> str | None:
        seen, todo = set(), list(node.users)
        while todo:
            user = todo.pop()
            if user in seen:
                continue
            seen.add(user)
            if user.op == "call_module" and user.target in binary:
                return user.target
            todo.extend(user.users)
        return None

    def describe(node) -> str:
        if node.op == "call_module":
            return f"{type(modules[node.target]).__name__} {node.target!r}"
        return f"{node.op} {getattr(node.target, '__name__', node.target)!r}"

    plan = {}
    for node in graph.nodes:
        if node.op != "call_module" or node.target not in binary:
            continue
        name, cur, ops, pools, removed, pooled = node.target, node, [], [], [], False
        consumer, blocker = None, None
        while consumer is None and blocker is None:
            users = list(cur.users)
            if len(users) != 1:
                blocker = f"{len(users)} uses of {describe(cur)}"
                break
            user = users[0]
            module = modules.get(user.target) if user.op == "call_module" else None
            if user.op == "call_module" and user.target in binary:
                consumer = user.target
            elif isinstance(module, nn.MaxPool2d):
                pools.append(user.target)
                pooled = True
            elif module is not None and not pooled and isinstance(module, _ELEMENTWISE):
                ops.append(user.target)
            elif module is not None and pooled and _keeps_sign(module):
                removed.append(user.target)
            else:
                blocker = describe(user)
            cur = user
        if consumer is None:
            target = reaches_binary(cur)
            if target is not None:
                raise ValueError(
                    f"layer {name!r} feeds binary layer {target!r} through {blocker}: its "
                    "output is not followed by sign alone, so it cannot end in integer "
                    "thresholds (allowed between them: element-wise ops, then max pools and "
                    "sign-keeping ops)")
            continue
        shared = [m for m in ops + pools + removed if calls[m] != 1]
        if shared:
            raise ValueError(f"layer {name!r}: module(s) {shared} between it and {consumer!r} "
                             "are also used elsewhere; they cannot be folded away")
        if isinstance(modules[name], BinaryConv2d) != isinstance(modules[consumer], BinaryConv2d):
            raise ValueError(f"layer {name!r} feeds {consumer!r} of another kind (conv and "
                             "linear): words cannot be flattened between them here")
        thresholds = integer_thresholds(modules[name], [modules[m] for m in ops], name)
        if modules[consumer].scheme.activation_scale:
            raise ValueError(f"layer {consumer!r} (scheme "
                             f"{modules[consumer].scheme.name!r}) needs its real-valued input "
                             "for XNOR-Net's K, so its input cannot stay packed")
        plan[name] = {"thresholds": thresholds, "removed": ops + removed, "pools": pools,
                      "consumer": consumer}
    return plan, _first_inputs(graph, modules, binary, calls, plan)


def _first_inputs(graph, modules: dict, binary: set, calls: Counter, plan: dict
                  ) -> dict[str, list[str]]:
    """For each binary conv whose input is a float map (no binary layer feeds it) reached
    through max pools: the modules between the float producer and it, in order (max pools
    and sign-keeping ones such as the Hardtanh before the pool). Packing the signs before
    them lets the pools run on words: ``sign(max x) = max sign(x)``, and a sign-keeping
    module changes no sign."""
    consumers = {p["consumer"] for p in plan.values()}
    chains = {}
    for node in graph.nodes:
        if (node.op != "call_module" or node.target not in binary
                or node.target in consumers
                or not isinstance(modules[node.target], BinaryConv2d)
                or modules[node.target].scheme.activation_scale):
            continue
        chain, cur = [], node.args[0] if node.args else None
        while (isinstance(cur, torch.fx.Node) and cur.op == "call_module"
               and len(cur.users) == 1 and calls[cur.target] == 1
               and (isinstance(modules[cur.target], nn.MaxPool2d)
                    or _keeps_sign(modules[cur.target]))):
            chain.insert(0, cur.target)
            cur = cur.args[0] if cur.args else None
        if any(isinstance(modules[m], nn.MaxPool2d) for m in chain):
            chains[node.target] = chain
    return chains


def pack_model(model: nn.Module, backend: str = "auto", thresholds: bool = False) -> nn.Module:
    """A copy of a binarized model whose ``bnn``/``xnor`` layers run on packed bits.

    Everything else (the full-precision first and last layers, batch norm, pooling) is
    unchanged, so the copy computes what the float simulation computes.

    With ``thresholds=True`` (FINN), every binary layer that feeds another binary layer
    returns that layer's input bits instead of floats: its batch norm, its activation and
    the next sign become integer thresholds (:func:`integer_thresholds`), the modules between
    them are removed, and max pools on the way run on the words (:class:`PackedMaxPool2d`).
    From the first binary layer's input to the last binary layer's output the network then
    holds only bits and integers; the last binary layers return floats as before. Where max
    pools (and sign-keeping modules such as Hardtanh) sit between a float layer and the first
    binary conv, the signs are packed before them (:class:`PackSigns`) and the pools run on
    words, 32x less memory than the float maps. The bits equal the float simulation's signs
    exactly.

    Raises:
        ValueError: the model has no layer with binary weights and activations (weight-only
            schemes keep real activations, which a bit cannot hold); with thresholds, a
            binary layer that feeds another one other than through element-wise ops, max
            pools and a sign, an XNOR-Net layer in such a chain, or a zero batch-norm scale
            (each named).
        TypeError: ``model`` is not a module, or ``thresholds`` not a bool.
    """
    check_module("model", model)
    _backend(backend)
    check_bool("thresholds", thresholds)
    layers = {n: m for n, m in binary_layers(model).items() if m.scheme.binary_activations}
    if not layers:
        raise ValueError("model has no binary layer with binary activations to pack "
                         "(binarize it with scheme 'bnn' or 'xnor')")
    packed = copy.deepcopy(model).eval()
    plan, first = _integer_plan(packed) if thresholds else ({}, {})
    consumers = {p["consumer"] for p in plan.values()} | set(first)
    for name, layer in layers.items():
        cls = PackedBinaryConv2d if isinstance(layer, BinaryConv2d) else PackedBinaryLinear
        packed.set_submodule(name, cls(layer, backend, plan[name]["thresholds"] if name in plan
                                       else None, packed_input=name in consumers))
    for p in plan.values():
        for name in p["removed"]:
            packed.set_submodule(name, nn.Identity())
        for name in p["pools"]:
            packed.set_submodule(name, PackedMaxPool2d(packed.get_submodule(name)))
    for chain in first.values():   # the signs packed at the start of the chain
        for i, name in enumerate(chain):
            module = packed.get_submodule(name)
            module = PackedMaxPool2d(module) if isinstance(module, nn.MaxPool2d) else None
            if i == 0:
                module = nn.Sequential(PackSigns(backend), module) if module else PackSigns(backend)
            packed.set_submodule(name, module or nn.Identity())
    return packed
