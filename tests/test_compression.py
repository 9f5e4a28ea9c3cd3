"""Tests for lightcnn.compression: Huffman codec, relative indices, the compressed file."""

import io
import math

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
