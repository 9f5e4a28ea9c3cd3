"""The shipped weights store: round trips, and every kind of damage refused by name."""

import json

import pytest
import torch

from lightcnn import weights
from lightcnn.weights import ZooError


def _state():
    torch.manual_seed(0)
    return {"conv.weight": torch.randn(4, 1, 3, 3), "bn.num_batches_tracked": torch.tensor(7),
            "fc.bias": torch.randn(10)}


@pytest.fixture
def store(tmp_path):
    folder = tmp_path / "zoo"
    weights.write_entry("m", _state(), {"recipe_version": 1, "test_accuracy": 0.9},
                        {"train_loss": [1.0, 0.5]}, folder)
    return folder


def test_round_trip_is_exact_and_manifest_describes_the_file(store):
    state, entry = weights.load_state_dict("m", store)
    expected = _state()
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in state)
    path = store / entry["file"]
    assert entry["bytes"] == path.stat().st_size
    assert entry["sha256"] == weights.sha256_file(path)
    assert weights.read_history("m", store) == {"train_loss": [1.0, 0.5]}
    weights.check_store(store)   # consistent: no error


def test_shipped_model_is_never_replaced_unless_told(store):
    with pytest.raises(ZooError, match="already shipped"):
        weights.write_entry("m", _state(), {"recipe_version": 1}, {}, store)
    weights.write_entry("m", {"w": torch.zeros(2)}, {"recipe_version": 2}, {}, store, replace=True)
    assert weights.read_manifest(store)["m"]["recipe_version"] == 2


@pytest.mark.parametrize("damage, message", [("flip", "changed"), ("truncate", "truncated")])
def test_damaged_file_is_refused_with_file_and_rebuild_command(store, damage, message):
    path = store / "m.safetensors"
    blob = bytearray(path.read_bytes())
    if damage == "flip":
        blob[-3] ^= 0xFF
    else:
        del blob[len(blob) // 2:]
    path.write_bytes(bytes(blob))
    with pytest.raises(ZooError, match=message) as err:
        weights.load_state_dict("m", store)
    assert str(path) in str(err.value) and "python -m lightcnn.zoo build m" in str(err.value)
    assert path.read_bytes() == bytes(blob)   # reported, not overwritten


def test_entry_without_file_and_file_without_entry_are_refused(store):
    (store / "m.safetensors").rename(store / "orphan.safetensors")
    with pytest.raises(ZooError, match="missing"):
        weights.load_state_dict("m", store)
    with pytest.raises(ZooError, match="missing"):
        weights.check_store(store)
    (store / "orphan.safetensors").rename(store / "m.safetensors")
    (store / "stray.safetensors").write_bytes(b"x")
    with pytest.raises(ZooError, match="stray.safetensors has no entry"):
        weights.check_store(store)


@pytest.mark.parametrize("vouched", [False, True])
def test_pickle_is_refused_even_when_the_manifest_vouches_for_it(store, vouched):
    path = store / "m.safetensors"
    torch.save(_state(), path)
    if vouched:   # someone rewrote the manifest to match: still not loaded
        manifest = json.loads((store / "manifest.json").read_text())
        manifest["models"]["m"].update(bytes=path.stat().st_size,
                                       sha256=weights.sha256_file(path))
        (store / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ZooError, match="pickle"):
        weights.load_state_dict("m", store)


def test_a_safetensors_header_length_that_starts_like_a_pickle_loads(tmp_path):
    """A safetensors file opens with its header's length: 128 + 256 k bytes give a first
    byte 0x80, a pickle's protocol byte. Such a file (a zoo model's was) must load."""
    for k in range(512):      # a tensor name that brings the header to such a length
        state = {"w" + "x" * k: torch.zeros(2)}
        if weights._serialize("m", state, 1)[:1] == b"\x80":
            break
    else:
        pytest.fail("no header length with a first byte 0x80 found")
    folder = tmp_path / "zoo"
    weights.write_entry("m", state, {"recipe_version": 1, "test_accuracy": 0.9}, {}, folder)
    assert (folder / "m.safetensors").read_bytes()[:1] == b"\x80"
    loaded, _ = weights.load_state_dict("m", folder)
    assert loaded.keys() == state.keys()


def test_unreadable_manifest_and_unknown_name(store):
    with pytest.raises(ZooError, match="no shipped model 'other'"):
        weights.load_state_dict("other", store)
    (store / "manifest.json").write_text("{not json")
    with pytest.raises(ZooError, match="not readable JSON"):
        weights.read_manifest(store)
    (store / "manifest.json").write_text(json.dumps({"format": 99, "models": {}}))
    with pytest.raises(ZooError, match="format"):
        weights.read_manifest(store)


def test_folder_without_manifest_ships_nothing(tmp_path):
    assert weights.read_manifest(tmp_path) == {}
    weights.check_store(tmp_path)


# --- compact, lossless encodings: sparse tensors and tensors of few values -----------------

def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def _bitwise_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
        and (torch.equal(_bits(a[k]), _bits(b[k])) if a[k].is_floating_point()
             else torch.equal(a[k], b[k])) for k in a)


def _compressible_state() -> dict:
    g = torch.Generator().manual_seed(0)
    dense = torch.randn(64, 32, 3, 3, generator=g)
    sparse = dense * (torch.rand(dense.shape, generator=g) < 0.08)     # 92% zeros
    sparse.view(-1)[:3] = torch.tensor([-0.0, float("nan"), float("-inf")])
    centroids = torch.randn(16, generator=g)
    palette = centroids[torch.randint(0, 16, (128, 64, 3, 3), generator=g)]   # k-means 4 bits
    two = centroids[:4][torch.randint(0, 4, (40, 33), generator=g)]    # 2 bits, odd count
    pruned_palette = palette * (torch.rand(palette.shape, generator=g) < 0.1)
    return {"dense": dense, "sparse": sparse, "palette": palette, "two": two,
            "pruned_palette": pruned_palette, "one_value": torch.full((300,), 0.25),
            "half": torch.randn(500, generator=g).half() * (torch.rand(500, generator=g) < 0.1),
            "double": palette[:2].double(), "small": torch.zeros(10), "scalar": torch.tensor(3.0),
            "empty": torch.zeros(0, 4), "count": torch.tensor(7), "ints": torch.arange(1000),
            "strided": palette.transpose(0, 1)}


def test_encoded_files_decode_bitwise_and_are_smaller(tmp_path):
    state = _compressible_state()
    weights.write_entry("c", state, {"recipe_version": 1}, {}, tmp_path)
    loaded, entry = weights.load_state_dict("c", tmp_path)
    assert _bitwise_equal(loaded, {k: v.contiguous() for k, v in state.items()})
    assert entry["encoding"] == weights.ENCODING
    plain = len(weights._serialize("c", state, 1, encoding=0))
    assert entry["bytes"] < plain / 3
    # each tensor takes the smallest exact form: a sparse one a mask and its values, one of
    # few values a palette and packed indices, a dense one stays as it is
    from safetensors.torch import load
    keys = set(load((tmp_path / entry["file"]).read_bytes()))
    assert {"sparse::mask", "sparse::values", "palette::palette", "palette::codes4",
            "two::codes2", "one_value::codes1", "dense", "small", "count"} <= keys
    assert not any(k.startswith("dense::") for k in keys)


def test_the_same_weights_give_the_same_bytes_and_old_plain_files_still_load(tmp_path):
    state = _compressible_state()
    a = weights._serialize("c", state, 1)
    assert a == weights._serialize("c", {k: v.clone() for k, v in state.items()}, 1)
    old = tmp_path / "old"
    blob = weights._serialize("p", state, 1, encoding=0)           # a file from before
    old.mkdir()
    (old / "p.safetensors").write_bytes(blob)
    import hashlib
    manifest = {"format": weights.FORMAT, "models": {"p": {
        "file": "p.safetensors", "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}}}
    (old / weights.MANIFEST).write_text(json.dumps(manifest))
    loaded, _ = weights.load_state_dict("p", old)
    assert _bitwise_equal(loaded, {k: v.contiguous() for k, v in state.items()})


def test_encoding_refuses_names_it_would_confuse_and_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="::"):
        weights.write_entry("x", {"a::mask": torch.zeros(3)}, {}, {}, tmp_path)
    with pytest.raises(ValueError, match="encoding"):
        weights._serialize("x", {"a": torch.zeros(3)}, 1, encoding=5)


def test_a_damaged_encoded_tensor_is_refused_by_name(tmp_path):
    import hashlib
    from safetensors.torch import save
    parts = weights._encode("w", torch.zeros(1000).index_fill_(0, torch.tensor([3]), 1.0))
    assert "w::mask" in parts
    del parts["w::shape"]
    blob = save(parts)
    (tmp_path / "d.safetensors").write_bytes(blob)
    manifest = {"format": weights.FORMAT, "models": {"d": {
        "file": "d.safetensors", "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}}}
    (tmp_path / weights.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ZooError, match="d.safetensors.*damaged encoded tensor 'w'"):
        weights.load_state_dict("d", tmp_path)


def test_bitwise_equal_tells_signed_zeros_and_nans_apart():
    a = torch.tensor([0.0, float("nan"), 1.0])
    assert weights.bitwise_equal(a, a.clone())
    assert not weights.bitwise_equal(a, torch.tensor([-0.0, float("nan"), 1.0]))
    assert not weights.bitwise_equal(a, a.double())
    assert weights.bitwise_equal(torch.arange(3), torch.arange(3))
    with pytest.raises(TypeError, match="b must be a"):
        weights.bitwise_equal(a, [0.0])
