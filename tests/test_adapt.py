"""fluid_rt.adapt: Stage I layouts (masks, labels, attention bias), the split forward against HF
transformers on the expanded sequence, Stage II labels, and that training lowers the loss."""

import os
import random

import pytest
import torch

from fluid_rt.adapt.layout import collate, draft_bias, insert_masks
from fluid_rt.adapt.model import (
    FrozenBase,
    GatedAdapter,
    draft_hidden,
    draft_logits,
    main_pass,
)
from fluid_rt.adapt.objectives import (
    khead_labels,
    khead_loss,
    new_khead,
    soft_targets,
    stage1_loss,
    stage2_features,
)
from fluid_rt.config import ModelConfig, expected_tensor_shapes

MASK = 3
TINY = dict(
    family="llama",
    vocab_size=97,
    hidden_size=64,
    intermediate_size=96,
    num_layers=2,
    num_heads=2,
    num_kv_heads=1,
    head_dim=32,
    max_position_embeddings=128,
)


def tiny_model(seed=0):
    cfg = ModelConfig(**TINY)
    gen = torch.Generator().manual_seed(seed)
    state = {n: torch.randn(s, generator=gen) * 0.2 for n, s in expected_tensor_shapes(cfg).items()}
    for n in state:
        if "norm" in n:
            state[n] = 1 + 0.1 * state[n]
    return cfg, state


def tiny_adapter(cfg, base, rank=4, seed=1, random_b=False):
    ad = GatedAdapter(cfg, rank, 2 * rank, MASK, base.embed.mean(0), seed=seed)
    if random_b:
        gen = torch.Generator().manual_seed(seed + 7)
        with torch.no_grad():
            for p in ad.B.values():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return ad


def tokens_of(n, seed=0):
    rng = random.Random(seed)
    return [rng.randrange(10, 97) for _ in range(n)]


# -- layouts ---------------------------------------------------------------------------------------
def test_inserted_masks_sit_at_their_slots_with_the_next_tokens_as_labels():
    tokens = tokens_of(30)
    lay = insert_masks(
        tokens, 10, mask_id=MASK, max_k=3, select_prob=1.0, rng=random.Random(0), restore=False
    )
    assert len(lay) > 0 and set(lay.ids) == {MASK}
    # every response token but the last two triggers a block (the last prompt token too)
    assert sorted(set(lay.trigger)) == list(range(9, 28))
    for r in range(len(lay)):
        i, o = lay.trigger[r], lay.offset[r]
        assert lay.positions[r] == i + o
        assert lay.labels[r] == tokens[i + o + 1]  # mask o predicts the token after its slot
    for b in set(lay.block):  # offsets 1..k in order inside a block, k <= max_k
        offs = [lay.offset[r] for r in range(len(lay)) if lay.block[r] == b]
        assert offs == list(range(1, len(offs) + 1)) and len(offs) <= 3


def test_stage2_layout_has_exactly_max_k_masks_per_block():
    tokens = tokens_of(40)
    lay = insert_masks(
        tokens, 5, mask_id=MASK, max_k=4, select_prob=0.5, rng=random.Random(3), restore=False, fixed_k=True
    )
    blocks = {}
    for r in range(len(lay)):
        blocks.setdefault(lay.block[r], []).append(lay.offset[r])
    assert blocks and all(v == [1, 2, 3, 4] for v in blocks.values())


def test_restoration_puts_true_tokens_mostly_and_keeps_labels():
    tokens = tokens_of(200, seed=2)
    lay = insert_masks(
        tokens,
        1,
        mask_id=MASK,
        max_k=4,
        select_prob=1.0,
        rng=random.Random(5),
        restore=True,
        vocab_size=97,
        special_ids=frozenset({0, 1, 2}),
    )
    restored = [r for r in range(len(lay)) if lay.ids[r] != MASK]
    true = [r for r in restored if lay.ids[r] == tokens[lay.positions[r]]]
    assert 0.2 < len(restored) / len(lay) < 0.8  # r ~ U(0,1) per block: about half
    assert 0.8 < len(true) / len(restored) <= 1.0  # 90% true tokens, 10% random
    assert all(lay.ids[r] not in (0, 1, 2, MASK) for r in restored)
    assert all(lay.labels[r] == tokens[lay.positions[r] + 1] for r in range(len(lay)))


def brute_force_expanded(tokens_len, lay):
    """The spec's expanded sequence (main tokens, each selected x_i followed by its block) and its
    L x L attention rule, written out element by element. Returns (order, allowed): order[e] is
    ('main', i) or ('draft', r)."""
    order = []
    rows_by_trigger = {}
    for r in range(len(lay)):
        rows_by_trigger.setdefault(lay.trigger[r], []).append(r)
    for i in range(tokens_len):
        order.append(("main", i))
        order += [("draft", r) for r in rows_by_trigger.get(i, [])]
    n = len(order)
    allowed = [[False] * n for _ in range(n)]
    for a, (ka, ia) in enumerate(order):
        for c, (kc, ic) in enumerate(order[: a + 1]):  # causal over the expanded sequence
            if ka == "main":
                allowed[a][c] = kc == "main"  # a main token never sees a mask
            elif kc == "main":
                allowed[a][c] = ic <= lay.trigger[ia]
            else:  # masks of its own block at or before it
                allowed[a][c] = lay.block[ic] == lay.block[ia]
    return order, allowed


def test_draft_bias_equals_the_brute_force_expanded_mask():
    tokens = tokens_of(24, seed=4)
    lay = insert_masks(
        tokens, 6, mask_id=MASK, max_k=4, select_prob=0.5, rng=random.Random(9), restore=True, vocab_size=97
    )
    batch = collate(
        [tokens, tokens[:20]],
        [lay, insert_masks(tokens[:20], 4, mask_id=MASK, max_k=2, select_prob=0.3, rng=random.Random(1))],
        pad_id=0,
    )
    L = batch.main_ids.shape[1]
    bias = draft_bias(batch.trigger, batch.block, batch.positions, batch.valid, L)
    order, allowed = brute_force_expanded(len(tokens), lay)
    where = {item: e for e, item in enumerate(order)}
    R = len(lay)
    for r in range(R):
        row = allowed[where[("draft", r)]]
        want = [row[where[("main", i)]] for i in range(L)] + [row[where[("draft", q)]] for q in range(R)]
        want += [False] * (bias.shape[-1] - L - R)
        got = (bias[0, 0, r] == 0).tolist()
        assert got == want, r
    # the main rows of the expanded sequence are plain causal over the main tokens: the reason
    # the frozen base can run them alone
    for i in range(len(tokens)):
        row = allowed[where[("main", i)]]
        assert [row[where[("main", j)]] for j in range(len(tokens))] == [j <= i for j in range(len(tokens))]
        assert not any(row[where[("draft", q)]] for q in range(R))


def test_split_forward_equals_hf_on_the_expanded_sequence():
    """The draft rows' logits (main K/V from the base pass, draft rows over them) equal HF
    transformers' Llama on the spec's expanded sequence with its 4D mask and position ids, the
    mask embedding fed as input embeddings (LoRA B = 0 at the start of training)."""
    transformers = pytest.importorskip("transformers")
    cfg, state = tiny_model(seed=3)
    base = FrozenBase(cfg, state)
    ad = tiny_adapter(cfg, base)
    tokens = tokens_of(20, seed=6)
    lay = insert_masks(
        tokens, 5, mask_id=MASK, max_k=3, select_prob=0.6, rng=random.Random(2), restore=True, vocab_size=97
    )
    batch = collate([tokens], [lay], pad_id=0)
    kv, _ = main_pass(base, batch.main_ids)
    bias = draft_bias(batch.trigger, batch.block, batch.positions, batch.valid, len(tokens))
    with torch.no_grad():
        ours = draft_logits(base, draft_hidden(base, ad, batch.ids, batch.positions, bias, kv))[0]

    hf_cfg = transformers.LlamaConfig(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
    )
    hf = transformers.LlamaForCausalLM(hf_cfg).eval()
    hf.load_state_dict(state, strict=False)
    order, allowed = brute_force_expanded(len(tokens), lay)
    ids = [tokens[i] if k == "main" else lay.ids[i] for k, i in order]
    pos = [i if k == "main" else lay.positions[i] for k, i in order]
    emb = hf.model.embed_tokens(torch.tensor([ids]))
    is_mask = torch.tensor([[k == "draft" and lay.ids[i] == MASK for k, i in order]])
    emb = torch.where(is_mask[..., None], ad.mask_embedding.detach(), emb)
    mask4d = torch.zeros(1, 1, len(order), len(order))
    mask4d.masked_fill_(~torch.tensor(allowed), float("-inf"))
    with torch.no_grad():
        out = hf(inputs_embeds=emb, attention_mask=mask4d, position_ids=torch.tensor([pos])).logits[0]
    draft_slots = [e for e, (k, _) in enumerate(order) if k == "draft"]
    torch.testing.assert_close(ours, out[draft_slots], atol=2e-4, rtol=2e-4)


# -- Stage II --------------------------------------------------------------------------------------
def test_khead_label_rule_matches_a_direct_reading():
    gen = torch.Generator().manual_seed(0)
    ce = torch.rand(200, 6, generator=gen) * 5
    got = khead_labels(ce, threshold=2.8)
    for n in range(ce.shape[0]):
        want = 1
        for k in range(1, 7):
            if ce[n, :k].mean() < 2.8:
                want = k
        assert got[n] == want
    assert khead_labels(torch.full((1, 4), 9.0)).item() == 1  # none below: the default 1
    assert khead_labels(torch.tensor([[0.1, 9.0, 0.1, 0.1]])).item() == 4  # prefix mean 2.35


def test_soft_targets_are_a_normalised_gaussian_around_k_star():
    t = soft_targets(torch.tensor([1, 3, 6]), 6, sigma=1.5)
    torch.testing.assert_close(t.sum(-1), torch.ones(3))
    assert t.argmax(-1).tolist() == [0, 2, 5]
    c = torch.arange(6.0)
    want = torch.exp(-0.5 * ((c - 2) / 1.5) ** 2)
    torch.testing.assert_close(t[1], want / want.sum())


def test_stage2_features_and_head_training():
    cfg, state = tiny_model()
    base = FrozenBase(cfg, state)
    ad = tiny_adapter(cfg, base)
    tokens = tokens_of(30)
    lay = insert_masks(
        tokens, 5, mask_id=MASK, max_k=3, select_prob=0.5, rng=random.Random(0), restore=False, fixed_k=True
    )
    batch = collate([tokens], [lay], pad_id=0)
    h, ce = stage2_features(base, ad, batch, 3)
    blocks = len(set(lay.block))
    assert h.shape == (blocks, 64) and ce.shape == (blocks, 3)
    _, main_h = main_pass(base, batch.main_ids)
    first_trigger = lay.trigger[0]
    torch.testing.assert_close(h[0], main_h[0, first_trigger])
    head = new_khead(64, 3)
    targets = soft_targets(khead_labels(ce), 3)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    before = khead_loss(head(h), targets).item()
    for _ in range(50):
        loss = khead_loss(head(h), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < before


# -- Stage I training --------------------------------------------------------------------------------
def test_training_steps_lower_the_loss_on_a_fixed_batch():
    cfg, state = tiny_model(seed=5)
    base = FrozenBase(cfg, state)
    ad = tiny_adapter(cfg, base)
    seqs = [tokens_of(24, seed=s) for s in range(3)]
    lays = [
        insert_masks(s, 6, mask_id=MASK, max_k=3, select_prob=0.5, rng=random.Random(n), vocab_size=97)
        for n, s in enumerate(seqs)
    ]
    batch = collate(seqs, lays, pad_id=0)
    opt = torch.optim.Adam(ad.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = stage1_loss(base, ad, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1
    # only the adapter learns: the base weights have no gradients to take
    assert all(p.grad is not None for p in ad.parameters())


# -- the command -------------------------------------------------------------------------------------
def test_adapt_command_trains_checkpoints_resumes_and_reports(tmp_path, capsys):
    """``fluid-rt adapt`` end to end on a tiny checkpoint with given (self-distilled) data: an
    adapter directory with a K-head, a checkpoint that ``--resume`` continues from, and a report
    whose elastic tokens equal the base model's greedy answers."""
    import json

    from safetensors.torch import save_file

    from fluid_rt.adapter import read_adapter
    from fluid_rt.cli import main
    from fluid_rt.decode import DecodeConfig, Decoder
    from fluid_rt.loader import load_model

    _, state = tiny_model(seed=2)
    hf = {
        "model_type": "llama",
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
        "eos_token_id": 2,
    }
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps(hf))
    save_file(state, str(base / "model.safetensors"))
    lm = load_model(str(base))
    prompts = [tokens_of(6 + n, seed=n) for n in range(6)]
    gens, _ = Decoder(lm.model).generate(prompts, DecodeConfig(mode="ar", max_new_tokens=16))
    data = tmp_path / "out" / "data"
    data.mkdir(parents=True)
    lines = [
        json.dumps({"kind": "k", "prompt": str(n), "prompt_ids": p, "answer_ids": g.tokens})
        for n, (p, g) in enumerate(zip(prompts, gens))
    ]
    (data / "train.jsonl").write_text("\n".join(lines[:4]) + "\n")
    (data / "held_out.jsonl").write_text("\n".join(lines[4:]) + "\n")
    args = [
        "adapt",
        "--model",
        str(base),
        "--out",
        str(tmp_path / "out"),
        "--skip-distill",
        "--mask-token-id",
        str(MASK),
        "--max-k",
        "3",
        "--rank",
        "4",
        "--batch-size",
        "2",
        "--stage2-samples",
        "4",
        "--report-prompts",
        "2",
        "--checkpoint-every",
        "0",
        "--no-bf16",
    ]
    assert main(args + ["--steps", "3"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["steps"] == 3 and report["sequences_differing_from_ar"] == 0
    assert report["tokens_per_forward"] > 0
    meta, _ = read_adapter(str(tmp_path / "out" / "adapter"))
    assert meta["has_khead"] and meta["max_k"] == 3 and meta["mask_token_id"] == MASK
    assert meta["training"]["steps_done"] == 3
    assert main(args + ["--steps", "5", "--resume"]) == 0
    out = capsys.readouterr().out
    assert "checkpoint of step 3 loaded" in out
    assert json.loads(out[out.index("{") :])["steps"] == 5
    # an adapter directory without optimizer state (e.g. the shipped one) resumes at its step
    os.remove(tmp_path / "out" / "checkpoint" / "trainer.pt")
    assert main(args + ["--steps", "6", "--resume"]) == 0
    assert "checkpoint of step 5 loaded" in capsys.readouterr().out


def test_second_round_prompts_leave_the_held_out_set_alone_and_never_name_its_topics():
    """The extra training prompts (``extra_topics``) are appended after the first round's, change
    neither those nor the held-out set (whose prompts the shipped adapter's numbers are measured
    on), repeat no prompt, and share no topic or sum with a held-out prompt."""
    import re

    from fluid_rt.adapt import prompts

    first, held_first = prompts.build_prompts()
    train, held = prompts.build_prompts(extra=True)
    assert held == held_first and train[: len(first)] == first and len(train) > 2 * len(first)
    assert len({p.text for p in train}) == len(train)
    assert not {p.text for p in train} & {p.text for p in held}

    extra = train[len(first) :]
    held_text = " ".join(p.text.lower() for p in held)
    for kind, topics in prompts.EXTRA_TOPICS.items():
        for t in topics:
            asks = {tpl.format(t=t) for tpl in prompts.EXTRA_TEMPLATES[kind]}
            used = any(p.text in asks for p in extra)
            # A topic is dropped exactly when it names (or is named by) a held-out topic.
            named = any(h in t.lower() or t.lower() in h for h in _held_topics(prompts))
            assert used != named, (kind, t)
            if used:
                assert t.lower() not in held_text, (kind, t)

    def numbers(text):
        return sorted(re.findall(r"\d+", text))

    held_sums = {tuple(numbers(p.text)) for p in held if p.kind == "arithmetic"}
    extra_sums = [tuple(numbers(p.text)) for p in extra if p.kind == "arithmetic"]
    assert extra_sums and not set(extra_sums) & held_sums


def _held_topics(prompts):
    """The held-out topics (words), recovered the way build_prompts splits them."""
    rng = random.Random(0)
    out = set()
    for kind in prompts.KINDS:
        topics = list(prompts._TOPICS[kind]) or prompts._arithmetic_topics(rng, 60)
        rng.shuffle(topics)
        if prompts._TOPICS[kind]:
            out.update(t.lower() for t in topics[: max(1, int(len(topics) * 0.2))])
    return out
