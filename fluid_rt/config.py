"""Model and FLUID configuration: one dataclass for the pangu / llama / qwen2 families.

``ModelConfig.from_hf_dict`` reads an HF ``config.json`` dict; ``expected_tensor_shapes`` lists the
HF tensor names and shapes a checkpoint of that config must hold (the loaders check against it).
``FluidConfig`` carries the FLUID decode tokens (mask, end-of-think) and the K-head's max_k.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
from dataclasses import dataclass, field
from typing import Any

FAMILIES = ("pangu", "llama", "qwen2")

# HF model_type -> our family name.
_MODEL_TYPES = {"PanguEmbedded": "pangu", "llama": "llama", "qwen2": "qwen2"}


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a pre-norm, RoPE, GQA, SwiGLU decoder (Llama layout, HF tensor names)."""

    family: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict | None = field(default=None, hash=False)  # dict: kept out of hash()
    attention_bias: bool = False  # biases on q, k, v
    o_bias: bool = False  # bias on o_proj
    mlp_bias: bool = False  # biases on gate, up, down
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 4096
    bos_token_id: int | None = None
    eos_token_ids: tuple = ()
    pad_token_id: int | None = None

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"family: {self.family!r} is not one of {FAMILIES}")
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "max_position_embeddings",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name}: must be a positive int, got {value!r}")
        if self.num_heads % self.num_kv_heads != 0:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
            )
        if self.head_dim % 2 != 0:
            raise ValueError(f"head_dim: RoPE needs an even head_dim, got {self.head_dim}")
        for name in ("rms_norm_eps", "rope_theta"):
            value = getattr(self, name)
            if not _positive_finite(value):
                raise ValueError(f"{name}: must be a positive finite number, got {value!r}")
        if self.rope_scaling is not None:
            _check_rope_scaling(self.rope_scaling)
        if not isinstance(self.eos_token_ids, tuple):
            object.__setattr__(self, "eos_token_ids", tuple(self.eos_token_ids))

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @classmethod
    def from_hf_dict(cls, d: dict) -> ModelConfig:
        """Build from an HF ``config.json`` dict (model_type PanguEmbedded, llama or qwen2)."""
        model_type = d.get("model_type")
        if model_type not in _MODEL_TYPES:
            raise ValueError(
                f"model_type {model_type!r} is not supported (supported: {sorted(_MODEL_TYPES)})"
            )
        family = _MODEL_TYPES[model_type]
        act = d.get("hidden_act", "silu")
        if act not in ("silu", "swish"):
            raise ValueError(f"hidden_act {act!r} is not supported (only silu)")
        hidden = _positive_int(d, "hidden_size")
        heads = _positive_int(d, "num_attention_heads")
        kv_heads = _positive_int(d, "num_key_value_heads", heads)
        if d.get("head_dim") is None and hidden < heads:
            raise ValueError(
                f"hidden_size {hidden} is smaller than num_attention_heads {heads} (and no head_dim is given)"
            )
        head_dim = _positive_int(d, "head_dim", hidden // heads)
        qkv_bias, o_bias, mlp_bias = _hf_biases(family, d)
        eos = d.get("eos_token_id")
        if eos is None:
            eos_ids = ()
        elif isinstance(eos, (list, tuple)):
            eos_ids = tuple(int(e) for e in eos)
        else:
            eos_ids = (int(eos),)
        rope_theta, rope_scaling = _hf_rope(d)
        return cls(
            family=family,
            vocab_size=_positive_int(d, "vocab_size"),
            hidden_size=hidden,
            intermediate_size=_positive_int(d, "intermediate_size"),
            num_layers=_positive_int(d, "num_hidden_layers"),
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope_theta),
            rope_scaling=rope_scaling,
            attention_bias=qkv_bias,
            o_bias=o_bias,
            mlp_bias=mlp_bias,
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            max_position_embeddings=_positive_int(d, "max_position_embeddings", 4096),
            bos_token_id=d.get("bos_token_id"),
            eos_token_ids=eos_ids,
            pad_token_id=d.get("pad_token_id"),
        )


def _hf_biases(family: str, d: dict) -> tuple[bool, bool, bool]:
    """(q/k/v bias, o_proj bias, MLP bias) of an HF config dict of ``family``."""
    if family == "pangu":
        qkv_o = bool(d.get("bias", False))
        return qkv_o, qkv_o, False
    if family == "llama":
        # HF Llama's attention_bias puts a bias on q, k, v AND o_proj.
        qkv_o = bool(d.get("attention_bias", False))
        return qkv_o, qkv_o, bool(d.get("mlp_bias", False))
    # qwen2: q/k/v biases always, no o / MLP bias
    if d.get("use_sliding_window", False):
        raise ValueError("qwen2 use_sliding_window=true is not supported")
    return True, False, False


def _hf_rope(d: dict) -> tuple[Any, dict | None]:
    """(rope_theta, rope_scaling) of an HF config dict; both are checked by ModelConfig."""
    rope_scaling = d.get("rope_scaling")
    if isinstance(rope_scaling, dict):  # (anything else is refused by __post_init__'s check)
        rope_scaling = dict(rope_scaling)  # a copy the config owns
    # transformers >= 5 may store rope_theta inside rope_parameters.
    rope_params = d.get("rope_parameters") or {}
    if not isinstance(rope_params, dict):
        raise ValueError(f"rope_parameters: expected an object, got {rope_params!r}")
    rope_theta = d.get("rope_theta", rope_params.get("rope_theta", 10000.0))
    if rope_scaling is None and rope_params and _rope_type(rope_params) != "default":
        rope_scaling = {k: v for k, v in rope_params.items() if k != "rope_theta"}
    return rope_theta, rope_scaling


def _rope_type(scaling: dict) -> str:
    return scaling.get("rope_type", scaling.get("type", "default"))


# The rope_scaling keys each supported type needs (fluid_rt.model.rope_inv_freq reads them).
_ROPE_SCALING_KEYS = {
    "default": (),
    "linear": ("factor",),
    "llama3": ("factor", "original_max_position_embeddings"),
}


def _check_rope_scaling(scaling) -> None:
    if not isinstance(scaling, dict):
        raise ValueError(f"rope_scaling: expected an object, got {scaling!r}")
    kind = _rope_type(scaling)
    if kind not in _ROPE_SCALING_KEYS:
        raise ValueError(
            f"rope_scaling: type {kind!r} is not supported "
            f"(supported: {', '.join(sorted(_ROPE_SCALING_KEYS))})"
        )
    for key in _ROPE_SCALING_KEYS[kind]:
        if key not in scaling:
            raise ValueError(f"rope_scaling: type {kind!r} needs {key!r}")
    for key in ("factor", "original_max_position_embeddings", "low_freq_factor", "high_freq_factor"):
        value = scaling.get(key)
        if value is not None and not _positive_finite(value):
            raise ValueError(f"rope_scaling: {key} must be a positive finite number, got {value!r}")
    if kind == "llama3" and scaling.get("low_freq_factor", 1.0) >= scaling.get("high_freq_factor", 4.0):
        raise ValueError("rope_scaling: llama3 needs low_freq_factor < high_freq_factor")


def is_int(value) -> bool:
    """An int that is not a bool (JSON true is no number)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_finite(value) -> bool:
    """A real number (not a bool: JSON true is no number) in (0, inf)."""
    return not isinstance(value, bool) and isinstance(value, numbers.Real) and 0 < value < math.inf


def _positive_int(d: dict, key: str, default=None) -> int:
    """``d[key]`` (or ``default`` when absent or null) as a positive int; a float with an integral
    value is accepted (some exporters write 4096.0), anything else is a ValueError naming the key."""
    value = d.get(key)
    if value is None:
        if default is None:
            raise ValueError(f"missing field {key!r}")
        value = default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not is_int(value) or value <= 0:
        raise ValueError(f"{key}: must be a positive int, got {value!r}")
    return value


def expected_tensor_shapes(cfg: ModelConfig) -> dict:
    """HF tensor name -> shape for every weight a checkpoint of ``cfg`` must hold.

    ``lm_head.weight`` is absent when the embeddings are tied (a tied checkpoint that still carries
    it is accepted by the loader, see ``optional_tensor_shapes``)."""
    H, F, V = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size  # F: the MLP width
    shapes = {"model.embed_tokens.weight": (V, H), "model.norm.weight": (H,)}
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (V, H)
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (H,)
        shapes[p + "post_attention_layernorm.weight"] = (H,)
        for name, out in (("q_proj", cfg.q_size), ("k_proj", cfg.kv_size), ("v_proj", cfg.kv_size)):
            shapes[p + f"self_attn.{name}.weight"] = (out, H)
            if cfg.attention_bias:
                shapes[p + f"self_attn.{name}.bias"] = (out,)
        shapes[p + "self_attn.o_proj.weight"] = (H, cfg.q_size)
        if cfg.o_bias:
            shapes[p + "self_attn.o_proj.bias"] = (H,)
        for name, shape in (("gate_proj", (F, H)), ("up_proj", (F, H)), ("down_proj", (H, F))):
            shapes[p + f"mlp.{name}.weight"] = shape
            if cfg.mlp_bias:
                shapes[p + f"mlp.{name}.bias"] = (shape[0],)
    return shapes


def optional_tensor_shapes(cfg: ModelConfig) -> dict:
    """Tensors a checkpoint may carry without them being required (ignored when present)."""
    if cfg.tie_word_embeddings:
        return {"lm_head.weight": (cfg.vocab_size, cfg.hidden_size)}
    return {}


# openPangu-Embedded vocabulary: [unused32] is FLUID's mask, [unused17] its end-of-think.
DEFAULT_MASK_TOKEN_ID = 144208
DEFAULT_END_OF_THINK_TOKEN_ID = 45982
DEFAULT_MAX_K = 16
FLUID_JSON = "fluid.json"


@dataclass
class FluidConfig:
    """FLUID decode tokens and the K-head's horizon limit."""

    mask_token_id: int | None = DEFAULT_MASK_TOKEN_ID  # None: no mask token (a plain AR model)
    end_of_think_token_id: int | None = DEFAULT_END_OF_THINK_TOKEN_ID
    max_k: int = DEFAULT_MAX_K

    @classmethod
    def load(
        cls, directory: str | None = None, *, pangu_vocabulary: bool = True, **overrides: Any
    ) -> FluidConfig:
        """Defaults, then ``<directory>/fluid.json`` when present, then ``overrides`` that are not
        None (``end_of_think_token_id`` cannot be overridden to None this way: write it in
        fluid.json as null). The default token ids are openPangu's: with
        ``pangu_vocabulary=False`` (a model of another vocabulary, where those ids are ordinary
        tokens) the ones fluid.json and the overrides leave unset are None."""
        values = dataclasses.asdict(cls())
        if not pangu_vocabulary:
            values.update(mask_token_id=None, end_of_think_token_id=None)
        source = "arguments"
        if directory is not None:
            path = os.path.join(directory, FLUID_JSON)
            if os.path.isfile(path):
                source = path
                with open(path, encoding="utf-8") as f:
                    try:
                        data = json.load(f)
                    except (json.JSONDecodeError, UnicodeDecodeError) as err:
                        raise ValueError(f"{path}: not valid JSON ({err})") from err
                if not isinstance(data, dict):
                    raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
                unknown = set(data) - set(values)
                if unknown:
                    raise ValueError(f"{path}: unknown keys {sorted(unknown)} (known: {sorted(values)})")
                values.update(data)
        values.update({k: v for k, v in overrides.items() if v is not None})
        for name in ("mask_token_id", "end_of_think_token_id"):
            value = values[name]
            if value is not None and (not is_int(value) or value < 0):
                raise ValueError(f"{source}: {name} must be a non-negative int or null, got {value!r}")
        fluid = cls(**values)
        if not is_int(fluid.max_k) or fluid.max_k < 1:
            raise ValueError(f"{source}: max_k must be a positive int, got {fluid.max_k!r}")
        return fluid
