"""Bit-packed binary inference: signs in 64-bit words, XNOR and popcount, a binary conv.

Rastegari et al., "XNOR-Net", arXiv 1603.05279, section 3.2: with ``a, b`` in {-1, +1}^n
stored as bits (1 for +1, 0 for -1), the dot product is

    a . b = (#equal) - (#different) = n - 2 * popcount(a XOR b)

so 64 multiply-accumulates cost one XOR and one POPCNT on a 64-bit word, and a whole
512-bit register's worth one VPXORQ and one VPOPCNTQ where AVX-512 VPOPCNTDQ exists.
Padding bits are 0 in both operands: their XOR is 0 and they never count.

Two implementations of the same arithmetic:

* ``"torch"``: pure PyTorch (a 256-entry popcount table over the bytes), runs anywhere, the
  reference the tests hold the fast kernel to;
* ``"numba"``: the kernel compiled for this CPU by numba (LLVM). Chosen over a C++
  extension because it compiles in about two seconds, with no compiler toolchain or
  PyTorch headers, on any OS; LLVM lowers ``ctpop`` of a 64-bit word to ``popcnt``, and the
  loop over output columns to ``vpopcntq`` on CPUs that have AVX-512 VPOPCNTDQ.

``backend="auto"`` takes numba when it is installed and the torch code otherwise.

A binary conv is im2col on packed bits: pack each pixel's channels into words once
(``(B, H, W, C)`` -> ``(B, H, W, ceil(C/64))``), pad with the word of +1s, gather the
``k x k`` windows of words, and multiply with the packed kernel by XNOR GEMM.

Taught in chapters/06_binary_networks.
"""

from __future__ import annotations

import copy
import functools
import importlib.util

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .binary import BinaryConv2d, BinaryLinear, activation_scale_map, binary_layers
from .runtime import cpuinfo_fields

__all__ = ["BACKENDS", "available_backends", "popcount_peak", "gemm_instructions", "pack_signs", "unpack_signs", "popcount",
           "xnor_gemm", "PackedBinaryConv2d", "PackedBinaryLinear", "pack_model"]

BACKENDS = ("torch", "numba")
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
    loads and the additions are not counted: a real kernel stays below this ceiling.

    Returns:
        dict with ``clock_ghz`` (None where unknown), ``cores``, ``vpopcntdq``,
        ``bits_per_cycle`` (per core) and ``peak_binary_macs_per_s`` (None where the clock
        is unknown).
    """
    cores = torch.get_num_threads() if cores is None else cores
    if isinstance(cores, bool) or not isinstance(cores, int) or cores < 1:
        raise ValueError(f"cores must be a positive int, got {cores!r}")
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


@functools.lru_cache(maxsize=1)
def _numba_kernels():
    """Compile the numba kernels once per process (about two seconds)."""
    import numba
    from numba import njit, prange, types
    from numba.extending import intrinsic

    @intrinsic
    def popc(typingctx, x):  # LLVM's ctpop: one POPCNT, or VPOPCNTQ once vectorized
        def codegen(context, builder, signature, args):
            return builder.ctpop(args[0])
        return types.uint64(types.uint64), codegen

    @njit(parallel=True, fastmath=True, boundscheck=False)
    def gemm(a, bt, n_bits, out):
        # a (M, W) words, bt (W, N) words -> out (M, N) = n_bits - 2 popcount(a XOR b).
        # Four rows of a share each load of bt; the loop over N is what LLVM vectorizes.
        m_rows, n_words = a.shape
        n_cols = bt.shape[1]
        for block in prange((m_rows + 3) // 4):
            m0 = block * 4
            rows = min(4, m_rows - m0)
            acc = np.zeros((4, n_cols), dtype=np.uint64)
            if rows == 4:
                for w in range(n_words):
                    a0 = a[m0, w]
                    a1 = a[m0 + 1, w]
                    a2 = a[m0 + 2, w]
                    a3 = a[m0 + 3, w]
                    for n in range(n_cols):
                        b = bt[w, n]
                        acc[0, n] += popc(a0 ^ b)
                        acc[1, n] += popc(a1 ^ b)
                        acc[2, n] += popc(a2 ^ b)
                        acc[3, n] += popc(a3 ^ b)
            else:
                for i in range(rows):
                    for w in range(n_words):
                        ai = a[m0 + i, w]
                        for n in range(n_cols):
                            acc[i, n] += popc(ai ^ bt[w, n])
            for i in range(rows):
                for n in range(n_cols):
                    out[m0 + i, n] = n_bits - 2 * np.int64(acc[i, n])

    @njit(parallel=True, boundscheck=False)
    def pack_rows(x, out):
        # x (P, C) float32 -> out (P, ceil(C/64)) words, bit 1 where x >= 0
        p_rows, channels = x.shape
        for p in prange(p_rows):
            for w in range(out.shape[1]):
                word = np.uint64(0)
                for j in range(min(64, channels - 64 * w)):
                    if x[p, 64 * w + j] >= 0:
                        word |= np.uint64(1) << np.uint64(j)
                out[p, w] = word

    return numba, gemm, pack_rows


def gemm_instructions() -> dict[str, int]:
    """How often the compiled numba GEMM uses each popcount instruction (compiles it if
    needed): ``{"vpopcntq": n, "popcnt": n}`` from its x86 assembly. A vectorized kernel
    shows ``vpopcntq``; a CPU without AVX-512 VPOPCNTDQ only scalar ``popcnt``."""
    numba, gemm, _ = _numba_kernels()
    if not gemm.signatures:
        a = np.zeros((4, 1), dtype=np.uint64)
        gemm(a, a.T.copy(), 64, np.empty((4, 4), dtype=np.int32))
    asm = "\n".join(gemm.inspect_asm().values()).lower()
    vector = asm.count("vpopcntq")
    return {"vpopcntq": vector, "popcnt": asm.count("popcnt") - vector}


def _as_u64(t: Tensor) -> np.ndarray:
    return t.detach().numpy().view(np.uint64)


def _check_words(name: str, t: Tensor) -> None:
    if not isinstance(t, Tensor) or t.dtype != torch.int64 or t.ndim != 2:
        raise ValueError(f"{name} must be a 2-D int64 tensor of packed words, got "
                         f"{(t.dtype, tuple(t.shape)) if isinstance(t, Tensor) else type(t)}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (call .contiguous() first)")


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
        numba, gemm, _ = _numba_kernels()
        numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
        bt = b if b_transposed else b.t().contiguous()
        out = torch.empty(a.shape[0], bt.shape[1], dtype=torch.int32)
        gemm(_as_u64(a), _as_u64(bt), n_bits, out.numpy())
        return out
    rows = b.t() if b_transposed else b
    out = torch.empty(a.shape[0], rows.shape[0], dtype=torch.int32)
    step = max(1, (1 << 22) // max(1, rows.shape[0] * words))  # bound the (m, N, W) temporary
    for m0 in range(0, a.shape[0], step):
        x = a[m0:m0 + step, None, :] ^ rows[None, :, :]        # (m, N, W)
        out[m0:m0 + step] = (n_bits - 2 * popcount(x).sum(-1)).to(torch.int32)
    return out


def _pack_channels(x: Tensor, backend: str) -> Tensor:
    """``(B, C, H, W)`` float -> ``(B, H, W, ceil(C/64))`` words of ``x >= 0``."""
    nhwc = x.permute(0, 2, 3, 1)  # a view; contiguous when x is channels-last
    b, h, w, c = nhwc.shape
    if backend == "numba":
        _, _, pack_rows = _numba_kernels()
        rows = nhwc.reshape(-1, c).contiguous().float()
        out = torch.empty(rows.shape[0], -(-c // 64), dtype=torch.int64)
        pack_rows(rows.numpy(), _as_u64(out))
        return out.view(b, h, w, -1)
    return _pack_bits(nhwc >= 0)


class PackedBinaryConv2d(nn.Module):
    """Inference-only binary conv (``bnn``/``xnor``) that runs on packed bits.

    Stores the signs of the weights packed along ``(kh, kw, C)`` (``ceil(kh kw C / 64)``
    words per output channel: what :func:`lightcnn.binary.packed_weight_bytes` counts),
    alpha and the bias. The kernel's layout (channels of each tap packed separately, padded
    to whole words) is rebuilt from them and not saved.
    """

    def __init__(self, layer: BinaryConv2d, backend: str = "auto"):
        super().__init__()
        if not isinstance(layer, BinaryConv2d) or not layer.scheme.binary_activations:
            raise ValueError("layer must be a BinaryConv2d with binary activations "
                             "(scheme 'bnn' or 'xnor')")
        if layer.groups != 1 or layer.dilation != (1, 1):
            raise ValueError("the packed conv supports groups=1 and dilation=1")
        self.backend = _backend(backend)
        self.scheme = layer.scheme
        self.in_channels, self.out_channels = layer.in_channels, layer.out_channels
        self.kernel_size, self.stride, self.padding = (layer.kernel_size, layer.stride,
                                                       layer.padding)
        with torch.no_grad():
            signs = torch.where(layer.weight >= 0, 1.0, -1.0)      # (O, C, kh, kw)
            taps = signs.permute(0, 2, 3, 1).reshape(self.out_channels, -1)
            self.register_buffer("weight_bits", pack_signs(taps))   # (O, ceil(K/64))
            alpha = layer.weight_alpha() if layer.scheme.weight_scale else None
        self.register_buffer("alpha", alpha)
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().clone())
        self._kernel_words: Tensor | None = None
        self._kernel_version = None

    def kernel_words(self) -> Tensor:
        """``(kh kw ceil(C/64), O)`` words: each tap's channels packed on their own."""
        version = (self.weight_bits.data_ptr(), self.weight_bits._version)
        if self._kernel_words is None or version != self._kernel_version:
            kh, kw = self.kernel_size
            c = self.in_channels
            signs = unpack_signs(self.weight_bits, kh * kw * c)
            taps = signs.view(self.out_channels, kh * kw, c) > 0
            words = _pack_bits(taps)                                # (O, kh kw, ceil(C/64))
            self._kernel_words = words.reshape(self.out_channels, -1).t().contiguous()
            self._kernel_version = version
        return self._kernel_words

    def pack_input(self, x: Tensor) -> Tensor:
        """Step 1: ``(B, C, H, W)`` float -> ``(B, H + 2p, W + 2p, ceil(C/64))`` words of the
        signs, padded with the word of +1s (bits set for the C channels, 0 above)."""
        b, c, h, w = x.shape
        if c != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got {c}")
        ph, pw = self.padding
        words = _pack_channels(x, self.backend)                    # (B, H, W, Wc)
        n_words = words.shape[-1]
        ones = _pack_bits(torch.ones(n_words * 64, dtype=torch.bool)[:c])
        padded = ones.expand(b, h + 2 * ph, w + 2 * pw, n_words).clone()
        padded[:, ph:ph + h, pw:pw + w] = words
        return padded

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

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        kh, kw = self.kernel_size
        oh, ow = self.output_size(h, w)
        cols = self.im2col(self.pack_input(x))
        # step 3: XNOR GEMM, then the float work per output (scales, bias)
        dots = xnor_gemm(cols, self.kernel_words(), kh * kw * c, self.backend,
                         b_transposed=True)                        # (B OH OW, O) int32
        # (B, OH, OW, O) -> NCHW view in channels-last memory, as oneDNN likes it
        y = dots.view(b, oh, ow, -1).permute(0, 3, 1, 2).float()
        if self.alpha is not None:
            y = y * self.alpha.view(1, -1, 1, 1)
        if self.scheme.activation_scale:
            y = y * activation_scale_map(x, self.kernel_size, self.stride, self.padding)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return y

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, scheme={self.scheme.name}, "
                f"backend={self.backend}")


class PackedBinaryLinear(nn.Module):
    """Inference-only binary linear layer (``bnn``/``xnor``) on packed bits."""

    def __init__(self, layer: BinaryLinear, backend: str = "auto"):
        super().__init__()
        if not isinstance(layer, BinaryLinear) or not layer.scheme.binary_activations:
            raise ValueError("layer must be a BinaryLinear with binary activations")
        self.backend = _backend(backend)
        self.scheme = layer.scheme
        self.in_features, self.out_features = layer.in_features, layer.out_features
        with torch.no_grad():
            self.register_buffer("weight_bits",
                                 pack_signs(torch.where(layer.weight >= 0, 1.0, -1.0)))
            alpha = layer.weight_alpha() if layer.scheme.weight_scale else None
        self.register_buffer("alpha", alpha)
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        words = _pack_bits(x >= 0)
        y = xnor_gemm(words.contiguous(), self.weight_bits, self.in_features,
                      self.backend).float()
        if self.alpha is not None:
            y = y * self.alpha
        if self.scheme.activation_scale:
            y = y * x.abs().mean(-1, keepdim=True)
        if self.bias is not None:
            y = y + self.bias
        return y


def pack_model(model: nn.Module, backend: str = "auto") -> nn.Module:
    """A copy of a binarized model whose ``bnn``/``xnor`` layers run on packed bits.

    Everything else (the full-precision first and last layers, batch norm, pooling) is
    unchanged, so the copy computes what the float simulation computes.

    Raises:
        ValueError: the model has no layer with binary weights and activations (weight-only
            schemes keep real activations, which a bit cannot hold).
    """
    layers = {n: m for n, m in binary_layers(model).items() if m.scheme.binary_activations}
    if not layers:
        raise ValueError("model has no binary layer with binary activations to pack "
                         "(binarize it with scheme 'bnn' or 'xnor')")
    packed = copy.deepcopy(model).eval()
    for name, layer in layers.items():
        packed.set_submodule(name, PackedBinaryConv2d(layer, backend)
                             if isinstance(layer, BinaryConv2d)
                             else PackedBinaryLinear(layer, backend))
    return packed
