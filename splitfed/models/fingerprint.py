"""A fingerprint of a base model, from its files, so that parties can check they hold the same model.

The server and each client keep their own copy of the model directory; at connection time
they compare `model_fingerprint`.  It hashes, in sorted tensor-name order, each tensor's
name, dtype, shape and the SHA-256 of its raw bytes (read straight from the safetensors
file at the header's ``data_offsets``), together with a canonical JSON of ``config.json``
without the keys that do not change what the model computes.  So it is the same whether
the weights are one file or sharded, and differs when any weight value, a dtype, or a
relevant config value differs.  The tokenizer is not part of it (the server has none).

Per-file tensor digests are cached in a JSON file keyed by the file's absolute path, size
and mtime, so a second call on a large checkpoint only stats its files.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

from splitfed.atomic import atomic_open
from splitfed.models.checkpoint import CheckpointError, safetensors_header, tensor_files

VERSION = "splitfed-model-fingerprint/1"
_CACHE_VERSION = 1
_CHUNK = 16 << 20
_WORKERS = min(8, os.cpu_count() or 1)

#: config.json keys that do not change the model's forward: bookkeeping, the class name,
#: the storage dtype (the tensors' dtypes are hashed), runtime switches, generation
#: defaults and token ids (tokenizer matters, not part of the weights).
VOLATILE_CONFIG_KEYS = frozenset(
    {
        "transformers_version",
        "_name_or_path",
        "name_or_path",
        "_model_name_or_path",
        "_commit_hash",
        "architectures",
        "dtype",
        "torch_dtype",
        "use_cache",
        "attn_implementation",
        "_attn_implementation",
        "_attn_implementation_autoset",
        "output_attentions",
        "output_hidden_states",
        "return_dict",
        "torchscript",
        "use_return_dict",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "unk_token_id",
        "sep_token_id",
        "decoder_start_token_id",
        "tokenizer_class",
        "task_specific_params",
        "max_length",
        "min_length",
        "do_sample",
        "early_stopping",
        "num_beams",
        "temperature",
        "top_k",
        "top_p",
        "repetition_penalty",
        "length_penalty",
        "no_repeat_ngram_size",
        "num_return_sequences",
    }
)


def canonical_config(config: dict) -> dict:
    """`config` without `VOLATILE_CONFIG_KEYS` (also inside ``*_config`` sub-configs)."""
    out = {}
    for k, v in config.items():
        if k in VOLATILE_CONFIG_KEYS:
            continue
        if isinstance(v, dict) and k.endswith("_config") and k != "quantization_config":
            v = canonical_config(v)
        out[k] = v
    return out


def _hash_range(path: Path, start: int, length: int) -> str:
    h = hashlib.sha256()
    buf = bytearray(min(length, _CHUNK) or 1)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        f.seek(start)
        while length:
            got = f.readinto(view[: min(length, _CHUNK)])
            if not got:
                raise CheckpointError(f"{path}: file ended inside a tensor (truncated copy?)")
            h.update(view[:got])
            length -= got
    return h.hexdigest()


def hash_safetensors(path: Path) -> dict[str, list]:
    """``name -> [dtype, shape, sha256 hex of the raw bytes]`` for every tensor in `path`.

    Tensors are hashed on a few threads (hashlib releases the GIL), largest first.
    """
    from concurrent.futures import ThreadPoolExecutor

    header = safetensors_header(path)
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        size = os.fstat(f.fileno()).st_size
    base = 8 + n
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    for name, entry in tensors.items():
        begin, end = entry["data_offsets"]
        if not 0 <= begin <= end or base + end > size:
            raise CheckpointError(f"{path}: tensor {name!r} lies outside the file (truncated copy?)")
    order = sorted(tensors, key=lambda k: tensors[k]["data_offsets"][0] - tensors[k]["data_offsets"][1])
    with ThreadPoolExecutor(max_workers=min(_WORKERS, len(order) or 1)) as pool:
        hexes = pool.map(
            lambda k: _hash_range(path, base + tensors[k]["data_offsets"][0], _nbytes(tensors[k])),
            order,
        )
        return {k: [tensors[k]["dtype"], list(tensors[k]["shape"]), hx] for k, hx in zip(order, hexes, strict=True)}


def _nbytes(entry: dict) -> int:
    begin, end = entry["data_offsets"]
    return end - begin


def _cache_file(cache: str | os.PathLike | bool | None) -> Path | None:
    if cache is False:
        return None
    if cache is None or cache is True:
        from splitfed.models.pretrained import default_cache_dir

        return default_cache_dir() / "fingerprints.json"
    return Path(cache)


def _load_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        if data.get("version") == _CACHE_VERSION and isinstance(data.get("files"), dict):
            return data["files"]
    except (OSError, ValueError, AttributeError):
        pass
    return {}


def _save_cache(path: Path, files: dict) -> None:
    """Write atomically; best effort: an unwritable cache is skipped."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path) as f:
            json.dump({"version": _CACHE_VERSION, "files": files}, f)
    except OSError:
        pass


def file_digests(path: Path, cache: dict | None = None) -> tuple[dict[str, list], bool]:
    """(tensor digests of one safetensors file, whether they were computed rather than cached)."""
    st = path.stat()
    key = str(path.resolve())
    entry = (cache or {}).get(key)
    if isinstance(entry, dict) and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns:
        return entry["tensors"], False
    tensors = hash_safetensors(path)
    if cache is not None:
        cache[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "tensors": tensors}
    return tensors, True


def model_fingerprint(path: str | os.PathLike, *, cache: str | os.PathLike | bool | None = None) -> str:
    """``"sha256:<hex>"`` of the base model in directory `path` (see the module docstring).

    `cache`: the digest cache file (default ``default_cache_dir() / "fingerprints.json"``);
    ``False`` computes without one.  Raises `CheckpointError` for a directory without
    config.json or safetensors weights.
    """
    d = Path(path).expanduser()
    try:
        config = json.loads((d / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{d}: no config.json; expected a Hugging Face model directory") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{d}: config.json is unreadable ({exc})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{d}: config.json is not a JSON object")
    files = tensor_files(d)
    cache_path = _cache_file(cache)
    cached = _load_cache(cache_path) if cache_path else None
    changed = False
    digests: dict[str, list] = {}
    for f in sorted(set(files.values())):
        tensors, computed = file_digests(f, cached)
        changed |= computed
        for name, where in files.items():
            if where == f:
                if name not in tensors:
                    raise CheckpointError(f"{d}: the index maps {name!r} to {f.name}, which does not contain it")
                digests[name] = tensors[name]
    if changed and cache_path:
        _save_cache(cache_path, cached)
    h = hashlib.sha256()
    h.update(json.dumps({"version": VERSION, "config": canonical_config(config)}, sort_keys=True).encode())
    for name in sorted(digests):
        h.update(b"\n" + json.dumps([name, *digests[name]]).encode())
    return f"sha256:{h.hexdigest()}"
