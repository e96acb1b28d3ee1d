"""The training-time model: the frozen base (plain torch on its HF-named weights) and the gated
adapter (LoRA on the seven linears of every layer + a learned mask embedding), split into the two
passes of ``layout``'s module docstring: the main sequence under ``no_grad``, then the draft rows
with gradients over the main K/V."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fluid_rt.config import ModelConfig

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")


def target_shape(cfg: ModelConfig, target: str) -> tuple[int, int]:
    """(out_features, in_features) of a target linear."""
    H, inter = cfg.hidden_size, cfg.intermediate_size
    return {
        "q_proj": (cfg.q_size, H),
        "k_proj": (cfg.kv_size, H),
        "v_proj": (cfg.kv_size, H),
        "o_proj": (H, cfg.q_size),
        "gate_proj": (inter, H),
        "up_proj": (inter, H),
        "down_proj": (H, inter),
    }[target]


def tensor_name(layer: int, target: str, which: str) -> str:
    """The adapter file's name of one LoRA factor (``which``: ``lora_A`` / ``lora_B``)."""
    group = "self_attn" if target in _ATTN else "mlp"
    return f"model.layers.{layer}.{group}.{target}.{which}"


class FrozenBase:
    """The base model's weights (float32, no grad) and its forward pieces."""

    def __init__(self, cfg: ModelConfig, state: dict, dtype: torch.dtype = torch.float32):
        from fluid_rt.model import rope_tables

        self.cfg = cfg

        def get(name):
            return state[name].detach().to(dtype)

        self.embed = get("model.embed_tokens.weight")
        self.lm_head = self.embed if cfg.tie_word_embeddings else get("lm_head.weight")
        self.norm = get("model.norm.weight")
        self.layers = []
        for i in range(cfg.num_layers):
            p = f"model.layers.{i}."
            w = {
                "ln_in": get(p + "input_layernorm.weight"),
                "ln_post": get(p + "post_attention_layernorm.weight"),
            }
            for t in TARGETS:
                group = "self_attn" if t in _ATTN else "mlp"
                w[t] = get(f"{p}{group}.{t}.weight")
                bias = state.get(f"{p}{group}.{t}.bias")
                w[t + ".bias"] = None if bias is None else bias.detach().to(dtype)
            self.layers.append(w)
        self.cos, self.sin = rope_tables(cfg, cfg.max_position_embeddings, dtype, "cpu")

    def rms(self, x, w):
        xf = x.float()
        return w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.cfg.rms_norm_eps)).to(x.dtype)

    def rope(self, x, positions):
        """x [B, heads, T, D]; positions [B, T]."""
        cos, sin = self.cos[positions][:, None], self.sin[positions][:, None]
        half = x.shape[-1] // 2
        return x * cos + torch.cat((x[..., half:], x[..., :half]), -1) * sin


class GatedAdapter(nn.Module):
    """LoRA factors ``A [r, in]`` (small random) and ``B [out, r]`` (zero: training starts from the
    base model) per (layer, target), scale ``alpha / r``, and the mask embedding ``[H]``."""

    def __init__(
        self,
        cfg: ModelConfig,
        rank: int,
        alpha: float,
        mask_token_id: int,
        mask_init: torch.Tensor,
        targets=TARGETS,
        seed: int = 0,
    ):
        super().__init__()
        self.mask_token_id = int(mask_token_id)
        gen = torch.Generator().manual_seed(seed)
        self.cfg, self.rank, self.alpha, self.targets = cfg, rank, float(alpha), tuple(targets)
        self.scale = self.alpha / rank
        self.A = nn.ParameterDict()
        self.B = nn.ParameterDict()
        for i in range(cfg.num_layers):
            for t in self.targets:
                out_f, in_f = target_shape(cfg, t)
                key = f"{i}_{t}"
                self.A[key] = nn.Parameter(torch.randn(rank, in_f, generator=gen) / math.sqrt(in_f))
                self.B[key] = nn.Parameter(torch.zeros(out_f, rank))
        self.mask_embedding = nn.Parameter(mask_init.detach().float().clone())

    def delta(self, layer: int, target: str, x: torch.Tensor):
        key = f"{layer}_{target}"
        if key not in self.A:
            return None
        return (x @ self.A[key].t()) @ self.B[key].t() * self.scale

    def tensors(self) -> dict:
        """The adapter file's tensors (float32; the writer picks the storage dtype)."""
        out = {"mask_embedding": self.mask_embedding.detach().clone()}
        for i in range(self.cfg.num_layers):
            for t in self.targets:
                out[tensor_name(i, t, "lora_A")] = self.A[f"{i}_{t}"].detach().clone()
                out[tensor_name(i, t, "lora_B")] = self.B[f"{i}_{t}"].detach().clone()
        return out

    def load_tensors(self, tensors: dict) -> None:
        with torch.no_grad():
            self.mask_embedding.copy_(tensors["mask_embedding"])
            for i in range(self.cfg.num_layers):
                for t in self.targets:
                    self.A[f"{i}_{t}"].copy_(tensors[tensor_name(i, t, "lora_A")])
                    self.B[f"{i}_{t}"].copy_(tensors[tensor_name(i, t, "lora_B")])


def _linear(base: FrozenBase, adapter, layer: int, target: str, x, gate):
    w = base.layers[layer]
    y = F.linear(x, w[target], w[target + ".bias"])
    if adapter is None or gate is None:
        return y
    d = adapter.delta(layer, target, x)
    return y if d is None else y + d * gate


def _block(base, adapter, li, x, positions, gate, past_kv, bias, is_causal):
    """One decoder layer on x [B, T, H]; past_kv: (k, v) [B, Hkv, S, D] to attend first (or
    None). Returns (x, (k, v) of these T rows)."""
    cfg, w = base.cfg, base.layers[li]
    B, T, _ = x.shape
    h = base.rms(x, w["ln_in"])
    q = _linear(base, adapter, li, "q_proj", h, gate).view(B, T, cfg.num_heads, cfg.head_dim)
    k = _linear(base, adapter, li, "k_proj", h, gate).view(B, T, cfg.num_kv_heads, cfg.head_dim)
    v = _linear(base, adapter, li, "v_proj", h, gate).view(B, T, cfg.num_kv_heads, cfg.head_dim)
    q = base.rope(q.transpose(1, 2), positions)
    k = base.rope(k.transpose(1, 2), positions)
    v = v.transpose(1, 2)
    keys, values = (
        (k, v) if past_kv is None else (torch.cat([past_kv[0], k], 2), torch.cat([past_kv[1], v], 2))
    )
    a = F.scaled_dot_product_attention(q, keys, values, attn_mask=bias, is_causal=is_causal, enable_gqa=True)
    a = a.transpose(1, 2).reshape(B, T, cfg.q_size)
    x = x + _linear(base, adapter, li, "o_proj", a, gate)
    h = base.rms(x, w["ln_post"])
    act = F.silu(_linear(base, adapter, li, "gate_proj", h, gate)) * _linear(
        base, adapter, li, "up_proj", h, gate
    )
    return x + _linear(base, adapter, li, "down_proj", act, gate), (k, v)


@torch.no_grad()
def main_pass(base: FrozenBase, ids: torch.Tensor):
    """The base model on the main sequences ``ids [B, L]`` (right-padded; causal, so padding
    changes nothing before it). Returns per-layer (k, v) ``[B, Hkv, L, D]`` (k after RoPE) and the
    final normed hidden states ``[B, L, H]``."""
    B, L = ids.shape
    positions = torch.arange(L).expand(B, L)
    x = F.embedding(ids, base.embed)
    kv = []
    for li in range(base.cfg.num_layers):
        x, layer_kv = _block(base, None, li, x, positions, None, None, None, True)
        kv.append(layer_kv)
    return kv, base.rms(x, base.norm)


def draft_hidden(base: FrozenBase, adapter: GatedAdapter, ids, positions, bias, main_kv):
    """The draft rows ``ids [B, R]`` at ``positions [B, R]`` with the gated adapter, over the main
    K/V (``bias [B, 1, R, L + R]`` from ``layout.draft_bias``). Final normed hidden ``[B, R, H]``."""
    gate = (ids == adapter.mask_token_id).unsqueeze(-1).to(base.embed.dtype)
    x = F.embedding(ids, base.embed)
    x = torch.where(gate.bool(), adapter.mask_embedding.to(x.dtype), x)
    for li in range(base.cfg.num_layers):
        x, _ = _block(base, adapter, li, x, positions, gate, main_kv[li], bias, False)
    return base.rms(x, base.norm)


def draft_logits(base: FrozenBase, hidden: torch.Tensor) -> torch.Tensor:
    return F.linear(hidden, base.lm_head)
