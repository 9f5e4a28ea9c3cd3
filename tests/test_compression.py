"""Tests for lightcnn.compression: Huffman codec, relative indices, the compressed file."""

import hashlib
import io
import json
import math
import struct

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lightcnn as lc
from lightcnn import compression as C
from lightcnn import pruning
from lightcnn import weight_sharing as W

symbol_lists = st.lists(st.integers(0, 40), min_size=1, max_size=400)


def test_huffman_lengths_of_the_textbook_example():
    # CLRS 16.3: a:45 b:13 c:12 d:16 e:9 f:5 -> a 0, b 101, c 100, d 111, e 1101, f 1100
    counts = {0: 45, 1: 13, 2: 12, 3: 16, 4: 9, 5: 5}
    assert C.huffman_code_lengths(counts) == {0: 1, 1: 3, 2: 3, 3: 3, 4: 4, 5: 4}


def test_dyadic_probabilities_get_exactly_their_information_content():
    symbols = np.array([0] * 8 + [1] * 4 + [2] * 2 + [3] * 2)
    payload, nbits, lengths = C.huffman_encode(symbols)
    assert lengths == {0: 1, 1: 2, 2: 3, 3: 3}               # -log2 p
    assert nbits == pytest.approx(C.entropy_bits(symbols) * symbols.size)   # L == H
    assert len(payload) == math.ceil(nbits / 8)


def test_canonical_codes_are_consecutive_and_prefix_free():
    codes = C.canonical_codes({7: 2, 3: 2, 9: 3, 1: 3, 4: 2})
    assert codes == {3: (0b00, 2), 4: (0b01, 2), 7: (0b10, 2), 1: (0b110, 3), 9: (0b111, 3)}
    with pytest.raises(ValueError, match="Kraft"):
        C.canonical_codes({0: 1, 1: 1, 2: 1})
    with pytest.raises(ValueError, match="length >= 1"):
        C.canonical_codes({0: 0})


@settings(max_examples=60, deadline=None)
@given(symbol_lists)
def test_huffman_round_trip_and_shannon_bounds(values):
    symbols = np.array(values)
    payload, nbits, lengths = C.huffman_encode(symbols)
    assert np.array_equal(C.huffman_decode(payload, nbits, lengths, symbols.size), symbols)
    codes = C.canonical_codes(lengths)
    words = [format(c, f"0{l}b") for c, l in codes.values()]
    assert not any(a != b and b.startswith(a) for a in words for b in words)   # prefix-free
    h = C.entropy_bits(symbols)
    mean = nbits / symbols.size
    if len(lengths) > 1:
        assert h - 1e-9 <= mean < h + 1                        # H <= L < H + 1
        assert sum(2.0 ** -l for l in lengths.values()) == pytest.approx(1.0)   # full tree
    else:
        assert mean == 1


@settings(max_examples=60, deadline=None)
@given(st.sets(st.integers(0, 3000), max_size=200), st.integers(1, 8))
def test_relative_indices_round_trip(positions, bits):
    positions = np.array(sorted(positions), dtype=np.int64)
    gaps = C.relative_indices(positions, bits)
    assert gaps.size == 0 or gaps.max() < 2**bits
    assert np.array_equal(C.absolute_indices(gaps, bits), positions)


def test_relative_indices_use_fillers_for_long_gaps():
    # 3 bits: symbol 7 is the filler (skip 7 zeros); zeros before 0, 3, 40: 0, 2, 36 = 5 * 7 + 1
    assert C.relative_indices(np.array([0, 3, 40]), 3).tolist() == [0, 2, 7, 7, 7, 7, 7, 1]
    with pytest.raises(ValueError, match="strictly increasing"):
        C.relative_indices(np.array([3, 3]), 3)
    with pytest.raises(ValueError, match="bits must be an int in"):
        C.relative_indices(np.array([1]), 0)


def test_decoding_a_short_stream_is_an_error():
    payload, nbits, lengths = C.huffman_encode(np.array([0, 1, 2, 2, 2]))
    with pytest.raises(C.CompressedFileError, match="ended after"):
        C.huffman_decode(payload, nbits - 2, lengths, 5)
    with pytest.raises(ValueError, match="symbols must hold integers"):
        C.huffman_encode(np.array([-1, 2]))


def _compressed_lenet(bits=4, sparsity=0.9):
    torch.manual_seed(0)
    model = lc.create_model("lenet5").eval()
    pruning.apply_masks(model, pruning.global_masks(model, sparsity))
    pruning.remove_masks(model)
    return W.share_weights(model, bits, keep_zeros=True).eval()


def test_the_file_decodes_to_the_same_predictions_and_counts_every_byte():
    shared = _compressed_lenet()
    buffer = io.BytesIO()
    written = C.save_compressed(shared, buffer)
    assert written == len(buffer.getvalue()) == C.compressed_size_bytes(shared)
    state = C.load_compressed(io.BytesIO(buffer.getvalue()))
    restored = lc.create_model("lenet5").eval()
    restored.load_state_dict(state)
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(restored(x), shared(x))
    # smaller than the dense file, the bitmask format and the fixed-width streams
    assert written < lc.sparse.sparse_size_bytes(W.unshare(shared)) < lc.model_size_bytes(shared)
    for s in C.layer_streams(shared):
        bits = s.bits()
        assert bits["index_entropy"] <= bits["index_huffman"] < bits["index_entropy"] + bits["survivors"]
        assert bits["index_huffman"] <= bits["index_fixed"]


@pytest.mark.parametrize("damage", ["flip", "truncate", "magic", "extend"])
def test_a_damaged_file_is_detected_and_never_loaded(damage, tmp_path):
    path = tmp_path / "model.lcdc"
    C.save_compressed(_compressed_lenet(), path)
    blob = bytearray(path.read_bytes())
    if damage == "flip":
        blob[len(blob) // 2] ^= 0x01
    elif damage == "truncate":
        blob = blob[:-100]
    elif damage == "magic":
        blob[:4] = b"ABCD"
    else:
        blob += b"\0"
    path.write_bytes(bytes(blob))
    with pytest.raises(C.CompressedFileError, match="checksum|magic"):
        C.load_compressed(path)


def test_layer_streams_need_masked_shared_layers():
    torch.manual_seed(0)
    model = lc.create_model("lenet5")
    with pytest.raises(ValueError, match="no shared layer"):
        C.layer_streams(model)
    with pytest.raises(ValueError, match="without keep_zeros=True"):
        C.layer_streams(W.share_weights(model, 2))


# ---------------------------------------------------------------------------------------
# coding="fixed": the paper's P+Q (fixed-width cluster and relative indices), then Huffman
# on the same streams
# ---------------------------------------------------------------------------------------

def _sparse_model(seed, density, long_gap, bits=2):
    """A conv (144 weights) and a linear layer (640), random weights with ``density``
    nonzero, ``long_gap`` zeros in a row inside the linear one, shared at ``bits``."""
    g = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 8, 3, bias=False), torch.nn.Flatten(),
                                torch.nn.Linear(64, 10))
    with torch.no_grad():
        for layer in (model[0], model[2]):
            w = layer.weight.view(-1)
            keep = torch.rand(w.numel(), generator=g) < density
            w.copy_(torch.randn(w.numel(), generator=g) * keep)
            w[0], w[-1] = 0.5, -0.5                    # a survivor at each end, at least
        model[2].weight.view(-1)[1:1 + long_gap] = 0.0
    return W.share_weights(model, bits, keep_zeros=True)


def _header_bytes(blob):
    return struct.unpack_from("<I", blob, len(C.MAGIC))[0]


def _formula_bytes(shared, blob, gap_bits, coding):
    """The size save_compressed's docstring states, computed from the masks (not from the
    package's streams) and the file's own header length."""
    total = len(C.MAGIC) + 4 + _header_bytes(blob) + 32
    books = W.shared_layers(shared)
    for name, book in books.items():
        k = book.codebook.numel()
        b = math.ceil(math.log2(k))
        mask = book.mask.reshape(-1).bool()
        positions = mask.nonzero().reshape(-1).numpy()
        skips = np.diff(positions, prepend=-1) - 1            # zeros before each survivor
        n = positions.size
        g = n + int((skips // (2**gap_bits - 1)).sum())       # plus one filler per 2^b - 1 zeros
        if coding == "fixed":
            total += 4 * k + math.ceil(n * b / 8) + math.ceil(g * gap_bits / 8)
        else:
            streams = next(s for s in C.layer_streams(shared, gap_bits) if s.name == name)
            assert streams.gaps.size == g
            total += 4 * k
            for symbols in (streams.indices, streams.gaps):
                _, nbits, lengths = C.huffman_encode(symbols)
                total += 2 + 3 * len(lengths) + math.ceil(nbits / 8)
    shared_keys = {f"{name}.weight" for name in books}
    total += sum(t.numel() * t.element_size() for key, t in W.unshare(shared).state_dict().items()
                 if key not in shared_keys)
    return total


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10**6), st.floats(0.01, 0.6), st.integers(0, 600), st.integers(1, 8),
       st.sampled_from(["fixed", "huffman"]))
def test_fixed_and_huffman_files_round_trip_bit_exact_and_match_the_size_formula(
        seed, density, long_gap, gap_bits, coding):
    shared = _sparse_model(seed, density, long_gap)
    buffer = io.BytesIO()
    written = C.save_compressed(shared, buffer, gap_bits=gap_bits, coding=coding)
    blob = buffer.getvalue()
    assert written == len(blob) == C.compressed_size_bytes(shared, gap_bits, coding)
    assert written == _formula_bytes(shared, blob, gap_bits, coding)
    state = C.load_compressed(io.BytesIO(blob))
    reference = W.unshare(shared).state_dict()
    assert state.keys() == reference.keys()
    for key, t in reference.items():                    # bit-exact: same dtype, same bits
        assert state[key].dtype == t.dtype and torch.equal(state[key], t)
    if long_gap >= 2**gap_bits - 1:                      # the gap needed fillers
        gaps = next(s.gaps for s in C.layer_streams(shared, gap_bits) if s.name == "2")
        assert (gaps == 2**gap_bits - 1).sum() >= long_gap // (2**gap_bits - 1)


def test_a_gap_longer_than_the_index_width_is_cut_by_fillers_in_the_fixed_file():
    shared = _sparse_model(0, 0.0, 638, bits=1)          # linear: survivors at 0 and 639 only
    streams = {s.name: s for s in C.layer_streams(shared, gap_bits=3)}
    # 638 zeros between them at 3 bits: 91 fillers of 7, then a gap symbol of 638 - 637 = 1
    assert streams["2"].gaps.tolist() == [0] + [7] * 91 + [1]
    buffer = io.BytesIO()
    C.save_compressed(shared, buffer, gap_bits=3, coding="fixed")
    blob = buffer.getvalue()
    head = json.loads(blob[len(C.MAGIC) + 4:len(C.MAGIC) + 4 + _header_bytes(blob)])
    assert head["coding"] == "fixed"
    linear = next(layer for layer in head["layers"] if layer[0] == "2")
    # 2 survivors at 1 bit, 93 relative indices at 3 bits
    assert linear[4:] == [2, 2, 93, 93 * 3]
    state = C.load_compressed(io.BytesIO(blob))
    assert torch.equal(state["2.weight"], W.unshare(shared)[2].weight)
    assert state["2.weight"].count_nonzero() == 2


def test_huffman_saves_on_the_same_streams_that_the_fixed_file_stores():
    shared = _compressed_lenet()
    fixed = C.compressed_size_bytes(shared, coding="fixed")
    huffman = C.compressed_size_bytes(shared, coding="huffman")
    assert huffman == C.compressed_size_bytes(shared)   # the default is unchanged
    streams = C.layer_streams(shared)
    stream_fixed = sum(math.ceil(s.bits()["index_fixed"] / 8) + math.ceil(s.bits()["gap_fixed"] / 8)
                       for s in streams)
    # everything but the streams (codebooks, other tensors, checksum) is the same in both
    # files; the headers differ only in the "coding" key and the numbers of bits
    assert 0 < fixed - huffman < stream_fixed
    for s in streams:
        bits = s.bits()
        assert bits["index_huffman"] <= bits["index_fixed"]
        assert bits["gap_huffman"] <= bits["gap_fixed"]


def _forge(blob, edit):
    """``blob`` with its JSON header edited and a valid checksum: a well-formed file whose
    content is wrong."""
    n = _header_bytes(blob)
    start = len(C.MAGIC) + 4
    header = json.loads(blob[start:start + n])
    edit(header)
    head = json.dumps(header, separators=(",", ":")).encode()
    out = C.MAGIC + struct.pack("<I", len(head)) + head + blob[start + n:-32]
    return out + hashlib.sha256(out).digest()


def test_bad_codings_and_inconsistent_fixed_files_are_refused():
    shared = _sparse_model(0, 0.3, 40)
    for coding, error in (("zip", ValueError), ("", ValueError), (None, TypeError), (1, TypeError)):
        with pytest.raises(error, match="coding must be one of"):
            C.save_compressed(shared, io.BytesIO(), coding=coding)
        with pytest.raises(error, match="coding"):
            C.compressed_size_bytes(shared, coding=coding)
    buffer = io.BytesIO()
    C.save_compressed(shared, buffer, gap_bits=4, coding="fixed")
    blob = buffer.getvalue()

    def unknown(h):
        h["coding"] = "zip"

    def wrong_bits(h):
        h["layers"][0][5] += 1                         # index bits != survivors * b

    def more_survivors(h):
        h["layers"][0][4] += 8                          # streams longer than the file holds
        h["layers"][0][5] += 8 * 2

    for edit, message in ((unknown, "unknown coding 'zip'"), (wrong_bits, "bits for"),
                          (more_survivors, "do not describe|past the end")):
        with pytest.raises(C.CompressedFileError, match=message):
            C.load_compressed(io.BytesIO(_forge(blob, edit)))
