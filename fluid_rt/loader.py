"""``load_model``: one call from a path (HF directory, .gguf file, or the embedded default) to a
ready model, its FLUID config, K-head and tokenizer."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any, Optional

import torch

from fluid_rt.config import FluidConfig, ModelConfig
from fluid_rt.khead import KHead
from fluid_rt.model import Transformer

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")


@dataclass
class LoadedModel:
    model: Transformer
    config: ModelConfig
    fluid: FluidConfig
    khead: Optional[KHead]
    tokenizer: Any
    path: str


def _load_dir_tokenizer(path: str):
    if not any(os.path.isfile(os.path.join(path, n)) for n in _TOKENIZER_FILES):
        return None
    try:
        from fluid_rt.tokenizer import load_tokenizer
    except ImportError:
        return None
    return load_tokenizer(path)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# How a quantized GGUF's matrices are held (load_model's ``weights``).
WEIGHTS = ("quantized", "float")


def resolve_dtype_device(dtype, device) -> tuple[torch.dtype, torch.device]:
    """``dtype`` (a torch dtype or its name) and ``device`` checked before anything is loaded:
    float32 / bfloat16 / float16 on ``cpu`` or an available ``cuda`` device."""
    if isinstance(dtype, str):
        dtype = DTYPES.get(dtype.removeprefix("torch."), dtype)
    if dtype not in DTYPES.values():
        raise ValueError(f"dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device: {device!r} is not a device ({err})") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device: {device}: no CUDA GPU is usable here (torch "
                             f"{torch.__version__})")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device: {device}: there are {torch.cuda.device_count()} CUDA devices")
    elif device.type != "cpu":
        raise ValueError(f"device: {device}: fluid_rt runs on cpu or cuda")
    return dtype, device


def load_model(path: Optional[str] = None, *, head: Optional[str] = None,
               dtype: torch.dtype | str = torch.float32, device="cpu",
               mask_token_id: Optional[int] = None,
               end_of_think_token_id: Optional[int] = None,
               weights: str = "quantized") -> LoadedModel:
    """Load a model for decoding.

    path: None -> the embedded default GGUF model; ``*.gguf`` -> GGUF file; a directory -> HF
    checkpoint (config.json + safetensors), its K-head (``model_head.{safetensors,bin}`` there or in
    ``head/``, optional) and tokenizer (optional). head: an explicit K-head file or directory.
    dtype: float32, bfloat16 or float16 (a torch dtype or its name); device: cpu or cuda, both
    checked (ValueError) before anything is read.
    FLUID tokens: defaults (openPangu's ids, for the pangu family only; None for other
    vocabularies) < ``fluid.json`` next to the checkpoint < the arguments here. An argument
    outside the vocabulary raises ValueError; a default / fluid.json mask id outside it warns (pass
    ``mask_token_id=``) and such an end-of-think id becomes None (the model cannot emit it).
    With a K-head, ``fluid.max_k`` is the head's output size.
    weights: ``"quantized"`` (default) keeps a GGUF file's Q8_0/Q4_0/Q4_1/Q4_K/Q6_K matrices in
    their blocks and runs them on the quantized kernels (``fluid_rt.qlinear``) when the model runs
    on the CPU in float32 or bfloat16; ``"float"`` dequantizes them to ``dtype`` at load (always
    the case on CUDA). Float checkpoints ignore it."""
    dtype, device = resolve_dtype_device(dtype, device)
    if weights not in WEIGHTS:
        raise ValueError(f"weights: expected one of {', '.join(WEIGHTS)}, got {weights!r}")
    if path is None:
        from fluid_rt.weights.gguf import default_model_path

        path = default_model_path()
    path = os.fspath(path)
    from fluid_rt.weights.khead import find_khead, load_khead

    if path.endswith(".gguf"):
        from fluid_rt.weights.gguf import load_gguf

        quantized = weights == "quantized" and device.type == "cpu" and dtype != torch.float16
        cfg, state, tokenizer = load_gguf(path, dtype, quantized=quantized)
        ckpt_dir = os.path.dirname(os.path.abspath(path))
        head_path = head
    elif os.path.isdir(path):
        from fluid_rt.weights import load_hf_checkpoint

        cfg, state = load_hf_checkpoint(path, dtype)
        tokenizer = _load_dir_tokenizer(path)
        ckpt_dir = path
        head_path = head if head is not None else find_khead(path)
    else:
        raise ValueError(f"{path}: neither a checkpoint directory nor a .gguf file")

    model = Transformer(cfg, state, dtype=dtype, device=device, consume=True)
    del state
    khead = None
    fluid = FluidConfig.load(ckpt_dir, pangu_vocabulary=cfg.family == "pangu",
                             mask_token_id=mask_token_id,
                             end_of_think_token_id=end_of_think_token_id)
    if head_path is not None:
        head_sd, max_k = load_khead(head_path, cfg.hidden_size)
        khead = KHead(head_sd, dtype=dtype, device=device)
        fluid.max_k = max_k  # the head decides how many horizons it can propose
    explicit = {"mask_token_id": mask_token_id, "end_of_think_token_id": end_of_think_token_id}
    for name, given in explicit.items():
        value = getattr(fluid, name)
        if value is None or 0 <= value < cfg.vocab_size:
            continue
        if given is not None:
            raise ValueError(f"{name}: {value} is outside the vocabulary (size {cfg.vocab_size})")
        if name == "end_of_think_token_id" or khead is None:
            # An id past the vocabulary (fluid.json's, or openPangu's default on a smaller
            # vocabulary) means nothing: a plain AR model (no K-head) then has no mask token, and
            # a token the model cannot emit never ends a think.
            setattr(fluid, name, None)
            continue
        warnings.warn(f"{path}: {name} {value} (default / fluid.json) is outside the vocabulary "
                      f"(size {cfg.vocab_size}); pass {name}= to load_model", stacklevel=2)
    return LoadedModel(model=model, config=cfg, fluid=fluid, khead=khead, tokenizer=tokenizer,
                       path=path)
