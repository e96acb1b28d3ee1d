"""fluid_rt.adapter: the adapter directory (round trip, corrupt files, base identity), the gated
LoRA in the runtime forward (bitwise the base model where no mask is in view; the training
model's math at mask rows), and the shipped SmolLM2 adapter (elastic tokens == AR tokens)."""

import json
import os
import random

import pytest
import torch
from safetensors.torch import save_file

from fluid_rt.adapt.layout import collate, draft_bias, insert_masks
from fluid_rt.adapt.model import (
    FrozenBase,
    GatedAdapter,
    draft_hidden,
    draft_logits,
    main_pass,
)
from fluid_rt.adapt.objectives import new_khead
from fluid_rt.adapter import AdapterError, base_identity, read_adapter, save_adapter
from fluid_rt.decode import DecodeConfig, Decoder
from fluid_rt.loader import SHIPPED_ADAPTER, load_model

MASK = 3
HF_CONFIG = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "num_hidden_layers": 2,
    "vocab_size": 97,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "max_position_embeddings": 128,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
}


def tiny_checkpoint(tmp_path, seed=0):
    from fluid_rt.config import ModelConfig, expected_tensor_shapes

    cfg = ModelConfig.from_hf_dict(HF_CONFIG)
    gen = torch.Generator().manual_seed(seed)
    state = {n: torch.randn(s, generator=gen) * 0.2 for n, s in expected_tensor_shapes(cfg).items()}
    for n in state:
        if "norm" in n:
            state[n] = 1 + 0.1 * state[n]
    d = tmp_path / f"base{seed}"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(HF_CONFIG))
    save_file(state, str(d / "model.safetensors"))
    return str(d), cfg, state


def trained_like_adapter(cfg, state, seed=1, rank=4):
    """A GatedAdapter with random (non-zero) B factors, as after some training."""
    base = FrozenBase(cfg, state)
    ad = GatedAdapter(cfg, rank, 2 * rank, MASK, base.embed.mean(0), seed=seed)
    gen = torch.Generator().manual_seed(seed + 11)
    with torch.no_grad():
        for p in ad.B.values():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
        ad.mask_embedding.add_(torch.randn(ad.mask_embedding.shape, generator=gen))
    return base, ad


def write_adapter(path, ad, base_path, max_k=4, sha=None):
    meta = {
        "base": {"sha256": sha or base_identity(base_path), "name": "tiny"},
        "rank": ad.rank,
        "alpha": ad.alpha,
        "target_modules": list(ad.targets),
        "mask_token_id": MASK,
        "max_k": max_k,
        "hidden_size": ad.cfg.hidden_size,
        "num_layers": ad.cfg.num_layers,
        "decode": {"block_size": max_k, "min_block": 1},
    }
    head = new_khead(ad.cfg.hidden_size, max_k, seed=3).state_dict()
    save_adapter(str(path), ad.tensors(), meta, khead=head)
    return head


@pytest.fixture
def tiny(tmp_path):
    base_path, cfg, state = tiny_checkpoint(tmp_path)
    base, ad = trained_like_adapter(cfg, state)
    adir = tmp_path / "adapter"
    head = write_adapter(adir, ad, base_path)
    return dict(base_path=base_path, cfg=cfg, state=state, base=base, ad=ad, adir=str(adir), head=head)


# -- the directory -------------------------------------------------------------------------------
def test_adapter_round_trip(tiny):
    meta, tensors = read_adapter(tiny["adir"])
    for name, t in tiny["ad"].tensors().items():
        want = t if name == "mask_embedding" else t.to(torch.bfloat16)  # LoRA stored in bf16
        assert torch.equal(tensors[name], want), name
    for k, v in tiny["head"].items():
        assert torch.equal(tensors["diffusion_k_head." + k], v)
    assert meta["rank"] == 4 and meta["mask_token_id"] == MASK and meta["has_khead"]
    assert meta["base"]["sha256"] == base_identity(tiny["base_path"])


def test_corrupt_adapters_give_clear_errors(tiny, tmp_path):
    import shutil

    def copy(name):
        d = tmp_path / name
        shutil.copytree(tiny["adir"], d)
        return d

    d = copy("truncated")
    w = d / "adapter.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    with pytest.raises(AdapterError, match="corrupt adapter weights"):
        read_adapter(str(d))
    d = copy("badjson")
    (d / "adapter.json").write_text("{not json")
    with pytest.raises(AdapterError, match="corrupt adapter config"):
        read_adapter(str(d))
    d = copy("missing")
    _, tensors = read_adapter(tiny["adir"])
    tensors.pop("model.layers.1.mlp.down_proj.lora_B")
    save_file(tensors, str(d / "adapter.safetensors"))
    with pytest.raises(AdapterError, match="layer 1 down_proj missing"):
        read_adapter(str(d))
    d = copy("rank")
    meta = json.loads((d / "adapter.json").read_text())
    meta["rank"] = 8
    (d / "adapter.json").write_text(json.dumps(meta))
    with pytest.raises(AdapterError, match="rank 8"):
        read_adapter(str(d))
    with pytest.raises(AdapterError, match="not an adapter directory"):
        read_adapter(str(tmp_path))
    with pytest.raises(ValueError):  # AdapterError is a ValueError: the CLI reports it cleanly
        load_model(tiny["base_path"], adapter=str(tmp_path / "truncated"))


def test_adapter_for_another_base_is_refused(tiny, tmp_path):
    other_path, _, _ = tiny_checkpoint(tmp_path, seed=9)
    with pytest.raises(AdapterError, match="trained on another base model"):
        load_model(other_path, adapter=tiny["adir"])
    lm = load_model(tiny["base_path"], adapter=tiny["adir"])
    assert lm.adapter is not None and lm.fluid.mask_token_id == MASK
    assert lm.khead is not None and lm.khead.max_k == 4 and lm.fluid.max_k == 4
    assert lm.decode_defaults["block_size"] == 4
    assert load_model(tiny["base_path"]).adapter is None  # only the default model gets one


# -- the gated forward -----------------------------------------------------------------------------
def _forward(model, tokens):
    cache = model.new_cache(tokens.shape[0], 64)
    return model(tokens, cache)


@pytest.mark.parametrize("dense", [False, True], ids=["cpu_index", "dense_gate"])
def test_gated_forward_is_the_base_bitwise_where_no_mask_is_in_view(tiny, dense):
    plain = load_model(tiny["base_path"], adapter=None).model
    lm = load_model(tiny["base_path"], adapter=tiny["adir"])
    lm.adapter.dense = dense  # the CUDA path's dense gate, run here on the CPU
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(10, 97, (2, 12), generator=gen)
    tokens[0, 6:9] = MASK
    tokens[1, 9:] = MASK
    want_logits, want_hidden = _forward(plain, tokens)
    logits, hidden = _forward(lm.model, tokens)
    for b, first_mask in ((0, 6), (1, 9)):
        assert torch.equal(logits[b, :first_mask], want_logits[b, :first_mask])
        assert torch.equal(hidden[b, :first_mask], want_hidden[b, :first_mask])
        assert not torch.allclose(logits[b, first_mask], want_logits[b, first_mask])
    no_mask = torch.randint(10, 97, (1, 7), generator=gen)
    assert torch.equal(_forward(lm.model, no_mask)[0], _forward(plain, no_mask)[0])


def test_runtime_mask_rows_equal_the_training_model(tiny):
    """The runtime's fused, gated LoRA computes what the training model trained: a block of masks
    after a prefix (positions consecutive, each mask seeing the prefix and the earlier masks)."""
    lm = load_model(tiny["base_path"], adapter=tiny["adir"])
    prefix = [random.Random(1).randrange(10, 97) for _ in range(9)]
    k = 3
    logits, _ = _forward(lm.model, torch.tensor([prefix + [MASK] * k]))
    base = tiny["base"]
    ad = tiny["ad"]
    with torch.no_grad():  # the runtime reads the bf16-stored factors
        for p in list(ad.A.values()) + list(ad.B.values()):
            p.copy_(p.to(torch.bfloat16).float())
    lay = insert_masks(
        prefix + [5] * (k + 1),
        len(prefix),
        mask_id=MASK,
        max_k=k,
        select_prob=1.0,
        rng=random.Random(0),
        restore=False,
        fixed_k=True,
    )
    first = [r for r in range(len(lay)) if lay.trigger[r] == len(prefix) - 1]
    batch = collate([prefix], [lay], pad_id=0)
    kv, _ = main_pass(base, batch.main_ids)
    bias = draft_bias(batch.trigger, batch.block, batch.positions, batch.valid, len(prefix))
    with torch.no_grad():
        want = draft_logits(base, draft_hidden(base, ad, batch.ids, batch.positions, bias, kv))[0]
    torch.testing.assert_close(logits[0, len(prefix) :], want[first], atol=3e-4, rtol=3e-4)


def test_elastic_equals_ar_with_a_tiny_adapter(tiny):
    lm = load_model(tiny["base_path"], adapter=tiny["adir"])
    dec = Decoder(lm.model, khead=lm.khead, mask_token_id=lm.fluid.mask_token_id)
    gen = torch.Generator().manual_seed(4)
    prompts = [torch.randint(10, 97, (n,), generator=gen).tolist() for n in (3, 8, 5)]
    ar, _ = dec.generate(prompts, DecodeConfig(mode="ar", max_new_tokens=20))
    el, _ = dec.generate(prompts, DecodeConfig(max_new_tokens=20, block_size=4, min_block=1, threshold=0.3))
    assert [g.tokens for g in el] == [g.tokens for g in ar]


# -- the shipped adapter ---------------------------------------------------------------------------
shipped = pytest.mark.skipif(not os.path.isdir(SHIPPED_ADAPTER), reason="no shipped adapter")


@shipped
def test_default_model_loads_with_the_shipped_adapter():
    pytest.importorskip("gguf")
    lm = load_model()
    assert lm.adapter is not None and lm.khead is not None
    assert lm.fluid.mask_token_id == lm.adapter.mask_token_id
    assert lm.fluid.max_k == lm.khead.max_k == lm.adapter.max_k
    assert lm.tokenizer.id_to_token(lm.fluid.mask_token_id) in (
        "<empty_output>",
        "<jupyter_script>",
        "<issue_closed>",
        "<gh_stars>",
    )


@shipped
def test_shipped_adapter_elastic_tokens_equal_ar_on_20_prompts():
    pytest.importorskip("gguf")
    from fluid_rt.adapt.data import chat_ids
    from fluid_rt.adapt.prompts import build_prompts
    from fluid_rt.adapt.report import decode_config

    lm = load_model()
    _, held = build_prompts()
    prompts = [chat_ids(lm.tokenizer, p.text) for p in held[:20]]
    dec = Decoder(lm.model, khead=lm.khead, mask_token_id=lm.fluid.mask_token_id)
    cfg = decode_config(lm, 12)
    ar, _ = dec.generate(prompts, DecodeConfig(mode="ar", max_new_tokens=12, eos_token_ids=cfg.eos_token_ids))
    el, _ = dec.generate(prompts, cfg)
    assert [g.tokens for g in el] == [g.tokens for g in ar]
