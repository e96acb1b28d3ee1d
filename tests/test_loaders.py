"""Checkpoint / K-head loader error handling, FluidConfig, and load_model on a directory."""

import json
import os
import struct

import pytest
import torch
from safetensors.torch import save_file

from fluid_rt.config import FluidConfig, ModelConfig, expected_tensor_shapes
from fluid_rt.khead import KHead
from fluid_rt.loader import load_model
from fluid_rt.weights import find_khead, load_hf_checkpoint, load_khead

HF_CONFIG = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 128,
    "intermediate_size": 96,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "num_hidden_layers": 2,
    "vocab_size": 97,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "max_position_embeddings": 64,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": [2, 5],
    "pad_token_id": 0,
    "hidden_act": "silu",
}


def _random_state(cfg_dict, seed=0):
    cfg = ModelConfig.from_hf_dict(cfg_dict)
    gen = torch.Generator().manual_seed(seed)
    return cfg, {n: torch.randn(s, generator=gen) * 0.1 for n, s in expected_tensor_shapes(cfg).items()}


def _write_ckpt(path, cfg_dict=HF_CONFIG, state=None, shards=1):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(cfg_dict))
    if state is None:
        _, state = _random_state(cfg_dict)
    if shards == 1:
        save_file(state, str(path / "model.safetensors"))
        return state
    names = sorted(state)
    weight_map = {}
    for i in range(shards):
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: state[n] for n in names[i::shards]}
        save_file(part, str(path / fname))
        weight_map.update({n: fname for n in part})
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return state


def _rewrite_header(file, edit):
    """Rewrite a safetensors header through ``edit(header_dict)``, keeping the data bytes."""
    raw = file.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    edit(header)
    new = json.dumps(header).encode()
    file.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n :])


def test_roundtrip_single_and_sharded(tmp_path):
    state = _write_ckpt(tmp_path / "one")
    cfg, loaded = load_hf_checkpoint(tmp_path / "one")
    assert cfg.eos_token_ids == (2, 5) and cfg.num_kv_heads == 1 and cfg.head_dim == 64
    assert set(loaded) == set(state)
    for n in state:
        assert torch.equal(loaded[n], state[n])
    _write_ckpt(tmp_path / "three", state=state, shards=3)
    _, loaded3 = load_hf_checkpoint(tmp_path / "three", dtype=torch.bfloat16)
    for n in state:
        assert loaded3[n].dtype == torch.bfloat16
        assert torch.equal(loaded3[n], state[n].to(torch.bfloat16))


def test_inv_freq_is_ignored(tmp_path):
    _, state = _random_state(HF_CONFIG)
    state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(32)
    _write_ckpt(tmp_path, state=state)
    _, loaded = load_hf_checkpoint(tmp_path)
    assert not any("inv_freq" in n for n in loaded)


def test_truncated_file(tmp_path):
    _write_ckpt(tmp_path)
    f = tmp_path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(ValueError, match="model.safetensors.*truncated"):
        load_hf_checkpoint(tmp_path)
    f.write_bytes(f.read_bytes()[:5])  # not even a header length
    with pytest.raises(ValueError, match="model.safetensors"):
        load_hf_checkpoint(tmp_path)


def test_header_lies_about_sizes(tmp_path):
    _write_ckpt(tmp_path)
    f = tmp_path / "model.safetensors"

    def grow_shape(h):  # same byte range, but a shape that needs more bytes
        h["model.norm.weight"]["shape"] = [256]

    _rewrite_header(f, grow_shape)
    with pytest.raises(ValueError, match="model.safetensors.*model.norm.weight"):
        load_hf_checkpoint(tmp_path)

    _write_ckpt(tmp_path)

    def past_the_end(h):  # offsets beyond the data
        last = max(h.items(), key=lambda kv: kv[1]["data_offsets"][1] if kv[0] != "__metadata__" else -1)
        name, info = last
        b, e = info["data_offsets"]
        info["data_offsets"] = [b + 64, e + 64]

    _rewrite_header(f, past_the_end)
    with pytest.raises(ValueError, match="model.safetensors.*tensor"):
        load_hf_checkpoint(tmp_path)

    raw = f.read_bytes()
    f.write_bytes(struct.pack("<Q", 10**12) + raw[8:])  # header length beyond the file
    with pytest.raises(ValueError, match="corrupt safetensors header"):
        load_hf_checkpoint(tmp_path)


def test_wrong_shape(tmp_path):
    _, state = _random_state(HF_CONFIG)
    state["model.layers.1.mlp.up_proj.weight"] = torch.zeros(95, 128)
    _write_ckpt(tmp_path, state=state)
    with pytest.raises(ValueError, match=r"model.safetensors.*layers.1.mlp.up_proj.weight.*\(95, 128\)"):
        load_hf_checkpoint(tmp_path)


def test_missing_tensor(tmp_path):
    _, state = _random_state(HF_CONFIG)
    del state["model.layers.1.self_attn.v_proj.weight"]
    _write_ckpt(tmp_path, state=state)
    with pytest.raises(ValueError, match="layers.1.self_attn.v_proj.weight"):
        load_hf_checkpoint(tmp_path)


def test_unexpected_tensor(tmp_path):
    _, state = _random_state(HF_CONFIG)
    state["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(128)  # no attention_bias in config
    _write_ckpt(tmp_path, state=state)
    with pytest.raises(ValueError, match="model.safetensors.*unexpected.*q_proj.bias"):
        load_hf_checkpoint(tmp_path)


def test_missing_shard(tmp_path):
    _write_ckpt(tmp_path, shards=2)
    os.remove(tmp_path / "model-00002-of-00002.safetensors")
    with pytest.raises(ValueError, match="model-00002-of-00002.safetensors"):
        load_hf_checkpoint(tmp_path)


def test_index_names_tensor_missing_from_shard(tmp_path):
    _write_ckpt(tmp_path, shards=2)
    idx = tmp_path / "model.safetensors.index.json"
    d = json.loads(idx.read_text())
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    wrong = shards[1 - shards.index(d["weight_map"]["model.norm.weight"])]
    d["weight_map"]["model.norm.weight"] = wrong
    idx.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=f"model.norm.weight.*{wrong}"):
        load_hf_checkpoint(tmp_path)


def test_unknown_model_type(tmp_path):
    _write_ckpt(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(dict(HF_CONFIG, model_type="gpt_neox")))
    with pytest.raises(ValueError, match="config.json.*gpt_neox"):
        load_hf_checkpoint(tmp_path)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda d: [d], "expected a JSON object"),
        (lambda d: dict(d, num_attention_heads=0), "num_attention_heads: must be a positive int"),
        (lambda d: dict(d, hidden_size="128"), "hidden_size: must be a positive int"),
        (lambda d: dict(d, num_key_value_heads=1.5), "num_key_value_heads: must be a positive int"),
        (lambda d: {k: v for k, v in d.items() if k != "vocab_size"}, "missing field 'vocab_size'"),
        (lambda d: dict(d, rope_theta=0), "rope_theta: must be a positive finite number"),
        (lambda d: dict(d, rms_norm_eps=-1e-5), "rms_norm_eps: must be a positive finite number"),
        (lambda d: dict(d, rope_scaling={"rope_type": "llama3"}), "llama3.*needs 'factor'"),
        (lambda d: dict(d, rope_scaling={"type": "linear"}), "linear.*needs 'factor'"),
        (lambda d: dict(d, rope_scaling={"type": "linear", "factor": -2}), "factor must be a positive"),
        (lambda d: dict(d, rope_scaling=[1]), "rope_scaling: expected an object"),
        (lambda d: dict(d, rope_parameters=5), "rope_parameters: expected an object"),
    ],
)
def test_malformed_config_json(tmp_path, change, match):
    """A config.json that would divide by zero, produce NaN RoPE tables or crash deep in the
    model is refused at load, naming the file and the field."""
    _write_ckpt(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(change(dict(HF_CONFIG))))
    with pytest.raises(ValueError, match=f"config.json: .*{match}"):
        load_hf_checkpoint(tmp_path)


def test_malformed_index_weight_map(tmp_path):
    _write_ckpt(tmp_path, shards=2)
    idx = tmp_path / "model.safetensors.index.json"
    idx.write_text(json.dumps({"weight_map": 5}))
    with pytest.raises(ValueError, match="index.json: weight_map must map"):
        load_hf_checkpoint(tmp_path)


def test_config_families():
    pangu = ModelConfig.from_hf_dict(dict(HF_CONFIG, model_type="PanguEmbedded", bias=True))
    assert (pangu.family, pangu.attention_bias, pangu.o_bias, pangu.mlp_bias) == ("pangu", True, True, False)
    llama = ModelConfig.from_hf_dict(dict(HF_CONFIG, attention_bias=True, mlp_bias=True, head_dim=80))
    assert (llama.attention_bias, llama.o_bias, llama.mlp_bias, llama.head_dim) == (True, True, True, 80)
    qwen = ModelConfig.from_hf_dict(dict(HF_CONFIG, model_type="qwen2", tie_word_embeddings=True))
    assert (qwen.attention_bias, qwen.o_bias, qwen.mlp_bias, qwen.tie_word_embeddings) == (
        True,
        False,
        False,
        True,
    )
    with pytest.raises(ValueError, match="rope_scaling"):
        ModelConfig.from_hf_dict(dict(HF_CONFIG, rope_scaling={"rope_type": "yarn", "factor": 2.0}))
    # transformers 5 writes rope_parameters instead of rope_theta / rope_scaling
    v5 = dict(HF_CONFIG)
    del v5["rope_theta"]
    v5["rope_parameters"] = {
        "rope_type": "llama3",
        "rope_theta": 5e5,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32,
    }
    c = ModelConfig.from_hf_dict(v5)
    assert c.rope_theta == 5e5 and c.rope_scaling["rope_type"] == "llama3"


# ---------------------------------------------------------------- K-head


def _khead_state(hidden=128, max_k=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = hidden // 4
    return {
        "diffusion_k_head.0.weight": torch.randn(q, hidden, generator=gen),
        "diffusion_k_head.0.bias": torch.randn(q, generator=gen),
        "diffusion_k_head.2.weight": torch.randn(max_k, q, generator=gen),
        "diffusion_k_head.2.bias": torch.randn(max_k, generator=gen),
    }


def test_khead_bin_and_safetensors(tmp_path):
    sd = _khead_state(max_k=12)
    torch.save(sd, tmp_path / "model_head.bin")
    loaded, max_k = load_khead(tmp_path, 128)
    assert max_k == 12 and all(torch.equal(loaded[k], sd[k]) for k in sd)
    sub = tmp_path / "other" / "head"
    sub.mkdir(parents=True)
    save_file(sd, str(sub / "model_head.safetensors"))
    assert find_khead(tmp_path / "other") == str(sub / "model_head.safetensors")
    loaded2, _ = load_khead(tmp_path / "other", 128)
    assert all(torch.equal(loaded2[k], sd[k]) for k in sd)
    with pytest.raises(FileNotFoundError):
        load_khead(tmp_path / "other" / "nothing", 128)


def test_khead_shape_checks(tmp_path):
    torch.save(_khead_state(hidden=128), tmp_path / "model_head.bin")
    with pytest.raises(ValueError, match="model_head.bin.*diffusion_k_head.0.weight"):
        load_khead(tmp_path / "model_head.bin", 256)
    sd = _khead_state()
    sd["diffusion_k_head.2.bias"] = torch.zeros(15)
    torch.save(sd, tmp_path / "model_head.bin")
    with pytest.raises(ValueError, match="diffusion_k_head.2.bias"):
        load_khead(tmp_path, 128)
    sd = _khead_state()
    sd["diffusion_k_head.4.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "model_head.bin")
    with pytest.raises(ValueError, match="unexpected"):
        load_khead(tmp_path, 128)
    sd = _khead_state(max_k=16)
    sd["diffusion_k_head.2.weight"], sd["diffusion_k_head.2.bias"] = torch.zeros(0, 32), torch.zeros(0)
    torch.save(sd, tmp_path / "model_head.bin")
    with pytest.raises(ValueError, match=r"2.weight has shape \(0, 32\), expected \[max_k >= 1"):
        load_khead(tmp_path, 128)


class _Payload:
    """Pickles to a call that creates ``marker`` when unpickled by a full (unsafe) unpickler."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_khead_pickle_payload_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    sd = dict(_khead_state())
    sd["diffusion_k_head.0.bias"] = _Payload(str(marker))
    torch.save(sd, tmp_path / "model_head.bin")
    with pytest.raises(ValueError, match="model_head.bin.*weights_only"):
        load_khead(tmp_path, 128)
    assert not marker.exists(), "the payload ran"
    # Control: the payload is real (an unrestricted load runs it), so the check above can fail.
    control = tmp_path / "control"
    sd["diffusion_k_head.0.bias"] = _Payload(str(control))
    torch.save(sd, tmp_path / "control.bin")
    torch.load(tmp_path / "control.bin", weights_only=False)
    assert control.exists()


def test_khead_forward_matches_sequential():
    sd = _khead_state(hidden=128, max_k=16, seed=3)
    head = KHead(sd)
    ref = torch.nn.Sequential(torch.nn.Linear(128, 32), torch.nn.GELU(), torch.nn.Linear(32, 16))
    ref.load_state_dict({k[len("diffusion_k_head.") :]: v for k, v in sd.items()})
    x = torch.randn(7, 128)
    with torch.no_grad():
        want = ref(x)
    torch.testing.assert_close(head.logits(x), want, rtol=1e-5, atol=1e-5)
    k = head.propose(x)
    assert k.dtype == torch.int32 and torch.equal(k, (want.argmax(-1) + 1).to(torch.int32))


# ---------------------------------------------------------------- FluidConfig / load_model


def test_fluid_config(tmp_path):
    f = FluidConfig.load(tmp_path)
    assert (f.mask_token_id, f.end_of_think_token_id, f.max_k) == (144208, 45982, 16)
    (tmp_path / "fluid.json").write_text(json.dumps({"mask_token_id": 90, "end_of_think_token_id": None}))
    f = FluidConfig.load(tmp_path)
    assert (f.mask_token_id, f.end_of_think_token_id) == (90, None)
    f = FluidConfig.load(tmp_path, mask_token_id=91)
    assert f.mask_token_id == 91
    (tmp_path / "fluid.json").write_text(json.dumps({"mask_id": 90}))
    with pytest.raises(ValueError, match="fluid.json.*mask_id"):
        FluidConfig.load(tmp_path)
    for bad in ({"mask_token_id": "511"}, {"end_of_think_token_id": True}, {"max_k": 0}, [90]):
        (tmp_path / "fluid.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match="fluid.json: "):
            FluidConfig.load(tmp_path)
    with pytest.raises(ValueError, match="mask_token_id must be a non-negative int"):
        FluidConfig.load(None, mask_token_id="511")
    # Another vocabulary: openPangu's ids would be ordinary tokens there, so they are not defaults.
    f = FluidConfig.load(None, pangu_vocabulary=False)
    assert (f.mask_token_id, f.end_of_think_token_id) == (None, None)
    assert FluidConfig.load(None, pangu_vocabulary=False, mask_token_id=7).mask_token_id == 7


def test_load_model_directory(tmp_path):
    _write_ckpt(tmp_path)
    (tmp_path / "head").mkdir()
    torch.save(_khead_state(max_k=8), tmp_path / "head" / "model_head.bin")
    (tmp_path / "fluid.json").write_text(json.dumps({"mask_token_id": 96, "end_of_think_token_id": 95}))
    lm = load_model(tmp_path)
    assert lm.khead is not None and lm.khead.max_k == 8 and lm.fluid.max_k == 8
    assert (lm.fluid.mask_token_id, lm.fluid.end_of_think_token_id) == (96, 95)
    assert lm.tokenizer is None and lm.config.vocab_size == 97
    lm2 = load_model(tmp_path, mask_token_id=3, dtype=torch.bfloat16)
    assert lm2.fluid.mask_token_id == 3 and lm2.model.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="mask_token_id"):
        load_model(tmp_path, mask_token_id=97)
    os.remove(tmp_path / "fluid.json")  # a llama vocabulary: no openPangu defaults
    lm3 = load_model(tmp_path)
    assert (lm3.fluid.mask_token_id, lm3.fluid.end_of_think_token_id) == (None, None)
    (tmp_path / "config.json").write_text(json.dumps(dict(HF_CONFIG, model_type="PanguEmbedded")))
    # defaults: openPangu ids, outside this pangu vocab of 97
    with pytest.warns(UserWarning, match="mask_token_id 144208"):
        lm4 = load_model(tmp_path)
    assert lm4.fluid.end_of_think_token_id is None


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(dtype=torch.int64), "dtype: expected one of float32, bfloat16, float16"),
        (dict(dtype="float64"), "dtype: expected one of"),
        (dict(device="banana"), "device: 'banana' is not a device"),
        (dict(device="meta"), "device: meta: fluid_rt runs on cpu or cuda"),
    ],
)
def test_load_model_rejects_dtype_and_device_up_front(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_model(tmp_path / "does-not-matter", **kwargs)


def test_load_model_dtype_by_name(tmp_path):
    _write_ckpt(tmp_path)
    assert load_model(tmp_path, dtype="bfloat16").model.dtype == torch.bfloat16


def test_load_model_gguf_dispatch(tmp_path, monkeypatch):
    """path=None and *.gguf go through fluid_rt.weights.gguf (stubbed here: it is another module's
    job); the K-head is only loaded when given explicitly."""
    import sys
    import types

    cfg, state = _random_state(HF_CONFIG, seed=4)
    gguf_file = tmp_path / "m.gguf"
    gguf_file.write_bytes(b"")
    seen = []
    fake = types.ModuleType("fluid_rt.weights.gguf")
    fake.default_model_path = lambda: str(gguf_file)

    def load_gguf(path, dtype, quantized=False):
        seen.append((path, dtype, quantized))
        return cfg, dict(state), "TOKENIZER"

    fake.load_gguf = load_gguf
    monkeypatch.setitem(sys.modules, "fluid_rt.weights.gguf", fake)
    torch.save(_khead_state(max_k=5), tmp_path / "k.bin")
    lm = load_model(None, head=str(tmp_path / "k.bin"), mask_token_id=7, dtype=torch.bfloat16)
    assert seen == [(str(gguf_file), torch.bfloat16, True)]  # CPU: quantized matrices by default
    assert lm.tokenizer == "TOKENIZER" and lm.khead.max_k == 5 and lm.path == str(gguf_file)
    lm = load_model(str(gguf_file), mask_token_id=7)
    assert lm.khead is None and lm.fluid.max_k == 16
    load_model(str(gguf_file), mask_token_id=7, weights="float")
    load_model(str(gguf_file), mask_token_id=7, dtype=torch.float16)  # no float16 kernels
    assert [s[2] for s in seen[-3:]] == [True, False, False]
