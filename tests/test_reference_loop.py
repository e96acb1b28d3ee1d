"""benchmarks/reference_loop.py (the HF-transformers FLUID reference loop) against the golden cases.

The golden cases were produced by an independent float64 implementation of the reference; replayed in
float32 they give the same tokens and traces. The baseline must reproduce the reference itself,
overshoot past max_new_tokens included, so everything is compared exactly: all tokens, every block of
the trace, and the forward count.
"""

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from benchmarks.reference_loop import load_hf_fluid_model, reference_generate

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "golden")
with open(os.path.join(GOLDEN, "cases.json")) as f:
    CASES = json.load(f)["cases"]
MODELS = sorted({c["model"] for c in CASES})


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny models: thread start-up dominates, and the machine is shared.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def models():
    return {m: load_hf_fluid_model(os.path.join(GOLDEN, m), torch.float32) for m in MODELS}


def _case_id(c):
    return (
        f"{c['model']}-p{len(c['prompt'])}-t{c['threshold']}-b{c['block_size']}"
        f"-{'remask' if c['remask'] else 'noremask'}-eos{c['eos_token_id']}"
    )


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_golden_case(models, case):
    model, khead = models[case["model"]]
    res = reference_generate(
        model,
        khead,
        case["prompt"],
        mask_token_id=case["mask_token_id"],
        eos_token_id=case["eos_token_id"],
        threshold=case["threshold"],
        block_size=case["block_size"],
        min_block=case["min_block"],
        remask=case["remask"],
        max_new_tokens=case["max_new_tokens"],
    )
    assert res["tokens"] == case["expected_tokens"]
    assert res["trace"] == case["trace"]
    assert res["forwards"] == case["reference_forwards"]
    # The cost model the benchmarks rely on.
    tr = res["trace"]
    extra = sum(b["mismatch"] is not None for b in tr) if case["remask"] else 0
    assert res["forwards"] == 1 + sum(b["draft_passes"] for b in tr) + len(tr) + extra
    if not case["remask"]:
        assert all(b["mismatch"] is None for b in tr)


def _greedy(model, prompt, n):
    """Plain greedy AR decoding, full recompute each step (no cache): an independent reference."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1]
            ids.append(int(logits.argmax()))
    return ids[len(prompt) :]


@pytest.mark.parametrize("model_name", MODELS)
def test_remask_equals_greedy(models, model_name):
    """With remask every committed token is the greedy argmax (spec): check it against HF greedy."""
    model, khead = models[model_name]
    cases = [c for c in CASES if c["model"] == model_name and c["remask"] and c["eos_token_id"] is None]
    prompts = {tuple(c["prompt"]) for c in cases}
    assert prompts
    for prompt in sorted(prompts):
        n = max(c["max_new_tokens"] for c in cases if tuple(c["prompt"]) == prompt)
        greedy = _greedy(model, prompt, n)
        for c in cases:
            if tuple(c["prompt"]) != prompt:
                continue
            res = reference_generate(
                model,
                khead,
                c["prompt"],
                mask_token_id=c["mask_token_id"],
                threshold=c["threshold"],
                block_size=c["block_size"],
                min_block=c["min_block"],
                remask=True,
                max_new_tokens=c["max_new_tokens"],
            )
            m = c["max_new_tokens"]
            assert res["tokens"][:m] == greedy[:m]


@pytest.mark.parametrize("model_name", MODELS)
def test_loader_maps_every_tensor(models, model_name):
    """Every checkpoint tensor lands in the HF model unchanged (Pangu: o_proj bias too) and the
    K-head is Linear(H, H//4) -> GELU -> Linear(H//4, 16)."""
    model, khead = models[model_name]
    ckpt = load_file(os.path.join(GOLDEN, model_name, "model.safetensors"))
    sd = model.state_dict()
    for name, t in ckpt.items():
        if name.endswith("rotary_emb.inv_freq"):
            continue
        assert name in sd, name
        torch.testing.assert_close(sd[name], t, rtol=0, atol=0)
    assert set(k for k in sd if k in ckpt) == set(k for k in ckpt if not k.endswith("inv_freq"))
    if model_name == "pangu-tiny":
        assert model.model.layers[0].self_attn.o_proj.bias is not None
    H = model.config.hidden_size
    assert [type(m).__name__ for m in khead] == ["Linear", "GELU", "Linear"]
    assert khead[0].weight.shape == (H // 4, H) and khead[2].weight.shape[0] == 16
    raw = torch.load(os.path.join(GOLDEN, model_name, "model_head.bin"), weights_only=True)
    torch.testing.assert_close(khead[2].bias, raw["diffusion_k_head.2.bias"], rtol=0, atol=0)


def test_rejects_bad_arguments(models):
    model, khead = models[MODELS[0]]
    with pytest.raises(ValueError, match="prompt_ids"):
        reference_generate(model, khead, [], mask_token_id=5)
    with pytest.raises(ValueError, match="min_block"):
        reference_generate(model, khead, [3], mask_token_id=5, min_block=8, block_size=4)


def test_random_model_generator(tmp_path):
    """benchmarks/make_random_model.py: a small instance is deterministic for a seed, loads as a
    Pangu checkpoint, its K-head proposes a spread of K >= 4, and the reference loop runs on it."""
    from benchmarks.make_random_model import write_model

    kw = dict(layers=2, hidden=64, heads=4, kv_heads=2, intermediate=96, vocab=300, seed=3)
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    write_model(str(a), **kw)
    write_model(str(b), **kw)
    write_model(str(c), **dict(kw, seed=4))
    sa, sb, sc = (load_file(str(d / "model.safetensors")) for d in (a, b, c))
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["lm_head.weight"], sc["lm_head.weight"])
    with open(a / "config.json") as f:
        cfg = json.load(f)
    with open(a / "fluid.json") as f:
        fluid = json.load(f)
    assert cfg["model_type"] == "PanguEmbedded" and cfg["bias"] is True
    assert fluid == {"mask_token_id": 299, "max_k": 16, "end_of_think_token_id": None}
    assert sa["model.layers.1.self_attn.o_proj.bias"].shape == (64,)
    assert all(t.dtype == torch.float32 for t in sa.values())

    model, khead = load_hf_fluid_model(str(a), torch.float32)
    assert khead[2].weight.shape == (16, 64 // 4)
    res = reference_generate(model, khead, [5, 17, 42, 7], mask_token_id=299, max_new_tokens=48)
    assert len(res["tokens"]) >= 48 and 299 not in res["tokens"]
    assert all(4 <= b["K"] <= 16 for b in res["trace"])
    ids = torch.randint(0, 299, (1, 200), generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        ks = khead(model.model(input_ids=ids).last_hidden_state[0]).argmax(-1) + 1
    assert ks.min() >= 4 and len(set(ks.tolist())) >= 4
