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
