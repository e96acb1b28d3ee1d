"""Gated FLUID adapters: the file format, the base model's identity, and the gated LoRA in the
runtime's forward.

An adapter directory holds

* ``adapter.safetensors``: per (layer, target) the LoRA factors
  ``model.layers.N.{self_attn,mlp}.<target>.lora_A [r, in]`` / ``.lora_B [out, r]`` (bfloat16),
  ``mask_embedding [H]`` and, when trained, the K-head ``diffusion_k_head.{0,2}.{weight,bias}``;
* ``adapter.json``: the format tag, the base model's identity (``base.sha256``, see
  ``base_identity``), ``rank``, ``alpha``, ``target_modules``, ``mask_token_id``, ``max_k``, decode
  defaults and how it was trained.

The gate: the LoRA deltas and the mask embedding apply only at rows whose input token is the mask
token. A row whose causal prefix holds no mask (every verified token) is computed exactly as by the
base model, bit for bit, so elastic decoding returns the base model's greedy tokens. The mask id is
only ever an input marker: the decoder never commits it (a verify commits the base model's argmax).
"""

from __future__ import annotations

import hashlib
import json
import os

import torch
import torch.nn.functional as F

from fluid_rt import ops
from fluid_rt.qlinear import QuantLinear

FORMAT = "fluid_rt.gated_lora"
VERSION = 1
WEIGHTS = "adapter.safetensors"
CONFIG = "adapter.json"
KHEAD_PREFIX = "diffusion_k_head."
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_FUSED = {
    "qkv": ("q_proj", "k_proj", "v_proj"),
    "o": ("o_proj",),
    "gate_up": ("gate_proj", "up_proj"),
    "down": ("down_proj",),
}
_WHOLE_FILE_LIMIT = 256 << 20
_SAMPLE = 1 << 20


class AdapterError(ValueError):
    """A corrupt adapter directory, or one trained for another base model."""


# -- the base's identity ---------------------------------------------------------------------------
def _file_digest(h, path: str) -> None:
    """Feed ``path`` into ``h``: whole when <= 256 MiB, else its size and 32 evenly spaced 1 MiB
    samples (a multi-GB checkpoint is then identified in milliseconds, still by its weights)."""
    size = os.path.getsize(path)
    h.update(f"{os.path.basename(path)}:{size};".encode())
    with open(path, "rb") as f:
        if size <= _WHOLE_FILE_LIMIT:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
            return
        for i in range(32):
            f.seek((size - _SAMPLE) * i // 31)
            h.update(f.read(_SAMPLE))


def base_identity(path: str) -> str:
    """sha256 (hex) of a base checkpoint's weight files: the ``.gguf`` file, or the ``*.safetensors``
    of an HF directory (names and headers included, so a retyped or requantized checkpoint is a
    different base: the adapter was trained on those exact weights)."""
    h = hashlib.sha256()
    if os.path.isdir(path):
        files = sorted(n for n in os.listdir(path) if n.endswith(".safetensors"))
        if not files:
            raise AdapterError(f"{path}: no *.safetensors to identify the base model by")
        for n in files:
            _file_digest(h, os.path.join(path, n))
    else:
        _file_digest(h, path)
    return h.hexdigest()


# -- reading and writing ---------------------------------------------------------------------------
def save_adapter(
    directory: str, tensors: dict, meta: dict, khead: dict | None = None, dtype: torch.dtype = torch.bfloat16
) -> None:
    """Write an adapter directory: LoRA factors in ``dtype``, the mask embedding and K-head in
    float32 (a few KB; kept exact)."""
    from safetensors.torch import save_file

    os.makedirs(directory, exist_ok=True)
    out = {}
    for name, t in tensors.items():
        keep = name == "mask_embedding"
        out[name] = t.detach().to(torch.float32 if keep else dtype).contiguous()
    for name, t in (khead or {}).items():
        key = name if name.startswith(KHEAD_PREFIX) else KHEAD_PREFIX + name
        out[key] = t.detach().float().contiguous()
    save_file(out, os.path.join(directory, WEIGHTS))
    full = {"format": FORMAT, "version": VERSION, **meta, "has_khead": bool(khead)}
    with open(os.path.join(directory, CONFIG), "w", encoding="utf-8") as f:
        json.dump(full, f, indent=1, sort_keys=True)


def _read_meta(directory: str) -> dict:
    path = os.path.join(directory, CONFIG)
    if not os.path.isfile(path):
        raise AdapterError(f"{directory}: not an adapter directory (no {CONFIG})")
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AdapterError(f"{path}: corrupt adapter config ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise AdapterError(f"{path}: not a {FORMAT} adapter config")
    if meta.get("version") != VERSION:
        raise AdapterError(
            f"{path}: adapter format version {meta.get('version')!r}, this fluid_rt reads version {VERSION}"
        )
    need = ("base", "rank", "alpha", "target_modules", "mask_token_id", "max_k", "hidden_size", "num_layers")
    missing = [k for k in need if k not in meta]
    if missing:
        raise AdapterError(f"{path}: adapter config lacks {missing}")
    bad = [t for t in meta["target_modules"] if t not in TARGETS]
    if bad:
        raise AdapterError(f"{path}: unknown target modules {bad} (known: {list(TARGETS)})")
    return meta


def read_adapter(directory: str) -> tuple[dict, dict]:
    """(config, tensors) of an adapter directory, every tensor's presence and shape checked
    against the config (AdapterError naming the file otherwise)."""
    directory = os.fspath(directory)
    meta = _read_meta(directory)
    path = os.path.join(directory, WEIGHTS)
    if not os.path.isfile(path):
        raise AdapterError(f"{directory}: adapter weights {WEIGHTS} missing")
    from safetensors.torch import load_file

    try:
        tensors = load_file(path, device="cpu")
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise AdapterError(f"{path}: corrupt adapter weights ({type(err).__name__}: {err})") from None
    _check_tensors(path, meta, tensors)
    return meta, tensors


def _check_tensors(path: str, meta: dict, tensors: dict) -> None:
    r, H = int(meta["rank"]), int(meta["hidden_size"])
    emb = tensors.get("mask_embedding")
    if emb is None or tuple(emb.shape) != (H,):
        raise AdapterError(f"{path}: mask_embedding missing or not of shape [{H}]")
    for i in range(int(meta["num_layers"])):
        for t in meta["target_modules"]:
            group = "self_attn" if t in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            a, b = (tensors.get(f"model.layers.{i}.{group}.{t}.{w}") for w in ("lora_A", "lora_B"))
            if a is None or b is None:
                raise AdapterError(f"{path}: LoRA factors of layer {i} {t} missing")
            if a.dim() != 2 or b.dim() != 2 or a.shape[0] != r or b.shape[1] != r:
                raise AdapterError(
                    f"{path}: layer {i} {t}: lora_A {tuple(a.shape)} / lora_B "
                    f"{tuple(b.shape)} do not have rank {r}"
                )
    if meta.get("has_khead"):
        from fluid_rt.khead import KHead

        head = {k: v for k, v in tensors.items() if k.startswith(KHEAD_PREFIX)}
        try:
            KHead(head)
        except ValueError as err:
            raise AdapterError(f"{path}: {err}") from None


# -- the gated LoRA at run time --------------------------------------------------------------------
class MaskRows:
    """The rows of the current forward whose input is the mask token, set once per forward by
    ``Adapter.begin_forward`` and read by every ``GatedLoRALinear``.

    Two forms: ``index`` (CPU: the host knows the tokens without a sync, so the LoRA runs only on
    those rows, and a forward without masks costs nothing extra) or ``gate [N, 1]`` bool (CUDA:
    a dense select of fixed shape, no host sync, capturable in a CUDA graph)."""

    __slots__ = ("gate", "index")

    def __init__(self):
        self.index: torch.Tensor | None = None
        self.gate: torch.Tensor | None = None


def _op_factors(A_t: torch.Tensor, B_t: torch.Tensor, out_parts: list[int]):
    """The CPU op's factors (``ops.gated_lora_``): A_t, and B_t's diagonal blocks side by side
    (``[R / parts, out]``) packed by ``ops.lora_pack_b``, both in bfloat16 where that is exact (a
    bfloat16-trained adapter: the factors are streamed once per decode step, so their bytes are
    its time)."""
    r = A_t.shape[1] // len(out_parts)
    blocks, c0 = [], 0
    for q, n in enumerate(out_parts):
        blocks.append(B_t[q * r : (q + 1) * r, c0 : c0 + n])
        c0 += n
    a_t, b_t = A_t.float().contiguous(), torch.cat(blocks, dim=1).float().contiguous()
    exact = all(torch.equal(t.bfloat16().float(), t) for t in (a_t, b_t))
    if exact:
        a_t, b_t = a_t.bfloat16(), b_t.bfloat16()
    return a_t, ops.lora_pack_b(b_t, out_parts)


class GatedLoRALinear:
    """A ``fluid_rt.model.Linear`` plus ``scale * (x @ A.T) @ B.T`` at the mask rows only.

    ``A [R, in]`` stacks the factors of the fused parts (q/k/v, gate/up); ``B [out, R]`` is block
    diagonal, so one pair of small matmuls serves a fused projection. The CPU op takes B without
    its zero blocks (``out_parts``: the parts' output sizes)."""

    __slots__ = ("A_t", "B_t", "inner", "op_factors", "out_parts", "rows")

    def __init__(self, inner, A: torch.Tensor, B: torch.Tensor, rows: MaskRows, out_parts: list[int]):
        self.inner, self.rows, self.out_parts = inner, rows, out_parts
        self.A_t, self.B_t = A.t().contiguous(), B.t().contiguous()  # scale folded into B
        self.op_factors = _op_factors(self.A_t, self.B_t, out_parts) if A.device.type == "cpu" else None

    @property
    def out_features(self) -> int:
        return self.inner.out_features

    def _add_delta(self, x: torch.Tensor, y: torch.Tensor, silu_and_mul: bool = False) -> torch.Tensor:
        """y plus the LoRA delta of x (of ``silu(gate) * up`` for ``x = [gate, up]`` with
        ``silu_and_mul``) at the mask rows."""
        rows = self.rows
        if rows.index is not None:
            if not rows.index.numel():
                return y
            if y.dtype in (torch.float32, torch.bfloat16):  # CPU: one fused op
                ops.gated_lora_(y, x, rows.index, *self.op_factors, silu_and_mul, self.out_parts)
                return y
        elif rows.gate is None:
            return y
        if silu_and_mul:
            gate, up = x.chunk(2, dim=-1)
            x = F.silu(gate) * up
        x2 = x.reshape(-1, x.shape[-1])
        y2 = y.view(-1, y.shape[-1])
        if rows.index is not None:  # a CPU float16 model: the op takes float32 and bfloat16 only
            d = (x2.index_select(0, rows.index) @ self.A_t) @ self.B_t
            y2.index_add_(0, rows.index, d.to(y2.dtype))
            return y
        d = (x2 @ self.A_t) @ self.B_t
        return torch.where(rows.gate, y2 + d.to(y2.dtype), y2).view(y.shape)

    def _fused_lora(self) -> tuple | None:
        """The delta's arguments for a quantized inner layer, which applies it in its own op call
        (``ops.quant_linear``'s ``lora``), when there are mask rows on the CPU; else None."""
        index = self.rows.index
        if index is None or not index.numel() or not isinstance(self.inner, QuantLinear):
            return None
        return (index, *self.op_factors, self.out_parts)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        lora = self._fused_lora()
        if lora is not None:
            return self.inner(x, lora)
        return self._add_delta(x, self.inner(x))

    def silu_and_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        lora = self._fused_lora()
        if lora is not None:
            return self.inner.silu_and_mul(gate_up, lora)
        # The inner layer leaves gate_up as it is (model.Linear.silu_and_mul), so it is still the
        # delta's input afterwards.
        return self._add_delta(gate_up, self.inner.silu_and_mul(gate_up), silu_and_mul=True)


class Adapter:
    """A loaded adapter bound to one ``Transformer``: ``attach`` wraps its linears; the model's
    forward calls ``begin_forward(tokens, x)`` right after the embedding lookup."""

    def __init__(self, meta: dict, tensors: dict, path: str = ""):
        self.meta, self.path = meta, path
        self.mask_token_id = int(meta["mask_token_id"])
        self.max_k = int(meta["max_k"])
        self.rank, self.alpha = int(meta["rank"]), float(meta["alpha"])
        self.targets = tuple(meta["target_modules"])
        self.tensors = tensors
        self.rows = MaskRows()
        self.mask_embedding: torch.Tensor | None = None
        self.dense = False

    def khead_state(self) -> dict | None:
        head = {k: v for k, v in self.tensors.items() if k.startswith(KHEAD_PREFIX)}
        return head or None

    def _fused_factors(self, layer: int, parts: tuple, out_sizes: list, in_size: int, model):
        """(A [R, in], B [out, R]) for a fused projection; untrained parts contribute zeros."""
        r, scale = self.rank, self.alpha / self.rank
        A = torch.zeros(r * len(parts), in_size)
        B = torch.zeros(sum(out_sizes), r * len(parts))
        row = 0
        for j, (t, n) in enumerate(zip(parts, out_sizes)):
            if t in self.targets:
                group = "self_attn" if t in _FUSED["qkv"] + _FUSED["o"] else "mlp"
                p = f"model.layers.{layer}.{group}.{t}."
                A[j * r : (j + 1) * r] = self.tensors[p + "lora_A"].float()
                B[row : row + n, j * r : (j + 1) * r] = self.tensors[p + "lora_B"].float() * scale
            row += n
        return (A.to(device=model.device, dtype=model.dtype), B.to(device=model.device, dtype=model.dtype))

    def attach(self, model) -> None:
        """Wrap ``model``'s linears and hook its forward (checks the shapes against its config)."""
        cfg = model.cfg
        if cfg.hidden_size != int(self.meta["hidden_size"]) or cfg.num_layers != int(self.meta["num_layers"]):
            raise AdapterError(
                f"{self.path}: adapter is for hidden {self.meta['hidden_size']} x "
                f"{self.meta['num_layers']} layers, the model is {cfg.hidden_size} x "
                f"{cfg.num_layers}"
            )
        if not 0 <= self.mask_token_id < cfg.vocab_size:
            raise AdapterError(
                f"{self.path}: mask_token_id {self.mask_token_id} is outside the "
                f"vocabulary ({cfg.vocab_size})"
            )
        H, inter = cfg.hidden_size, cfg.intermediate_size
        outs = {
            "qkv": [cfg.q_size, cfg.kv_size, cfg.kv_size],
            "o": [H],
            "gate_up": [inter, inter],
            "down": [H],
        }
        ins = {"qkv": H, "o": cfg.q_size, "gate_up": H, "down": inter}
        try:
            for li, layer in enumerate(model.layers):
                for slot, parts in _FUSED.items():
                    A, B = self._fused_factors(li, parts, outs[slot], ins[slot], model)
                    wrapped = GatedLoRALinear(getattr(layer, slot), A, B, self.rows, outs[slot])
                    setattr(layer, slot, wrapped)
        except RuntimeError as err:  # a factor of the wrong in/out size
            raise AdapterError(f"{self.path}: adapter shapes do not fit the model ({err})") from None
        self.mask_embedding = self.tensors["mask_embedding"].to(device=model.device, dtype=model.dtype)
        self.dense = model.device.type != "cpu"
        model.adapter = self
        model.invalidate_plans()  # the layers' projections changed

    def begin_forward(self, tokens: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Mark this forward's mask rows for the LoRA linears and give them the mask embedding.
        ``tokens [B, T]``, ``x [B, T, H]`` (the embedding lookup) -> x with mask rows replaced."""
        is_mask = tokens.reshape(-1) == self.mask_token_id
        if self.dense:
            self.rows.index, self.rows.gate = None, is_mask[:, None]
            return torch.where(is_mask.view(*tokens.shape, 1), self.mask_embedding, x)
        index = is_mask.nonzero().squeeze(1)
        self.rows.index, self.rows.gate = index, None
        if index.numel():
            x.view(-1, x.shape[-1]).index_copy_(0, index, self.mask_embedding.expand(len(index), -1))
        return x


def load_adapter(directory: str, model, base_path: str | None = None) -> Adapter:
    """Read ``directory``, check it was trained on ``base_path``'s weights (when given), and attach
    it to ``model``. AdapterError for a corrupt adapter or another base."""
    meta, tensors = read_adapter(directory)
    if base_path is not None:
        want = meta["base"].get("sha256") if isinstance(meta["base"], dict) else None
        have = base_identity(base_path)
        if want != have:
            raise AdapterError(
                f"{directory}: this adapter was trained on another base model "
                f"(sha256 {str(want)[:12]}..., {meta['base'].get('name', '?')}); "
                f"{base_path} has sha256 {have[:12]}..."
            )
    adapter = Adapter(meta, tensors, directory)
    adapter.attach(model)
    return adapter
