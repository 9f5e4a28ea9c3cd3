"""Tests for lightcnn.sparse: lossless sparse storage and sparse-kernel layers."""

import copy
import gzip
import io

import pytest
import torch
from hypothesis import example, given, settings, strategies as st
from torch import nn
from torch.nn.utils import prune

import lightcnn as lc
from lightcnn import sparse
from lightcnn.sparse import (FORMATS, SparseConv2d, SparseLinear, decode_tensor, encode_tensor,
                             encoded_size, load_sparse, save_sparse, size_formula,
                             sparse_size_bytes, to_sparse_kernels)

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64,
          torch.int8, torch.bool]
# integer view of the same width, to compare raw bits (NaN and -0.0 included)
BITS = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16,
        torch.float64: torch.int64, torch.int64: torch.int64, torch.int8: torch.int8,
        torch.bool: torch.uint8}


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).view(BITS[t.dtype])


def _random_tensor(shape, dtype, density, seed, signed_zeros=True) -> torch.Tensor:
    """Random values with about ``density`` nonzeros; some zeros are ``-0.0``."""
    gen = torch.Generator().manual_seed(seed)
    keep = torch.rand(shape, generator=gen) < density
    values = torch.randn(shape, generator=gen) * 3
    if dtype == torch.bool:
        return keep
    if not dtype.is_floating_point:
        values = values.round() + values.sign()  # never 0 where kept
    out = torch.where(keep, values, torch.zeros(shape)).to(dtype)
    if dtype.is_floating_point and signed_zeros:
        out[~keep & (values < 0)] = -0.0  # what weight_orig * weight_mask gives
    return out


def _sparsify(model: nn.Module, sparsity: float = 0.9) -> nn.Module:
    """Zero ``sparsity`` of every conv/linear weight by hand (smallest magnitudes)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                k = int(sparsity * m.weight.numel())
                threshold = m.weight.abs().flatten().kthvalue(k).values
                m.weight[m.weight.abs() <= threshold] = 0.0
    return model


shapes = st.lists(st.integers(0, 6), min_size=0, max_size=4).map(tuple)


# ---------------------------------------------------------------- encode / decode

@settings(max_examples=150, deadline=None)
@given(shape=shapes, dtype=st.sampled_from(DTYPES),
       density=st.sampled_from([0.0, 1.0]) | st.floats(0, 1), seed=st.integers(0, 2**16))
@example(shape=(6, 1, 5, 5), dtype=torch.float32, density=0.1, seed=0)  # conv weight
@example(shape=(120,), dtype=torch.float32, density=1.0, seed=0)        # bias, fully dense
@example(shape=(300, 2), dtype=torch.float16, density=0.0, seed=0)      # all zero
@example(shape=(), dtype=torch.float32, density=1.0, seed=0)            # 0-d tensor
def test_round_trip_is_exact_and_size_follows_formula(shape, dtype, density, seed):
    t = _random_tensor(shape, dtype, density, seed)
    # sparse formats store only values != 0: -0.0 comes back as +0.0, all else bit for bit
    canonical = torch.where(t == 0, torch.zeros((), dtype=dtype), t)
    sizes = {}
    for fmt in FORMATS:
        blob = encode_tensor(t, fmt)
        back = decode_tensor(blob)
        assert back.dtype == t.dtype and back.shape == t.shape
        assert torch.equal(back, t)
        assert torch.equal(_bits(back), _bits(t if fmt == "dense" else canonical))
        sizes[fmt] = len(blob)
        assert encoded_size(t, fmt) == len(blob)
        rows = t.shape[0] if t.dim() >= 2 else 1
        assert size_formula(t.numel(), int((t != 0).sum()), fmt, rows=rows,
                            itemsize=t.element_size(), ndim=t.dim()) == len(blob)
    # auto is the smallest format, ties going to the first in FORMATS
    auto = encode_tensor(t, "auto")
    assert len(auto) == min(sizes.values()) == encoded_size(t, "auto")
    assert auto[0] == FORMATS.index(min(FORMATS, key=sizes.get))
    assert torch.equal(decode_tensor(auto), t)


def test_negative_zero_is_kept_dense_and_pruned_sparse():
    t = torch.tensor([[-0.0, 1.0], [0.0, -2.0]])
    assert torch.signbit(decode_tensor(encode_tensor(t, "dense"))[0, 0])
    for fmt in ("bitmask", "csr", "coo"):
        back = decode_tensor(encode_tensor(t, fmt))
        assert not torch.signbit(back[0, 0]) and back[0, 0] == 0
        # -0.0 costs nothing more than +0.0
        assert encoded_size(t, fmt) == encoded_size(torch.tensor([[0.0, 1.0], [0.0, -2.0]]), fmt)


def test_nan_and_inf_survive():
    t = torch.tensor([float("nan"), 0.0, float("inf"), -float("inf")])
    for fmt in FORMATS:
        back = decode_tensor(encode_tensor(t, fmt))
        assert torch.equal(back.view(torch.int32), t.view(torch.int32))


def test_sizes_match_hand_counted_bytes():
    # 100 x 100 float32, 1000 nonzeros; header = 4 + 4 * ndim = 12 bytes
    t = torch.zeros(100, 100)
    t.view(-1)[torch.randperm(10_000)[:1000]] = 1.0
    assert encoded_size(t, "dense") == 12 + 10_000 * 4
    assert encoded_size(t, "bitmask") == 12 + 10_000 // 8 + 1000 * 4
    assert encoded_size(t, "csr") == 12 + 101 * 4 + 1000 * 1 + 1000 * 4   # 100 cols: uint8
    assert encoded_size(t, "coo") == 12 + 1000 * 2 + 1000 * 4             # 10_000 entries: uint16
    assert size_formula(10_000, 1000, "bitmask", rows=100) == 12 + 1250 + 4000


@pytest.mark.parametrize("cols, index_bytes", [(256, 1), (257, 2), (65_536, 2), (65_537, 4)])
def test_csr_index_width_is_the_smallest_that_fits(cols, index_bytes):
    t = torch.zeros(1, cols)
    t[0, -1] = 1.0  # the largest column index, cols - 1
    blob = encode_tensor(t, "csr")
    assert blob[3] == index_bytes
    assert len(blob) == 4 + 8 + 2 * 4 + index_bytes + 4
    assert torch.equal(decode_tensor(blob), t)


def test_auto_picks_dense_for_dense_and_index_formats_for_very_sparse():
    dense = torch.randn(64, 64)
    assert encode_tensor(dense, "auto") == encode_tensor(dense, "dense")
    half = _random_tensor((64, 64), torch.float32, 0.5, 0)
    assert encode_tensor(half, "auto") == encode_tensor(half, "bitmask")
    very = _random_tensor((64, 64), torch.float32, 0.01, 0)
    assert encode_tensor(very, "auto")[0] in (FORMATS.index("csr"), FORMATS.index("coo"))


def test_encode_rejects_bad_input():
    with pytest.raises(TypeError, match="torch.Tensor"):
        encode_tensor([1.0, 0.0], "dense")
    with pytest.raises(ValueError, match="fmt must be one of.*dense.*bitmask.*csr.*coo.*auto"):
        encode_tensor(torch.zeros(3), "jpeg")
    with pytest.raises(ValueError, match="dtype"):
        encode_tensor(torch.zeros(3, dtype=torch.complex64), "dense")
    with pytest.raises(ValueError, match="strided"):
        encode_tensor(torch.eye(3).to_sparse(), "csr")
    with pytest.raises(TypeError, match="torch.Tensor"):
        encoded_size(3.0, "dense")
    with pytest.raises(ValueError, match="fmt"):
        encoded_size(torch.zeros(3), "CSR")


def test_decode_rejects_bad_input():
    with pytest.raises(TypeError, match="bytes"):
        decode_tensor("abc")
    blob = encode_tensor(_random_tensor((8, 8), torch.float32, 0.3, 0), "csr")
    for damaged in (blob[:2], blob[:-1], blob + b"\0", b"\xff" + blob[1:]):
        with pytest.raises(ValueError, match="corrupt tensor blob"):
            decode_tensor(damaged)


@pytest.mark.parametrize("kwargs, match", [
    (dict(numel=10, nnz=11, fmt="csr"), "nnz"),
    (dict(numel=-1, nnz=0, fmt="csr"), "numel"),
    (dict(numel=10, nnz=1, fmt="csr", rows=3), "rows"),
    (dict(numel=10, nnz=1, fmt="csr", itemsize=3), "itemsize"),
    (dict(numel=10, nnz=1, fmt="zip"), "fmt"),
    (dict(numel=10, nnz=1, fmt="csr", ndim=300), "ndim"),
])
def test_size_formula_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        size_formula(**kwargs)


# ---------------------------------------------------------------- files

def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def test_save_load_round_trip_of_a_sparse_lenet(tmp_path):
    model = _sparsify(lc.create_model("lenet5"))
    path = tmp_path / "lenet5.lcsparse"
    written = save_sparse(model, path)
    assert written == path.stat().st_size == sparse_size_bytes(model)
    state = load_sparse(path)
    assert list(state) == list(model.state_dict())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    fresh = lc.create_model("lenet5")
    fresh.load_state_dict(state)
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(_logits(fresh, x), _logits(model, x))
    # 90% zeros: at most 1/8 + 0.1 * 4 bytes per weight against 4 for torch.save
    assert sparse_size_bytes(model) < 0.2 * lc.model_size_bytes(model)
    assert sparse_size_bytes(model, fmt="dense") > 0.95 * lc.model_size_bytes(model)


def test_buffers_and_file_objects_round_trip():
    model = lc.create_model("baseline_cnn")
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 1, 28, 28))  # running stats and num_batches_tracked move
    state = model.state_dict()
    assert any(v.dtype == torch.int64 for v in state.values())
    buffer = io.BytesIO()
    written = save_sparse(state, buffer, fmt="bitmask")
    assert written == len(buffer.getvalue())
    back = load_sparse(io.BytesIO(buffer.getvalue()))
    assert back.keys() == state.keys()
    assert all(back[k].dtype == v.dtype and torch.equal(back[k], v) for k, v in state.items())


def test_compressed_size_is_gzip_of_the_file():
    model = _sparsify(lc.create_model("lenet5"))
    buffer = io.BytesIO()
    save_sparse(model, buffer)
    assert sparse_size_bytes(model, compressed=True) == len(
        gzip.compress(buffer.getvalue(), compresslevel=9, mtime=0))


def test_pruned_layers_are_folded_and_load_into_an_unpruned_model(tmp_path):
    model = lc.create_model("lenet5")
    prune.l1_unstructured(model.features[3], "weight", amount=0.8)
    prune.l1_unstructured(model.classifier[1], "weight", amount=0.9)
    keys = model.state_dict().keys()
    assert "features.3.weight_orig" in keys and "features.3.weight_mask" in keys
    save_sparse(model, tmp_path / "pruned.lcsparse")
    state = load_sparse(tmp_path / "pruned.lcsparse")
    assert not any(k.endswith(("_orig", "_mask")) for k in state)
    assert torch.equal(state["features.3.weight"], model.features[3].weight)
    fresh = lc.create_model("lenet5")
    fresh.load_state_dict(state)  # strict: same keys as the unpruned architecture
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(_logits(fresh, x), _logits(model, x))
    assert sparse_size_bytes(model) < lc.model_size_bytes(model) / 2  # no mask, no zeros


def test_corrupted_files_raise_a_clear_error(tmp_path):
    path = tmp_path / "model.lcsparse"
    save_sparse(_sparsify(lc.create_model("lenet5")), path)
    data = path.read_bytes()
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    cases = {"flipped": (bytes(flipped), "checksum mismatch.*corrupted or truncated"),
             "truncated": (data[:-100], "checksum mismatch.*corrupted or truncated"),
             "no checksum": (data[:-1], "checksum"),
             "wrong magic": (b"PK" + data[2:], "not a lightcnn sparse file"),
             "empty": (b"", "not a lightcnn sparse file"),
             "torch.save": (_torch_save_bytes(), "not a lightcnn sparse file")}
    for name, (damaged, match) in cases.items():
        path.write_bytes(damaged)
        with pytest.raises(ValueError, match=match):
            load_sparse(path)


def _torch_save_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(3)}, buffer)
    return buffer.getvalue()


def test_files_reject_bad_input(tmp_path):
    with pytest.raises(TypeError, match="model_or_state_dict"):
        save_sparse([torch.zeros(3)], tmp_path / "x")
    with pytest.raises(TypeError, match="state dict entries"):
        save_sparse({"w": [1.0]}, tmp_path / "x")
    with pytest.raises(ValueError, match="fmt must be one of"):
        save_sparse({"w": torch.zeros(3)}, tmp_path / "x", fmt="zip")
    with pytest.raises(TypeError, match="path_or_file"):
        save_sparse({"w": torch.zeros(3)}, 42)
    with pytest.raises(TypeError, match="path_or_file"):
        load_sparse(42)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        sparse_size_bytes({"w": torch.zeros(3)})
    with pytest.raises(ValueError, match="fmt"):
        sparse_size_bytes(lc.create_model("lenet5"), fmt="best")


# ---------------------------------------------------------------- sparse kernels

def _sparse_weights(module: nn.Module, density: float = 0.3) -> nn.Module:
    with torch.no_grad():
        module.weight.mul_(torch.rand_like(module.weight) < density)
    return module


@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=3),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=(3, 5), padding=(1, 2), dilation=(2, 1)),
    dict(kernel_size=1, bias=False),
    dict(kernel_size=5, stride=(2, 1), padding=3, dilation=2),
    dict(kernel_size=3, padding="same", dilation=2),
    dict(kernel_size=3, padding="valid"),
])
def test_sparse_conv_equals_dense_conv(kwargs):
    conv = _sparse_weights(nn.Conv2d(4, 6, **kwargs))
    sparse_conv = SparseConv2d.from_dense(conv)
    assert sparse_conv.nnz == int((conv.weight != 0).sum())
    x = torch.randn(3, 4, 11, 13)
    with torch.no_grad():
        assert torch.allclose(sparse_conv(x), conv(x), atol=1e-5)
        assert torch.allclose(sparse_conv(x[0]), conv(x[0]), atol=1e-5)  # unbatched


@pytest.mark.parametrize("shape", [(5, 7), (2, 3, 7), (7,)])
def test_sparse_linear_equals_dense_linear(shape):
    linear = _sparse_weights(nn.Linear(7, 4))
    x = torch.randn(shape)
    with torch.no_grad():
        assert torch.allclose(SparseLinear.from_dense(linear)(x), linear(x), atol=1e-5)
    no_bias = nn.Linear(7, 4, bias=False)
    with torch.no_grad():
        assert torch.allclose(SparseLinear.from_dense(no_bias)(x), no_bias(x), atol=1e-5)


@pytest.mark.parametrize("name", ["lenet5", "baseline_cnn"])
def test_to_sparse_kernels_keeps_the_eval_function(name):
    model = _sparsify(lc.create_model(name)).eval()
    before = copy.deepcopy(model.state_dict())
    sparse_model = to_sparse_kernels(model)
    kinds = [type(m) for m in sparse_model.modules()]
    assert nn.Conv2d not in kinds and nn.Linear not in kinds
    assert SparseConv2d in kinds and SparseLinear in kinds
    assert sum(k is nn.BatchNorm2d for k in kinds) == sum(
        isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # untouched
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(sparse_model(x), model(x), atol=1e-5)
    copy.deepcopy(sparse_model)  # plain buffers, so profile/fusion helpers can copy it


def test_to_sparse_kernels_applies_masks_and_leaves_grouped_convs_dense():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, groups=8), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    prune.l1_unstructured(model[0], "weight", amount=0.7)
    x = torch.randn(2, 3, 6, 6)
    model.train()
    model(x).sum().backward()  # the masked weight now carries autograd history
    sparse_model = to_sparse_kernels(model)
    assert isinstance(sparse_model[0], SparseConv2d)
    assert sparse_model[0].nnz == int(model[0].weight_mask.sum())
    assert type(sparse_model[3]) is nn.Conv2d  # depthwise: left dense
    assert not sparse_model.training
    with torch.no_grad():
        assert torch.allclose(sparse_model(x), model.eval()(x), atol=1e-5)


def test_sparse_kernels_reject_bad_input():
    with pytest.raises(ValueError, match="groups must be 1.*groups=2"):
        SparseConv2d.from_dense(nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(ValueError, match="padding_mode"):
        SparseConv2d.from_dense(nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(ValueError, match="same"):
        SparseConv2d.from_dense(nn.Conv2d(4, 4, 4, padding="same"))
    with pytest.raises(TypeError, match="nn.Conv2d"):
        SparseConv2d.from_dense(nn.Linear(3, 3))
    with pytest.raises(TypeError, match="nn.Linear"):
        SparseLinear.from_dense(nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match="stride"):
        SparseConv2d(torch.zeros(2, 2, 3, 3), stride=0)
    with pytest.raises(ValueError, match="4-D"):
        SparseConv2d(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="bias"):
        SparseLinear(torch.zeros(2, 3), bias=torch.zeros(3))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        to_sparse_kernels("lenet5")

