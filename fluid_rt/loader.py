"""``load_model``: one call from a path (HF directory, .gguf file, or the embedded default) to a
ready model, its FLUID config, K-head and tokenizer."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Any

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
    khead: KHead | None
    tokenizer: Any
    path: str
    adapter: Any = None  # fluid_rt.adapter.Adapter when a gated FLUID adapter is attached
    decode_defaults: dict = field(default_factory=dict)  # the adapter's block_size, min_block, ...


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
            raise ValueError(f"device: {device}: no CUDA GPU is usable here (torch {torch.__version__})")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device: {device}: there are {torch.cuda.device_count()} CUDA devices")
    elif device.type != "cpu":
        raise ValueError(f"device: {device}: fluid_rt runs on cpu or cuda")
    return dtype, device


# The gated FLUID adapter trained for the embedded default model (fluid_rt/data/), loaded with it.
SHIPPED_ADAPTER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "smollm2-fluid")


def load_model(
    path: str | None = None,
    *,
    head: str | None = None,
    adapter: str | None = "auto",
    dtype: torch.dtype | str = torch.float32,
    device="cpu",
    mask_token_id: int | None = None,
    end_of_think_token_id: int | None = None,
    weights: str = "quantized",
) -> LoadedModel:
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
    the case on CUDA). Float checkpoints ignore it.
    adapter: a gated FLUID adapter directory (``fluid_rt.adapter``) to attach: its LoRA and mask
    embedding run at mask rows, its mask id becomes ``fluid.mask_token_id`` and its K-head the
    K-head (unless ``head`` is given). ``"auto"`` (default): the shipped adapter with the embedded
    default model (path None), none otherwise; None: none. An adapter for another base, or a corrupt
    one, raises ``fluid_rt.adapter.AdapterError`` (a ValueError); under ``"auto"`` it only warns and
    the plain base model loads."""
    dtype, device = resolve_dtype_device(dtype, device)
    path, adapter, implicit = _resolve_paths(path, adapter, weights)
    cfg, state, tokenizer, ckpt_dir, head_path = _load_base(path, head, dtype, device, weights)
    model = Transformer(cfg, state, dtype=dtype, device=device, consume=True)
    del state
    attached = _attach_adapter(adapter, model, path, implicit)
    mask_token_id, adapter_head = _adapter_overrides(attached, adapter, mask_token_id, head)
    fluid = FluidConfig.load(
        ckpt_dir,
        pangu_vocabulary=cfg.family == "pangu",
        mask_token_id=mask_token_id,
        end_of_think_token_id=end_of_think_token_id,
    )
    khead = _load_khead(adapter_head, head_path, cfg, fluid, dtype, device)
    explicit = {"mask_token_id": mask_token_id, "end_of_think_token_id": end_of_think_token_id}
    _check_fluid_ids(fluid, explicit, cfg.vocab_size, khead is not None, path)
    defaults = dict(attached.meta.get("decode", {})) if attached is not None else {}
    return LoadedModel(
        model=model,
        config=cfg,
        fluid=fluid,
        khead=khead,
        tokenizer=tokenizer,
        path=path,
        adapter=attached,
        decode_defaults=defaults,
    )


def _resolve_paths(path: str | None, adapter: str | None, weights: str):
    """Checks ``weights``; resolves ``adapter="auto"`` and ``path=None`` (the embedded default
    model). Returns ``(path, adapter, implicit)``: ``implicit`` when the adapter came from "auto"."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights: expected one of {', '.join(WEIGHTS)}, got {weights!r}")
    if adapter == "auto":
        adapter = SHIPPED_ADAPTER if path is None and os.path.isdir(SHIPPED_ADAPTER) else None
        implicit = True
    else:
        implicit = False
    if path is None:
        from fluid_rt.weights.gguf import default_model_path

        path = default_model_path()
    return os.fspath(path), adapter, implicit


def _load_base(path: str, head: str | None, dtype: torch.dtype, device: torch.device, weights: str):
    """The base checkpoint, GGUF file or HF directory: ``(cfg, state, tokenizer, ckpt_dir,
    head_path)``, ``head_path`` the K-head to load (the explicit one, or one found in the
    directory; None: none)."""
    if path.endswith(".gguf"):
        from fluid_rt.weights.gguf import load_gguf

        quantized = weights == "quantized" and device.type == "cpu" and dtype != torch.float16
        cfg, state, tokenizer = load_gguf(path, dtype, quantized=quantized)
        return cfg, state, tokenizer, os.path.dirname(os.path.abspath(path)), head
    if os.path.isdir(path):
        from fluid_rt.weights import load_hf_checkpoint
        from fluid_rt.weights.khead import find_khead

        cfg, state = load_hf_checkpoint(path, dtype)
        tokenizer = _load_dir_tokenizer(path)
        return cfg, state, tokenizer, path, head if head is not None else find_khead(path)
    raise ValueError(f"{path}: neither a checkpoint directory nor a .gguf file")


def _adapter_overrides(attached, adapter: str | None, mask_token_id: int | None, head: str | None):
    """What an attached adapter (None: none) decides: ``(mask_token_id, adapter_head)``, its mask id
    (ValueError when ``mask_token_id`` names another one) and its K-head state unless ``head`` is
    given."""
    if attached is None:
        return mask_token_id, None
    if mask_token_id is not None and mask_token_id != attached.mask_token_id:
        raise ValueError(
            f"mask_token_id: {mask_token_id} differs from the adapter's {attached.mask_token_id} ({adapter})"
        )
    # The adapter's K-head was trained with its drafts: it wins over one found with the base.
    return attached.mask_token_id, attached.khead_state() if head is None else None


def _load_khead(adapter_head, head_path, cfg, fluid: FluidConfig, dtype, device) -> KHead | None:
    """The K-head (the adapter's state wins over ``head_path``; None: none). Sets
    ``fluid.max_k`` to the head's output size."""
    if adapter_head is not None:
        khead = KHead(adapter_head, dtype=dtype, device=device)
        fluid.max_k = khead.max_k
        return khead
    if head_path is None:
        return None
    from fluid_rt.weights.khead import load_khead

    head_sd, max_k = load_khead(head_path, cfg.hidden_size)
    fluid.max_k = max_k  # the head decides how many horizons it can propose
    return KHead(head_sd, dtype=dtype, device=device)


def _check_fluid_ids(fluid: FluidConfig, explicit: dict, vocab_size: int, has_khead: bool, path: str) -> None:
    """FLUID token ids outside the vocabulary: ValueError for an argument (``explicit``), None for
    an end-of-think id or (no K-head) a mask id, a warning for a K-head model's default mask id."""
    for name, given in explicit.items():
        value = getattr(fluid, name)
        if value is None or 0 <= value < vocab_size:
            continue
        if given is not None:
            raise ValueError(f"{name}: {value} is outside the vocabulary (size {vocab_size})")
        if name == "end_of_think_token_id" or not has_khead:
            # An id past the vocabulary (fluid.json's, or openPangu's default on a smaller
            # vocabulary) means nothing: a plain AR model (no K-head) then has no mask token, and
            # a token the model cannot emit never ends a think.
            setattr(fluid, name, None)
            continue
        warnings.warn(
            f"{path}: {name} {value} (default / fluid.json) is outside the vocabulary "
            f"(size {vocab_size}); pass {name}= to load_model",
            stacklevel=3,  # load_model's caller
        )


def _attach_adapter(adapter: str | None, model: Transformer, path: str, implicit: bool):
    """Attach the adapter directory (None: nothing). A shipped adapter that does not fit the
    base (``implicit``) warns and leaves the plain model; an explicit one raises."""
    if adapter is None:
        return None
    from fluid_rt.adapter import AdapterError, load_adapter

    try:
        return load_adapter(os.fspath(adapter), model, base_path=path)
    except AdapterError as err:
        if not implicit:
            raise
        warnings.warn(
            f"the shipped FLUID adapter does not fit {path}, loading the plain base model: {err}",
            stacklevel=3,
        )
        return None
