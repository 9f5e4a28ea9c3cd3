"""The shipped weights store: safetensors files, a manifest, SHA-256 checks.

torchvision and timm ship weights the same way: trained once on a long recipe, versioned,
hashed, downloaded or read as they are. The book's zoo is a folder ``zoo/`` in the
repository: one ``<name>.safetensors`` file per model (safetensors holds raw tensors and a
JSON header, so loading one runs no code, unlike a pickle), one ``<name>.history.json``
(the per-epoch training curve) and ``manifest.json``, which says for every model what it
is (architecture and arguments), how it was trained (recipe, recipe version, seed,
epochs, where and with which torch, how long) and what it scores (test accuracy, and the
number right on a fixed 1,000-image test subset that a test re-checks exactly), with the
file's SHA-256 and size.

Nothing here trains: :mod:`lightcnn.zoo` decides what to build; this module reads and
writes the files and refuses anything damaged, naming the file and the command that
rebuilds it. A file is only written through :func:`write_entry`, which never replaces a
model unless told that its recipe version changed.

Taught in book/benchmarking.md (the zoo) and chapters/01_cnn_basics.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from pathlib import Path

import torch

from ._io import atomic_write
from ._checks import check_bool, check_mapping, check_path, check_str, check_tensor

__all__ = ["ZooError", "MANIFEST", "ENCODING", "bitwise_equal", "zoo_dir", "read_manifest",
           "check_store", "load_state_dict",
           "read_history", "write_entry", "sha256_file", "rebuild_command"]

MANIFEST = "manifest.json"
FORMAT = 1   # the manifest's own layout; bump when its fields change meaning
# How tensors are laid out in a file: 0, as they are; 1, each float tensor in the smallest
# of three exact forms (see _encode). A manifest entry names its file's encoding (none: 0),
# so a retrained model is serialized as its shipped file was before their SHA-256 compare.
ENCODING = 1
_SEP = "::"          # "<tensor>::<part>" names the parts of an encoded tensor
_MIN_ENCODED = 256   # smaller tensors stay as they are: their parts' headers cost more


class ZooError(RuntimeError):
    """A shipped model is missing, damaged, stale or not a safetensors file."""


def zoo_dir() -> Path:
    """The folder of shipped weights: ``$LIGHTCNN_ZOO``, else ``zoo/`` beside the package.

    A copy of the package without the folder (``pip install`` of the wheel, one module
    copied into another project) has no shipped models: every model is trained instead.
    """
    if os.environ.get("LIGHTCNN_ZOO"):
        return Path(os.environ["LIGHTCNN_ZOO"]).expanduser()
    return Path(__file__).resolve().parent.parent / "zoo"


def rebuild_command(name: str) -> str:
    """The command that trains ``name`` again and writes it into the zoo."""
    check_str("name", name)
    return f"python -m lightcnn.zoo build {name}  (or: make zoo NAMES={name})"


def sha256_file(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB pieces."""
    check_path("path", path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(1 << 20), b""):
            digest.update(piece)
    return digest.hexdigest()


def read_manifest(folder: Path | None = None) -> dict[str, dict]:
    """The manifest's models (``{name: entry}``); empty when the folder has no manifest.

    Raises:
        ZooError: the manifest is not valid JSON or not in this module's format.
    """
    check_path("folder", folder, none=True)
    folder = zoo_dir() if folder is None else Path(folder)
    path = folder / MANIFEST
    if not path.exists():
        return {}
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ZooError(f"{path} is not readable JSON ({err}); restore it with "
                       f"`git checkout -- {path}`") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT \
            or not isinstance(manifest.get("models"), dict):
        raise ZooError(f"{path} is not a lightcnn zoo manifest of format {FORMAT}")
    return manifest["models"]


def check_store(folder: Path | None = None) -> None:
    """Refuse a zoo whose files and manifest disagree: an entry without its file, or a
    weights file without an entry (each named, with the command that rebuilds it).

    Only presence is checked here; :func:`load_state_dict` checks each file's bytes.
    """
    check_path("folder", folder, none=True)
    folder = zoo_dir() if folder is None else Path(folder)
    models = read_manifest(folder)
    for name, entry in models.items():
        if not (folder / entry["file"]).is_file():
            raise ZooError(f"zoo: the manifest lists {name!r} but {folder / entry['file']} "
                           f"is missing; rebuild it with {rebuild_command(name)}")
    listed = {entry["file"] for entry in models.values()}
    for path in sorted(folder.glob("*.safetensors")):
        if path.name not in listed:
            raise ZooError(f"zoo: {path} has no entry in {folder / MANIFEST}: a file the "
                           f"manifest does not vouch for is never loaded. Delete it, or "
                           f"rebuild it with {rebuild_command(path.stem)}")


def _looks_like_safetensors(blob: bytes) -> bool:
    # 8 bytes of little-endian header length, then the JSON header, which opens with "{"
    size = int.from_bytes(blob[:8], "little")
    return len(blob) > 8 and blob[8:9] == b"{" and 8 + size <= len(blob)


def _refuse_pickle(blob: bytes, path: Path, name: str) -> None:
    # torch.save writes a zip archive ("PK"); a bare pickle starts with protocol byte 0x80.
    # A safetensors file can start with either too: its first bytes are the header's
    # length, and a length of 128 + 256 k starts with 0x80 (a zoo file did), so those
    # bytes alone say nothing once the file reads as safetensors.
    if _looks_like_safetensors(blob):
        return
    if blob[:2] == b"PK" or blob[:1] == b"\x80":
        raise ZooError(f"zoo: {path} is a pickle (torch.save) file, not safetensors; the zoo "
                       f"loads only safetensors, whose loading runs no code. Rebuild it "
                       f"with {rebuild_command(name)}")


def load_state_dict(name: str, folder: Path | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """The state dict of shipped model ``name`` and its manifest entry, after checking the
    file's size and SHA-256 against the manifest.

    Raises:
        ZooError: no such entry, the file is missing, truncated, changed, a pickle, or not
            a readable safetensors file (the message names the file and the rebuild
            command). A damaged file is never loaded and never replaced here.
    """
    from safetensors.torch import load as _load_safetensors

    check_str("name", name)
    check_path("folder", folder, none=True)
    folder = zoo_dir() if folder is None else Path(folder)
    models = read_manifest(folder)
    if name not in models:
        raise ZooError(f"zoo: no shipped model {name!r} in {folder / MANIFEST}; build it "
                       f"with {rebuild_command(name)}")
    entry = models[name]
    path = folder / entry["file"]
    if not path.is_file():
        raise ZooError(f"zoo: the manifest lists {name!r} but {path} is missing; rebuild "
                       f"it with {rebuild_command(name)}")
    blob = path.read_bytes()   # checked and parsed from the same bytes
    if len(blob) != entry["bytes"] or hashlib.sha256(blob).hexdigest() != entry["sha256"]:
        _refuse_pickle(blob, path, name)
        what = "truncated" if len(blob) < entry["bytes"] else "changed"
        raise ZooError(f"zoo: {path} is {what} ({len(blob):,} bytes, manifest says "
                       f"{entry['bytes']:,}; its SHA-256 does not match the manifest). "
                       f"Restore it with `git checkout -- {path}` or rebuild it with "
                       f"{rebuild_command(name)}")
    _refuse_pickle(blob, path, name)
    try:
        state = _load_safetensors(blob)
    except Exception as err:  # the header or a tensor record is malformed
        raise ZooError(f"zoo: {path} is not a readable safetensors file ({err}); rebuild "
                       f"it with {rebuild_command(name)}") from err
    return _decode(state, path), entry


def read_history(name: str, folder: Path | None = None) -> dict[str, list[float]]:
    """The per-epoch training history shipped beside model ``name`` (empty if none)."""
    check_str("name", name)
    check_path("folder", folder, none=True)
    folder = zoo_dir() if folder is None else Path(folder)
    entry = read_manifest(folder).get(name)
    if entry is None or not entry.get("history"):
        return {}
    path = folder / entry["history"]
    if not path.is_file():
        raise ZooError(f"zoo: {path} (the history of {name!r}) is missing; restore it with "
                       f"`git checkout -- {path}` or rebuild with {rebuild_command(name)}")
    return json.loads(path.read_text())


def _as_bits(t: torch.Tensor) -> torch.Tensor:
    """A float tensor's bit patterns as integers of its width: equal patterns are equal
    values *and* keep -0.0 apart from 0.0 and every NaN payload, which ``==`` would not."""
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors have the same dtype, shape and bits (-0.0 differs from 0.0, a NaN
    equals the same NaN): what equal SHA-256s of two files of them would say."""
    check_tensor("a", a)
    check_tensor("b", b)
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.is_floating_point():
        return torch.equal(_as_bits(a.contiguous()), _as_bits(b.contiguous()))
    return torch.equal(a, b)


def _pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes below ``2**bits`` (bits 1, 2, 4 or 8), ``8 // bits`` per byte, the first code
    in the lowest bits."""
    per = 8 // bits
    pad = codes.new_zeros(-len(codes) % per, dtype=torch.uint8)
    codes = torch.cat([codes.to(torch.uint8), pad])
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8)
    return (codes.view(-1, per) << shifts).sum(1, dtype=torch.uint8)


def _unpack_codes(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8)
    return ((packed.view(-1, 1) >> shifts) & (2 ** bits - 1)).reshape(-1)[:n]


def _encode(key: str, t: torch.Tensor) -> dict[str, torch.Tensor]:
    """Tensor ``key`` in the smallest of three exact forms (ties keep the earlier):

    * as it is;
    * a *palette*, where it holds at most 256 distinct values (k-means weight sharing holds
      ``2**bits``): ``key::palette`` (the values) and ``key::codes<b>`` (each element's
      index, packed ``b`` = 1, 2, 4 or 8 bits each);
    * *sparse*, where at least half of it is 0 (pruning): ``key::mask`` (one bit per
      element, set where it is not 0) and ``key::values`` (those elements, in order), and
      ``key::negzero`` (one bit per element, set at -0.0) where some zeros are negative.

    Both carry ``key::shape``. Values are compared by bit pattern, so the decoded tensor is
    bitwise the original (-0.0 and NaN included)."""
    t = t.detach().contiguous()
    if not t.is_floating_point() or t.numel() < _MIN_ENCODED:
        return {key: t}
    flat = t.reshape(-1)
    bits_of = _as_bits(flat)
    shape = {f"{key}{_SEP}shape": torch.tensor(t.shape, dtype=torch.int64)}
    forms = [{key: t}]
    values, codes = torch.unique(bits_of, return_inverse=True)   # sorted: deterministic
    if len(values) <= 256:
        b = next(b for b in (1, 2, 4, 8) if len(values) <= 2 ** b)
        forms.append({f"{key}{_SEP}palette": values.view(t.dtype),
                      f"{key}{_SEP}codes{b}": _pack_codes(codes, b), **shape})
    zero = flat == 0                  # +0.0 and -0.0 (x * mask gives -0.0 for x < 0)
    if 2 * int(zero.sum()) >= flat.numel():
        form = {f"{key}{_SEP}mask": _pack_codes(~zero, 1),
                f"{key}{_SEP}values": flat[~zero], **shape}
        negative = zero & (bits_of != 0)
        if negative.any():
            form[f"{key}{_SEP}negzero"] = _pack_codes(negative, 1)
        forms.append(form)
    return min(forms, key=lambda f: sum(v.numel() * v.element_size() + 64 for v in f.values()))


def _decode(state: dict[str, torch.Tensor], path: Path | str = "the file"
            ) -> dict[str, torch.Tensor]:
    """The state dict an encoded file stores (:func:`_encode`'s parts put back together).

    Raises:
        ZooError: an encoded tensor without its shape, or whose parts do not fit it."""
    out, parts = {}, {}
    for key, value in state.items():
        if _SEP in key:
            base, part = key.rsplit(_SEP, 1)
            parts.setdefault(base, {})[part] = value
        else:
            out[key] = value
    for key, p in parts.items():
        try:
            shape = tuple(p["shape"].tolist())
            n = int(torch.tensor(shape).prod()) if shape else 1
            codes = [k for k in p if k.startswith("codes")]
            if "palette" in p and len(codes) == 1:
                index = _unpack_codes(p[codes[0]], int(codes[0][5:]), n).long()
                tensor = p["palette"][index]
            elif "mask" in p and "values" in p:
                mask = _unpack_codes(p["mask"], 1, n).bool()
                tensor = torch.zeros(n, dtype=p["values"].dtype)
                tensor[mask] = p["values"]
                if "negzero" in p:
                    tensor[_unpack_codes(p["negzero"], 1, n).bool()] = -0.0
            else:
                raise KeyError(f"parts {sorted(p)}")
            out[key] = tensor.reshape(shape)
        except (KeyError, RuntimeError, ValueError, IndexError) as err:
            raise ZooError(f"zoo: {path} holds a damaged encoded tensor {key!r} ({err})") from err
    return out


def _serialize(name: str, state_dict: dict[str, torch.Tensor], recipe_version,
               encoding: int = ENCODING) -> bytes:
    """The bytes of model ``name``'s safetensors file (what the manifest's SHA-256 hashes),
    its tensors laid out by ``encoding`` (0: as they are; 1: :func:`_encode`). Either way it
    is a plain safetensors file any reader opens; encoding 1 names some tensors' parts
    ``<tensor>::<part>``, which :func:`load_state_dict` puts back together."""
    from safetensors.torch import save as _save_safetensors

    if encoding not in (0, ENCODING):
        raise ValueError(f"encoding must be 0 or {ENCODING}, got {encoding!r}")
    clash = [k for k in state_dict if _SEP in k]
    if clash:
        raise ValueError(f"state_dict names may not contain {_SEP!r} (the encoding's "
                         f"separator), got {clash[0]!r}")
    # safetensors stores each tensor once, contiguous; shared storage is not allowed
    tensors = {}
    for k, v in state_dict.items():
        tensors.update(_encode(k, v) if encoding else {k: v.detach().contiguous()})
    tensors = {k: v.clone() for k, v in tensors.items()}
    if not encoding:   # the layout of the first files (safetensors writes their two keys in
        # either order, so two serializations of the same weights can differ in bytes)
        return _save_safetensors(tensors, metadata={"name": name,
                                                    "recipe_version": str(recipe_version)})
    # one metadata key: the same weights always give the same bytes
    info = json.dumps({"name": name, "recipe_version": str(recipe_version),
                       "encoding": encoding}, sort_keys=True)
    return _save_safetensors(tensors, metadata={"lightcnn": info})


def write_entry(name: str, state_dict: dict[str, torch.Tensor], meta: dict,
                history: dict[str, list[float]], folder: Path | None = None,
                replace: bool = False) -> dict:
    """Write model ``name`` into the zoo: its safetensors file, its history and its
    manifest entry (``meta`` plus file, bytes, SHA-256 and the time), each through a
    temporary file so that an interrupted build leaves the old state.

    Args:
        replace: allow replacing an existing entry; :mod:`lightcnn.zoo` passes it only
            when the entry's recipe version changed (every replaced file stays in git's
            history).

    Raises:
        ZooError: ``name`` is already shipped and ``replace`` is false.
        TypeError, ValueError: an argument of the wrong type, or a ``name`` that is not a
            plain file name.
    """
    check_str("name", name)
    if "/" in name or "\\" in name or name in (".", ".."):
        raise ValueError(f"name must be a file name without a folder, got {name!r}")
    check_mapping("state_dict", state_dict, what="a dict of name -> tensor")
    bad = [k for k, v in state_dict.items() if not isinstance(k, str)
           or not isinstance(v, torch.Tensor)]
    if bad:
        raise TypeError(f"state_dict must map str names to tensors, got {bad[0]!r} -> "
                        f"{type(state_dict[bad[0]]).__name__}")
    check_mapping("meta", meta)
    check_mapping("history", history, what="a dict of metric -> per-epoch values")
    check_path("folder", folder, none=True)
    check_bool("replace", replace)
    folder = zoo_dir() if folder is None else Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    models = read_manifest(folder)
    if name in models and not replace:
        raise ZooError(f"zoo: {name!r} is already shipped ({folder / models[name]['file']}); "
                       "a shipped model is replaced only when its recipe version changes")
    blob = _serialize(name, state_dict, meta.get("recipe_version"))
    entry = dict(meta, file=f"{name}.safetensors", bytes=len(blob), encoding=ENCODING,
                 sha256=hashlib.sha256(blob).hexdigest(), history=f"{name}.history.json",
                 written=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    atomic_write(folder / entry["file"], blob)
    atomic_write(folder / entry["history"], (json.dumps(history, indent=1) + "\n").encode())
    models = dict(models, **{name: entry})
    manifest = {"format": FORMAT, "models": dict(sorted(models.items()))}
    atomic_write(folder / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
    return entry


