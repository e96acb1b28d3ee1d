"""The transformer forward (pangu / llama / qwen2) on a static KV cache.

Pre-norm decoder: RMSNorm (``fluid_rt.ops.rms_norm``, fused with the residual add) -> fused QKV
(+bias) -> RoPE (rotate-half) -> ``fluid_rt.ops.causal_attention`` (GQA, writes the new K/V into the
cache) -> o_proj (+bias) -> residual -> RMSNorm -> fused gate/up -> SwiGLU -> down -> residual;
final RMSNorm; lm_head (or the tied embedding).

The hot path is the decoder's: every forward has the same shape, so it does no host syncs and no
data-dependent shapes (positions come from ``cache.seqlens`` on the device; RoPE tables are
precomputed) and runs under CUDA graph capture. q/k/v and gate/up are concatenated at load so each
layer does four matmuls (``Linear``): ``fluid_rt.ops.packed_linear`` on the CPU for float32 and
bfloat16 (``cpu_packs``), with SwiGLU folded into the down projection; torch's matmul otherwise.
Quantized CPU layers run as one op call each (``ops.decoder_layer_``: the same kernels without the
per-op dispatch; ``fluid_rt.layer_plan``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fluid_rt import ops
from fluid_rt.cache import KVCache
from fluid_rt.config import ModelConfig, expected_tensor_shapes
from fluid_rt.layer_plan import LayerPlan, layer_plans
from fluid_rt.ops import _backend
from fluid_rt.ops.attention import call_uses_torch_fallback
from fluid_rt.qlinear import QuantLinear, QuantWeight


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    """Inverse frequencies [head_dim / 2] float32 (default RoPE, or llama3 / linear scaling)."""
    d = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    scaling = cfg.rope_scaling
    kind = None if scaling is None else scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "llama3":
        # Long wavelengths are slowed down by `factor`, short ones kept, the band in between blended.
        factor = float(scaling["factor"])
        low = float(scaling.get("low_freq_factor", 1.0))
        high = float(scaling.get("high_freq_factor", 4.0))
        old_ctx = float(scaling["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv_freq
        low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
        scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_ctx / wavelen - low) / (high - low)
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv_freq = torch.where(medium, blended, scaled)
    elif kind == "linear":
        inv_freq = inv_freq / float(scaling["factor"])
    return inv_freq


def rope_tables(cfg: ModelConfig, num_positions: int, dtype, device):
    """cos, sin [num_positions, head_dim] in ``dtype`` (computed in float32, then cast, like HF).

    Rotate-half layout: the half-table is repeated. ``sin``'s first half is negated so that
    ``rope(x) = x * cos + swap_halves(x) * sin`` (HF's ``rotate_half(x) * sin``, bit for bit,
    without a negation per call)."""
    inv_freq = rope_inv_freq(cfg)
    pos = torch.arange(num_positions, dtype=torch.float32)
    freqs = pos[:, None] * inv_freq[None, :]
    cos = torch.cat((freqs.cos(), freqs.cos()), dim=-1)
    sin = torch.cat((-freqs.sin(), freqs.sin()), dim=-1)
    return cos.to(dtype=dtype, device=device), sin.to(dtype=dtype, device=device)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, T, heads, D]; cos, sin [B, T, 1, D] from ``rope_tables`` (sin half-negated). The CUDA
    path (inside the step's CUDA graph); the CPU runs the fused ``ops.rope_`` instead."""
    half = x.shape[-1] // 2
    swapped = torch.cat((x[..., half:], x[..., :half]), dim=-1)
    # Two products and a sum, each rounded to x's dtype as HF's ops round them (an addcmul would
    # round its product and sum once: one unit off HF in bfloat16).
    return x * cos + swapped * sin


def cpu_packs(dtype: torch.dtype) -> bool:
    """Whether ``Linear`` packs CPU weights of this dtype for ``ops.packed_linear``: float32 and
    bfloat16, on every CPU path (``fluid_rt.cpu_isa()``).

    The packed kernel is the only CPU matmul whose rows do not depend on the forward's width, which
    the decoder relies on (elastic decoding equals greedy AR token for token), so every width of a
    forward uses it, prefill included. Measured against torch's matmul on the same weights
    (``benchmarks/bench_linear.py``, SmolLM2-135M's matmuls): avx512 and avx2 are faster at 1 to 128
    rows in float32; bfloat16 runs on AMX tiles where the CPU has them (1.4-2.8x torch's bfloat16
    mm at 1 to 128 rows, 0.9x at 512), vdpbf16ps on other AVX512-BF16 CPUs, and otherwise the weights
    widened to float32 in registers, several times faster than torch's bfloat16 matmul when decoding
    (a few rows). The portable path (SSE2 on x86-64, NEON on aarch64) keeps up with torch when
    decoding and is slower on wide calls (prefill) than an x86 torch that has AVX-512 or AVX2.
    float16: torch's matmul."""
    return dtype in (torch.float32, torch.bfloat16)


class Linear:
    """One linear layer, ``y = x @ weight.T (+ bias)``, with its weight kept in the form the
    device multiplies fastest: packed panels for ``ops.packed_linear`` on the CPU (``cpu_packs``:
    a single sequential pass over the weight per forward, where BLAS would re-pack it on every
    call), otherwise ``[in, out]`` for ``torch.mm`` / ``addmm`` (cuBLAS on CUDA).

    ``weight``: ``[out, in]``; ``bias``: ``[out]`` or None; both in the model's dtype and device.
    """

    __slots__ = ("bias", "out_features", "packed", "w_t")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, pack: bool | None = None):
        if pack is None:
            pack = weight.device.type == "cpu" and cpu_packs(weight.dtype)
        self.out_features = weight.shape[0]
        self.bias = bias
        self.packed = ops.pack_linear_weight(weight) if pack else None
        # Kept [in, out]: x @ W runs without the per-call repacking MKL does for a transposed
        # operand (the same for cuBLAS either way).
        self.w_t = None if pack else weight.t().contiguous()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., in]`` -> ``[..., out]``."""
        if self.packed is not None:
            return ops.packed_linear(x, self.packed, self.bias)
        x2 = x.reshape(-1, x.shape[-1])
        y = torch.mm(x2, self.w_t) if self.bias is None else torch.addmm(self.bias, x2, self.w_t)
        return y.view(*x.shape[:-1], self.out_features)

    def silu_and_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        """SwiGLU's down projection: ``self(silu(gate) * up)`` for ``gate_up [..., 2 * in]`` =
        ``[gate, up]``, which is left unchanged (an adapter's delta reads it afterwards). The packed
        kernel applies the activation while it packs the rows, with no extra pass."""
        if self.packed is not None:
            return ops.packed_linear(gate_up, self.packed, self.bias, silu_and_mul=True)
        gate, up = gate_up.chunk(2, dim=-1)
        return self(F.silu(gate) * up)


# ---- quantized weights (GGUF blocks kept on the CPU, fluid_rt.qlinear) ------------------------


def is_quant(weight) -> bool:
    """Whether a state-dict entry is a quantized ``QuantWeight`` (see ``fluid_rt.weights.gguf``)."""
    return isinstance(weight, QuantWeight)


def make_linear(weight, bias: torch.Tensor | None = None):
    """``QuantLinear`` for a quantized weight, ``Linear`` for a float one."""
    return QuantLinear(weight, bias) if is_quant(weight) else Linear(weight, bias)


class _Layer:
    __slots__ = ("down", "gate_up", "ln_in", "ln_post", "o", "qkv")


@dataclass
class ForwardContext:
    """What every layer of one forward reads besides its input: the cache's per-layer K/V views
    (made once per forward rather than indexed in every layer), each row's length and cache row,
    the RoPE tables at the tokens' positions, and the row packing (or None)."""

    k_layers: tuple
    v_layers: tuple
    seqlens: torch.Tensor
    batch_idx: torch.Tensor | None
    cos: torch.Tensor
    sin: torch.Tensor
    packing: RowPacking | None
    plans: list | None = None  # per layer, ops.decoder_layer_'s arguments (layer_plan)


class RowPacking:
    """Rows of different widths packed into one sequence ``[1, sum(widths)]`` for the matmuls (on
    the CPU a matmul costs by its rows: a batch then costs the sum of its rows' widths, not B x the
    widest). Attention still runs per row, on that row's slice."""

    def __init__(self, widths: list, seqlens: torch.Tensor, batch_idx: torch.Tensor | None):
        dev = seqlens.device
        B = len(widths)
        offsets = [sum(widths[:b]) for b in range(B)]
        self.segments = list(zip(range(B), offsets, widths))  # (row, offset, width)
        self.row_of = torch.repeat_interleave(torch.arange(B, device=dev), torch.tensor(widths, device=dev))
        self.slot_of = torch.cat([torch.arange(w, device=dev) for w in widths])
        self.positions = (seqlens.long()[self.row_of] + self.slot_of)[None]
        self.seqlens = seqlens
        self.cache_rows = (
            batch_idx if batch_idx is not None else torch.arange(B, dtype=torch.int32, device=dev)
        )

    def pack(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, T]`` -> the packed ``[1, sum(widths)]``."""
        return tokens[self.row_of, self.slot_of][None]

    def unpack(self, packed: torch.Tensor, B: int, T: int) -> torch.Tensor:
        """``[1, sum(widths), ...]`` -> ``[B, T, ...]``, zeros past each row's width."""
        out = packed.new_zeros(B, T, *packed.shape[2:])
        out[self.row_of, self.slot_of] = packed[0]
        return out

    def attention(self, q, k, v, k_cache, v_cache) -> torch.Tensor:
        """``causal_attention`` of each row's slice of the packed q, k, v."""
        return torch.cat(
            [
                ops.causal_attention(
                    q[:, o : o + w],
                    k_cache,
                    v_cache,
                    self.seqlens[b : b + 1],
                    k[:, o : o + w],
                    v[:, o : o + w],
                    cache_batch_idx=self.cache_rows[b : b + 1],
                )
                for b, o, w in self.segments
            ],
            1,
        )


def _check_state_dict(cfg: ModelConfig, state_dict: dict) -> dict:
    """ValueError for a head_dim our attention kernel lacks, or a missing / mis-shaped tensor.
    Returns ``expected_tensor_shapes(cfg)``."""
    if cfg.head_dim not in ops.SUPPORTED_HEAD_DIMS:  # attention always runs on our kernel
        raise ValueError(
            f"head_dim {cfg.head_dim} is not supported by fluid_rt's attention "
            f"kernel (supported: {ops.SUPPORTED_HEAD_DIMS})"
        )
    expected = expected_tensor_shapes(cfg)
    missing = [n for n in expected if n not in state_dict]
    if missing:
        raise ValueError(f"state_dict: missing tensors {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    for name, shape in expected.items():
        if tuple(state_dict[name].shape) != shape:
            raise ValueError(
                f"state_dict: {name} has shape {tuple(state_dict[name].shape)}, expected {shape}"
            )
    return expected


_UNPLANNED = object()  # Transformer._plans before the first forward (None: the model does not fit)


class Transformer:
    """Holds the (fused) weights of one model; call it to run a forward on a ``KVCache``.

    ``state_dict`` uses HF tensor names (see ``config.expected_tensor_shapes``); tensors are
    converted to ``dtype`` / ``device``. With ``consume=True`` each entry is popped from the dict as
    soon as it is used, so a large checkpoint is not held twice while q/k/v and gate/up are fused.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        state_dict: dict,
        dtype: torch.dtype = torch.float32,
        device="cpu",
        consume: bool = False,
    ):
        expected = _check_state_dict(cfg, state_dict)
        self.cfg = cfg
        self.dtype = dtype
        self.device = torch.device(device)

        def get(name):
            t = state_dict.pop(name) if consume else state_dict[name]
            if isinstance(t, QuantWeight):  # quantized (GGUF): kept in its blocks on the CPU
                if self.device.type == "cpu":
                    return t
                t = t.dequantize()
            return t.detach().to(dtype=dtype, device=self.device)

        def maybe(name):
            return get(name) if name in expected else None

        def cat(names):
            parts = [maybe(n) for n in names]
            if parts[0] is None:
                return None
            return QuantWeight.cat(parts) if is_quant(parts[0]) else torch.cat(parts, dim=0).contiguous()

        embed = get("model.embed_tokens.weight")
        # A quantized table is packed once for the lookup (QuantLinear.rows) and the tied lm_head.
        self.embed = QuantLinear(embed) if is_quant(embed) else embed.contiguous()
        self.device = embed.device  # "cuda" -> "cuda:0": compared with the cache's device
        self.norm = get("model.norm.weight")
        # Tied: the embedding is the lm_head (a stray lm_head.weight in a tied checkpoint is ignored).
        if cfg.tie_word_embeddings:
            self.lm_head = self.embed if is_quant(embed) else Linear(self.embed)
        else:
            self.lm_head = make_linear(get("lm_head.weight"))
        self.layers = []
        for i in range(cfg.num_layers):
            p = f"model.layers.{i}."
            layer = _Layer()
            layer.ln_in = get(p + "input_layernorm.weight")
            layer.ln_post = get(p + "post_attention_layernorm.weight")
            attn = [p + f"self_attn.{n}_proj." for n in ("q", "k", "v")]
            layer.qkv = make_linear(cat([a + "weight" for a in attn]), cat([a + "bias" for a in attn]))
            layer.o = make_linear(get(p + "self_attn.o_proj.weight"), maybe(p + "self_attn.o_proj.bias"))
            mlp = [p + f"mlp.{n}_proj." for n in ("gate", "up")]
            layer.gate_up = make_linear(cat([m + "weight" for m in mlp]), cat([m + "bias" for m in mlp]))
            layer.down = make_linear(get(p + "mlp.down_proj.weight"), maybe(p + "mlp.down_proj.bias"))
            self.layers.append(layer)
        self._rope_len = 0
        self._ensure_rope(cfg.max_position_embeddings)
        self.adapter = None  # a gated FLUID adapter (fluid_rt.adapter.Adapter.attach sets it)
        # Quantized CPU layers run as one op call each (ops.decoder_layer_, bitwise the op-by-op
        # layer); False: always op by op (tests compare the two).
        self.fuse_layers = True
        self._plans = _UNPLANNED

    def _ensure_rope(self, num_positions: int) -> None:
        # Grown on the host from shapes only (cache capacity), never from device values.
        if num_positions > self._rope_len:
            self.cos, self.sin = rope_tables(self.cfg, num_positions, self.dtype, self.device)
            self._rope_len = num_positions

    def __call__(
        self,
        tokens: torch.Tensor,
        cache: KVCache,
        rows: torch.Tensor | None = None,
        logits_slots: torch.Tensor | None = None,
        widths: list | None = None,
        float_logits: bool = True,
    ):
        return self.forward(tokens, cache, rows, logits_slots, widths, float_logits)

    def forward(
        self,
        tokens: torch.Tensor,
        cache: KVCache,
        rows: torch.Tensor | None = None,
        logits_slots: torch.Tensor | None = None,
        widths: list | None = None,
        float_logits: bool = True,
    ):
        """Run ``tokens [B, T]`` int64 at positions ``cache.seqlens[rows[b]] + t``.

        rows: optional ``[B]`` int32/int64 cache rows (default ``0 .. B-1``).
        logits_slots: optional ``[B, n]`` int64 slot indices in ``0 .. T-1``; logits are then
        computed only there (the vocab matmul is skipped for the other slots).
        widths: optional host ints, ``1 <= widths[b] <= T`` (not with ``logits_slots``): row b
        runs only its first ``widths[b]`` tokens, packed with the other rows' into one sequence
        for the matmuls (``RowPacking``), so rows of different widths cost their own width, not
        the widest. The slots past a row's width get zero logits and hidden states, and no K/V.
        For the CPU, where a matmul's cost follows its row count.
        float_logits: return the logits as float32 (default), or in the model dtype (what
        ``ops.token_entropy`` reads directly, without a float32 copy of ``[B, T, V]``).
        Writes the tokens' K/V into ``cache`` (never advances ``cache.seqlens``).
        Returns ``logits [B, T or n, V]`` and ``hidden [B, T, H]`` (after the final RMSNorm) in
        the model dtype."""
        B, T = tokens.shape
        self._check_call(tokens, cache, rows, logits_slots, widths)
        self._ensure_rope(cache.capacity)
        seqlens = cache.seqlens[:B] if rows is None else cache.seqlens.index_select(0, rows)
        batch_idx = None if rows is None else rows.to(torch.int32)
        packing = None
        if widths is not None:
            packing = RowPacking([int(w) for w in widths], seqlens, batch_idx)
            tokens, positions = packing.pack(tokens), packing.positions
        else:
            positions = seqlens.long()[:, None] + torch.arange(T, device=tokens.device)  # [B, T]
        # Clamped only so that a row past the cache capacity cannot index the tables out of range
        # (a device assert on CUDA); the attention op itself rejects / NaN-fills such rows.
        positions = positions.clamp(0, self._rope_len - 1)
        ctx = ForwardContext(
            cache.k.unbind(0),
            cache.v.unbind(0),
            seqlens,
            batch_idx,
            self.cos[positions],
            self.sin[positions],
            packing,
            self._fused_plans(T, seqlens) if packing is None else None,
        )
        # x is the residual stream; ``ops.rms_norm(x, w, eps, delta)`` adds each block's output
        # into it in place and normalizes the sum in one pass.
        x = self.embed_tokens(tokens)  # [B, T, H], a fresh tensor
        if self.adapter is not None:  # mask rows: the adapter's embedding, and its LoRA downstream
            x = self.adapter.begin_forward(tokens, x)
        delta = None
        for li, layer in enumerate(self.layers):
            delta = self._layer(li, layer, x, delta, ctx)
        hidden = ops.rms_norm(x, self.norm, self.cfg.rms_norm_eps, delta)
        logits = self._logits(hidden, logits_slots)
        if float_logits:
            logits = logits.float()
        if packing is not None:  # back to [B, T, ...], zeros past each row's width
            return packing.unpack(logits, B, T), packing.unpack(hidden, B, T)
        return logits, hidden

    def _check_call(self, tokens, cache: KVCache, rows, logits_slots, widths) -> None:
        B, T = tokens.shape
        if widths is not None and (
            logits_slots is not None or len(widths) != B or not all(1 <= int(w) <= T for w in widths)
        ):
            raise ValueError(f"widths: expected {B} ints in [1, {T}] and no logits_slots, got {list(widths)}")
        if cache.k.dtype != self.dtype or cache.k.device != self.device:
            raise ValueError(
                f"cache: dtype/device {cache.k.dtype}/{cache.k.device} differ from the "
                f"model's {self.dtype}/{self.device}"
            )
        if rows is None and cache.max_batch < B:
            raise ValueError(f"tokens: batch {B} exceeds the cache's max_batch {cache.max_batch}")
        if rows is not None and rows.shape != (B,):
            raise ValueError(f"rows: expected shape ({B},), got {tuple(rows.shape)}")

    def _fused_plans(self, T: int, seqlens: torch.Tensor) -> list | None:
        """The layers' ``LayerPlan`` when this forward runs them as one op call each, else None:
        not while the CUDA kernels are emulated, nor when attention would take torch's SDPA
        (``ops.causal_attention`` on the portable path), which the op does not."""
        if not self.fuse_layers or _backend._emulate:
            return None
        if self._plans is _UNPLANNED:
            self._plans = layer_plans(self)
        if self._plans is None or call_uses_torch_fallback(T, seqlens, self.cfg.num_heads, self.cfg.head_dim):
            return None
        return self._plans

    def invalidate_plans(self) -> None:
        """Forget the layers' ``LayerPlan`` (call after replacing a projection, as
        ``Adapter.attach`` does); the next forward plans them again."""
        self._plans = _UNPLANNED

    def _layer(
        self, li: int, layer: _Layer, x: torch.Tensor, delta: torch.Tensor | None, ctx: ForwardContext
    ) -> torch.Tensor:
        """One decoder layer on the residual stream ``x`` (``delta``, the previous layer's
        output, is added into it first). Returns this layer's output, added by the next norm."""
        if ctx.plans is not None:
            return self._fused_layer(li, ctx.plans[li], x, delta, ctx)
        cfg = self.cfg
        h = ops.rms_norm(x, layer.ln_in, cfg.rms_norm_eps, delta)
        q, k, v = self._qkv(layer, h, ctx)
        attn = self._attention(li, q, k, v, ctx)
        h = ops.rms_norm(x, layer.ln_post, cfg.rms_norm_eps, layer.o(attn.reshape(*x.shape[:2], cfg.q_size)))
        return layer.down.silu_and_mul(layer.gate_up(h))

    def _fused_layer(self, li: int, plan: LayerPlan, x, delta, ctx: ForwardContext) -> torch.Tensor:
        """``_layer`` as one ``ops.decoder_layer_`` call (same kernels, same order)."""
        lora = None
        if plan.lora_rows is not None and plan.lora_rows.index is not None:
            lora = (plan.lora_rows.index, *plan.lora_factors)
        return ops.decoder_layer_(
            x,
            delta,
            plan.ln_in,
            plan.ln_post,
            self.cfg.rms_norm_eps,
            plan.projections,
            ctx.cos,
            ctx.sin,
            ctx.k_layers[li],
            ctx.v_layers[li],
            ctx.seqlens,
            ctx.batch_idx,
            self.cfg.num_heads,
            self.cfg.num_kv_heads,
            lora,
        )

    def _qkv(self, layer: _Layer, h: torch.Tensor, ctx: ForwardContext):
        """q ``[B, T, Hq, D]``, k, v ``[B, T, Hkv, D]``, RoPE applied: views of the fused
        projection with a contiguous last dim, as ``causal_attention`` accepts."""
        cfg = self.cfg
        Hq, Hkv = cfg.num_heads, cfg.num_kv_heads
        # One view and narrows: a decode step runs this 30 times, and indexing with slices and
        # unflatten cost ~3x as much host time (~18 us against ~7 per layer).
        heads = layer.qkv(h).view(*h.shape[:-1], Hq + 2 * Hkv, cfg.head_dim)
        qk = heads.narrow(2, 0, Hq + Hkv)
        if self.device.type == "cpu":  # the fused op on the CPU; torch ops in a CUDA graph
            ops.rope_(qk, ctx.cos, ctx.sin)
        else:
            qk = apply_rope(qk, ctx.cos.unsqueeze(2), ctx.sin.unsqueeze(2))
        return qk.narrow(2, 0, Hq), qk.narrow(2, Hq, Hkv), heads.narrow(2, Hq + Hkv, Hkv)

    def _attention(self, li: int, q, k, v, ctx: ForwardContext) -> torch.Tensor:
        """Attention of layer ``li`` over the cache (writing k, v at each row's length)."""
        k_cache, v_cache = ctx.k_layers[li], ctx.v_layers[li]
        if ctx.packing is not None:
            return ctx.packing.attention(q, k, v, k_cache, v_cache)
        return ops.causal_attention(q, k_cache, v_cache, ctx.seqlens, k, v, cache_batch_idx=ctx.batch_idx)

    def _logits(self, hidden: torch.Tensor, logits_slots: torch.Tensor | None) -> torch.Tensor:
        if logits_slots is None:
            return self.lm_head(hidden)
        index = logits_slots.long().unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
        return self.lm_head(hidden.gather(1, index))

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, T]`` ids -> ``[B, T, H]`` embeddings in the model dtype (a fresh tensor)."""
        if isinstance(self.embed, QuantLinear):  # only the rows looked up are dequantized
            return self.embed.rows(tokens).to(self.dtype)
        return F.embedding(tokens, self.embed)

    def new_cache(self, max_batch: int, max_seq: int) -> KVCache:
        """A KV cache in the model's dtype and device."""
        return KVCache(self.cfg, max_batch, max_seq, self.dtype, self.device)

    def __repr__(self) -> str:
        c = self.cfg
        return (
            f"Transformer({c.family}, layers={c.num_layers}, hidden={c.hidden_size}, "
            f"heads={c.num_heads}/{c.num_kv_heads}x{c.head_dim}, vocab={c.vocab_size}, "
            f"dtype={self.dtype}, device={self.device})"
        )
