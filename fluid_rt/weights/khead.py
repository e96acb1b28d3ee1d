"""The K-head file: ``model_head.bin`` (torch pickle, loaded ONLY with ``weights_only=True``) or
``model_head.safetensors``, next to the checkpoint or in its ``head/`` subfolder."""

from __future__ import annotations

import os

import torch

from fluid_rt.khead import PREFIX

HEAD_NAMES = ("model_head.safetensors", "model_head.bin")


def find_khead(directory: str) -> str | None:
    """The K-head file in ``directory`` or ``directory/head``, or None."""
    for sub in ("", "head"):
        for name in HEAD_NAMES:
            candidate = os.path.join(directory, sub, name)
            if os.path.isfile(candidate):
                return candidate
    return None


def _read_file(path: str) -> dict:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        from fluid_rt.weights.safetensors_loader import read_safetensors_header

        read_safetensors_header(path)  # clear errors for corrupt / truncated files
        try:
            return load_file(path, device="cpu")
        except Exception as err:
            raise ValueError(f"{path}: cannot read K-head safetensors ({err})") from err
    try:
        # weights_only=True: the restricted unpickler refuses any global that is not a tensor /
        # plain container, so a payload (a __reduce__ calling os.system, ...) never runs.
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"{path}: refused to load K-head pickle: it is not a plain tensor state "
            f"dict loadable with weights_only=True ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''})"
        ) from err
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: K-head file holds a {type(obj).__name__}, expected a state dict")
    return obj


def load_khead(path_or_dir: str, hidden_size: int) -> tuple[dict[str, torch.Tensor], int]:
    """Load and check a K-head -> ``(state_dict, max_k)``.

    ``path_or_dir``: the file itself, or a directory searched by ``find_khead``
    (FileNotFoundError when it holds none). The state dict has the reference keys
    ``diffusion_k_head.{0,2}.{weight,bias}`` (files without the prefix are accepted) with shapes
    ``[H/4, H], [H/4], [max_k, H/4], [max_k]`` checked against ``hidden_size``."""
    path = os.fspath(path_or_dir)
    if os.path.isdir(path):
        found = find_khead(path)
        if found is None:
            raise FileNotFoundError(f"{path}: no {' / '.join(HEAD_NAMES)} here or in head/")
        path = found
    elif not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: K-head file not found")
    raw = _read_file(path)
    sd = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ValueError(f"{path}: K-head entry {key!r} is not a named tensor")
        sd[key if key.startswith(PREFIX) else PREFIX + key] = value
    want = [PREFIX + k for k in ("0.weight", "0.bias", "2.weight", "2.bias")]
    missing = [k for k in want if k not in sd]
    unexpected = [k for k in sd if k not in want]
    if missing or unexpected:
        raise ValueError(f"{path}: K-head tensors missing {missing}, unexpected {unexpected}")
    q = hidden_size // 4
    w2 = sd[PREFIX + "2.weight"]
    max_k = w2.shape[0] if w2.dim() == 2 else -1
    shapes = {
        PREFIX + "0.weight": (q, hidden_size),
        PREFIX + "0.bias": (q,),
        PREFIX + "2.weight": (max_k, q),
        PREFIX + "2.bias": (max_k,),
    }
    if max_k < 1:
        raise ValueError(
            f"{path}: K-head tensor {PREFIX}2.weight has shape {tuple(w2.shape)}, "
            "expected [max_k >= 1, hidden_size // 4]"
        )
    for key, shape in shapes.items():
        if tuple(sd[key].shape) != shape:
            raise ValueError(
                f"{path}: K-head tensor {key} has shape {tuple(sd[key].shape)}, "
                f"expected {shape} for hidden_size {hidden_size}"
            )
        if not sd[key].is_floating_point():
            raise ValueError(f"{path}: K-head tensor {key} has non-float dtype {sd[key].dtype}")
    return sd, max_k
