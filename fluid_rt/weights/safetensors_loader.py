"""HF checkpoints: ``config.json`` + ``model.safetensors`` (or shards + ``model.safetensors.index.json``).

Every file's header is parsed and checked by hand before safetensors touches it (offsets inside the
file, sizes that agree with dtype x shape, no gaps or overlaps), so a truncated or lying file gives a
ValueError that names the file and the tensor instead of a crash or garbage. The tensor set is checked
against ``config.expected_tensor_shapes`` (missing / unexpected / mis-shaped) before anything is read.
Tensors are read through ``safe_open`` (memory-mapped) one by one and converted to the target dtype.
"""

from __future__ import annotations

import json
import math
import os
import struct
import sys

import torch

from fluid_rt.config import ModelConfig, expected_tensor_shapes, optional_tensor_shapes

CONFIG_JSON = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

# safetensors dtype tag -> (bytes per element, is floating point)
_DTYPES = {
    "F64": (8, True),
    "F32": (4, True),
    "F16": (2, True),
    "BF16": (2, True),
    "F8_E4M3": (1, True),
    "F8_E5M2": (1, True),
    "I64": (8, False),
    "I32": (4, False),
    "I16": (2, False),
    "I8": (1, False),
    "U64": (8, False),
    "U32": (4, False),
    "U16": (2, False),
    "U8": (1, False),
    "BOOL": (1, False),
}
_MAX_HEADER_BYTES = 100 * 1024 * 1024
_PROGRESS_MIN_BYTES = 512 * 1024 * 1024


def read_safetensors_header(path: str) -> dict[str, dict]:
    """Parse and validate the header of a safetensors file.

    Returns ``name -> {"dtype", "shape", "data_offsets"}`` (``__metadata__`` dropped). Raises
    ValueError naming the file (and tensor) when the header is malformed, describes data outside
    the file, sizes that disagree with dtype x shape, overlapping tensors, or a file cut short."""
    if not os.path.isfile(path):
        raise ValueError(f"{path}: file not found")
    file_size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path}: truncated safetensors file ({file_size} bytes, no header)")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER_BYTES or 8 + n > file_size:
            raise ValueError(
                f"{path}: corrupt safetensors header (header length {n}, file size "
                f"{file_size}): truncated or not a safetensors file"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: corrupt safetensors header (not valid JSON: {err})") from err
    if not isinstance(header, dict):
        raise ValueError(f"{path}: corrupt safetensors header (not a JSON object)")
    header.pop("__metadata__", None)
    data_size = file_size - 8 - n
    spans = [_check_entry(path, name, info, data_size) for name, info in header.items()]
    _check_spans(path, spans, data_size)
    return header


def _check_entry(path: str, name: str, info, data_size: int) -> tuple[int, int, str]:
    """One header entry checked (dtype, shape, offsets, size, inside the data): its data span."""
    try:
        dtype, shape, (begin, end) = info["dtype"], list(info["shape"]), info["data_offsets"]
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: tensor {name}: malformed header entry {info!r}") from err
    if dtype not in _DTYPES:
        raise ValueError(f"{path}: tensor {name}: unknown dtype {dtype!r}")
    if not all(isinstance(s, int) and s >= 0 for s in shape):
        raise ValueError(f"{path}: tensor {name}: bad shape {shape}")
    if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end):
        raise ValueError(f"{path}: tensor {name}: bad data_offsets {[begin, end]}")
    nbytes = math.prod(shape) * _DTYPES[dtype][0]
    if end - begin != nbytes:
        raise ValueError(
            f"{path}: tensor {name}: header says {end - begin} bytes but dtype "
            f"{dtype} x shape {shape} needs {nbytes} (corrupt header)"
        )
    if end > data_size:
        raise ValueError(
            f"{path}: tensor {name}: data ends at byte {end} but the file holds "
            f"only {data_size} bytes of data (file truncated?)"
        )
    return begin, end, name


def _check_spans(path: str, spans: list[tuple[int, int, str]], data_size: int) -> None:
    """The tensors' data spans tile the data section exactly: no gap, no overlap, nothing left."""
    spans.sort()
    cursor = 0
    for begin, end, name in spans:
        if begin != cursor:
            what = "overlaps the previous tensor" if begin < cursor else "leaves a gap before it"
            raise ValueError(f"{path}: tensor {name}: data_offsets {[begin, end]} {what} (corrupt header)")
        cursor = end
    if cursor != data_size:
        raise ValueError(
            f"{path}: header describes {cursor} bytes of data but the file holds "
            f"{data_size} (corrupt or truncated file)"
        )


def read_config(path: str) -> ModelConfig:
    """``<path>/config.json`` -> ModelConfig (ValueError naming the file on any problem)."""
    cfg_path = os.path.join(path, CONFIG_JSON)
    if not os.path.isfile(cfg_path):
        raise ValueError(f"{cfg_path}: not found (not an HF checkpoint directory?)")
    try:
        with open(cfg_path, encoding="utf-8") as f:
            d = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{cfg_path}: not valid JSON ({err})") from err
    if not isinstance(d, dict):
        raise ValueError(f"{cfg_path}: expected a JSON object, got {type(d).__name__}")
    try:
        return ModelConfig.from_hf_dict(d)
    except (KeyError, TypeError) as err:
        raise ValueError(f"{cfg_path}: missing or malformed field {err}") from err
    except ValueError as err:
        raise ValueError(f"{cfg_path}: {err}") from err


def _tensor_files(path: str) -> dict[str, str]:
    """name -> file for every tensor of the checkpoint in ``path`` (index or single file)."""
    index_path = os.path.join(path, INDEX_FILE)
    single = os.path.join(path, SINGLE_FILE)
    if os.path.isfile(index_path):
        try:
            with open(index_path, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{index_path}: malformed index ({err!r})") from err
        if not isinstance(weight_map, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
        ):
            raise ValueError(f"{index_path}: weight_map must map tensor names to shard file names")
        headers = {}
        where = {}
        for name, shard in weight_map.items():
            shard_path = os.path.join(path, shard)
            if shard_path not in headers:
                if not os.path.isfile(shard_path):
                    raise ValueError(
                        f"{index_path}: tensor {name} is in shard {shard}, but {shard_path} does not exist"
                    )
                headers[shard_path] = read_safetensors_header(shard_path)
            if name not in headers[shard_path]:
                raise ValueError(
                    f"{index_path}: tensor {name} is listed in {shard}, but {shard_path} does not hold it"
                )
            where[name] = shard_path
        return where
    if os.path.isfile(single):
        return {name: single for name in read_safetensors_header(single)}
    raise ValueError(f"{path}: no {SINGLE_FILE} or {INDEX_FILE} found")


def load_hf_checkpoint(
    path: str, dtype: torch.dtype = torch.float32, progress: bool = None
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Load an HF checkpoint directory -> ``(ModelConfig, {hf_name: tensor in dtype})``.

    Every tensor the config needs must be present with its exact shape, and nothing else
    (``*.rotary_emb.inv_freq`` is ignored; a tied checkpoint may still carry ``lm_head.weight``,
    which is dropped). Raises ValueError naming the file and tensor on any mismatch or corruption.
    ``progress``: tqdm bar; default on for checkpoints over 512 MiB when stderr is a terminal."""
    path = os.fspath(path)
    cfg = read_config(path)
    where = {n: f for n, f in _tensor_files(path).items() if not n.endswith("rotary_emb.inv_freq")}
    expected = expected_tensor_shapes(cfg)
    _check_names(path, cfg, where, expected)
    headers = {f: read_safetensors_header(f) for f in set(where.values())}
    total = _check_headers(where, headers, expected)
    if progress is None:
        progress = total >= _PROGRESS_MIN_BYTES and sys.stderr.isatty()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"loading {os.path.basename(path)}")
    try:
        return cfg, _read_tensors(where, headers, expected, dtype, bar)
    finally:
        if bar is not None:
            bar.close()


def _check_names(path: str, cfg: ModelConfig, where: dict[str, str], expected: dict) -> None:
    """Every tensor the config needs is present, and nothing it does not know."""
    optional = optional_tensor_shapes(cfg)
    missing = [n for n in expected if n not in where]
    if missing:
        raise ValueError(
            f"{path}: checkpoint lacks tensor {missing[0]}"
            f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''} "
            f"needed by {cfg.family} config"
        )
    unexpected = [n for n in where if n not in expected and n not in optional]
    if unexpected:
        raise ValueError(
            f"{where[unexpected[0]]}: unexpected tensor {unexpected[0]}"
            f"{f' (and {len(unexpected) - 1} more)' if len(unexpected) > 1 else ''} "
            f"for {cfg.family} config"
        )


def _check_headers(where: dict[str, str], headers: dict, expected: dict) -> int:
    """Shapes and float dtypes from the headers; returns the bytes to read."""
    total = 0
    for name, shape in expected.items():
        info = headers[where[name]][name]
        if tuple(info["shape"]) != shape:
            raise ValueError(
                f"{where[name]}: tensor {name} has shape {tuple(info['shape'])}, expected {shape}"
            )
        if not _DTYPES[info["dtype"]][1]:
            raise ValueError(f"{where[name]}: tensor {name} has non-float dtype {info['dtype']}")
        total += info["data_offsets"][1] - info["data_offsets"][0]
    return total


def _read_tensors(
    where: dict[str, str], headers: dict, expected: dict, dtype: torch.dtype, bar
) -> dict[str, torch.Tensor]:
    """The expected tensors in ``dtype``, one file open at a time (bar: tqdm or None)."""
    from safetensors import safe_open

    state = {}
    by_file: dict[str, list] = {}
    for name in expected:
        by_file.setdefault(where[name], []).append(name)
    for file, names in sorted(by_file.items()):
        try:
            with safe_open(file, framework="pt", device="cpu") as f:
                for name in names:
                    state[name] = f.get_tensor(name).to(dtype)
                    if bar is not None:
                        off = headers[file][name]["data_offsets"]
                        bar.update(off[1] - off[0])
        except ValueError:
            raise
        except Exception as err:  # safetensors raises its own error types
            raise ValueError(f"{file}: cannot read tensors ({err})") from err
    return state
