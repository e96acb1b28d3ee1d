"""The CPU decode step (ops.elastic_step) against the Python phases it stands for, and its K-head
(ops.khead_logits) against a float64 reference."""

import os

import pytest
import torch
from conftest import GOLDEN_DIR
from test_decode import CASES, MODELS, case_config, golden  # noqa: F401  (golden: a fixture)

from fluid_rt import ops
from fluid_rt.decode import DecodeConfig, Decoder
from fluid_rt.decode.batch import Batch
from fluid_rt.decode.runner import StepRunner
from fluid_rt.khead import KHead
from fluid_rt.loader import load_model


def _khead(hidden=50, inner=13, max_k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    sd = {
        "0.weight": torch.randn(inner, hidden, generator=g) * 0.3,
        "0.bias": torch.randn(inner, generator=g),
        "2.weight": torch.randn(max_k, inner, generator=g) * 0.3,
        "2.bias": torch.randn(max_k, generator=g),
    }
    return sd, KHead(sd)


def test_khead_logits_match_float64():
    sd, head = _khead()
    h = torch.randn(7, 50)
    d = {k: v.double() for k, v in sd.items()}
    mid = torch.nn.functional.gelu(h.double() @ d["0.weight"].T + d["0.bias"])
    want = mid @ d["2.weight"].T + d["2.bias"]
    got = ops.khead_logits(h, *head.op_weights)
    assert got.dtype == torch.float32 and got.shape == (7, 5)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    # KHead on the CPU is this op (the decode step's K-head), for any leading dims.
    assert torch.equal(head.logits(h.view(7, 1, 50)), got.view(7, 1, 5))


def test_khead_logits_reject_bad_arguments():
    _, head = _khead()
    w1_t, b1, w2_t, b2 = head.op_weights
    with pytest.raises(ValueError, match="hidden"):
        ops.khead_logits(torch.randn(3, 49), w1_t, b1, w2_t, b2)
    with pytest.raises(ValueError, match="b2"):
        ops.khead_logits(torch.randn(3, 50), w1_t, b1, w2_t, b2[:-1])
    with pytest.raises(ValueError, match="hidden"):
        ops.khead_logits(torch.randn(3, 50).double(), w1_t, b1, w2_t, b2)
    with pytest.raises(ValueError, match="w1_t"):
        ops.khead_logits(torch.randn(3, 50), w1_t.t(), b1, w2_t, b2)


def _decode(loaded, prompts, cfgs, mask, fused, monkeypatch):
    with monkeypatch.context() as m:
        if not fused:
            m.setattr(StepRunner, "fuses", lambda self, b: False)
        dec = Decoder(loaded.model, khead=loaded.khead, mask_token_id=mask)
        return dec.generate(prompts, cfgs)


POLICIES = [
    {"horizon": "khead"},
    {"horizon": "entropy", "entropy_low": 0.5, "entropy_high": 2.5},
    {"horizon": "fixed"},
    {"horizon": "khead", "commit": "entropy", "threshold": 1.5},
    {"horizon": "entropy", "commit": "entropy", "threshold": 0.7, "entropy_low": 0.0, "entropy_high": 4.0},
]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: "-".join(str(v) for v in p.values()))
def test_fused_step_equals_the_phases(golden, monkeypatch, model, policy):  # noqa: F811
    """Every golden case of a model in one batch (prompts, block sizes, thresholds, remask, budgets
    and EOS ids differ per row), under each horizon and commit policy: the one-op step gives the
    tokens, traces, stop reasons and forward counts of the Python phases."""
    cases = [c for c in CASES if c["model"] == model]
    cfgs = [case_config(c, **policy) for c in cases]  # each case's own threshold unless the policy sets one
    prompts = [c["prompt"] for c in cases]
    mask = cases[0]["mask_token_id"]
    want, want_stats = _decode(golden[model], prompts, cfgs, mask, False, monkeypatch)
    got, got_stats = _decode(golden[model], prompts, cfgs, mask, True, monkeypatch)
    assert [g.tokens for g in got] == [g.tokens for g in want]
    assert [g.trace for g in got] == [g.trace for g in want]
    assert [(g.stop_reason, g.forwards) for g in got] == [(g.stop_reason, g.forwards) for g in want]
    assert got_stats.forwards == want_stats.forwards


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("policy", POLICIES[:3], ids=lambda p: p["horizon"])
def test_fused_step_leaves_the_phases_state(golden, monkeypatch, model, policy):  # noqa: F811
    """At every step of a batch decode, the op and the Python phases, run on copies of the same
    state and outputs, leave the same batch tensors bit for bit (lse_sum: the same finiteness)."""
    from fluid_rt.decode import phases

    advance, steps = phases.advance, []

    def both(b, logits, hidden, reuse_prefix, fused=False):
        before = b.snapshot()
        advance(b, logits, hidden, reuse_prefix, fused=False)
        want = b.snapshot()
        b.restore(before)
        advance(b, logits, hidden, reuse_prefix, fused=True)
        got = b.snapshot()
        for name in want:
            if name == "lse_sum":
                assert torch.equal(got[name].isfinite(), want[name].isfinite())
            elif name != "host":  # written by the op only
                assert torch.equal(got[name], want[name]), name
        steps.append(b.rows)

    monkeypatch.setattr(phases, "advance", both)
    cases = [c for c in CASES if c["model"] == model]
    cfgs = [case_config(c, **policy) for c in cases]
    _decode(golden[model], [c["prompt"] for c in cases], cfgs, cases[0]["mask_token_id"], True, monkeypatch)
    assert len(steps) > 3


def test_a_khead_beyond_the_op_bounds_stays_on_torch():
    """A K-head wider than khead_logits takes (max_k > 64) still works, through torch."""
    sd, _ = _khead(hidden=20, inner=6, max_k=ops.KHEAD_MAX_K + 1)
    head = KHead(sd)
    assert head.op_weights is None
    h = torch.randn(3, 20)
    want = torch.nn.functional.gelu(h @ sd["0.weight"].T + sd["0.bias"]) @ sd["2.weight"].T + sd["2.bias"]
    torch.testing.assert_close(head.logits(h), want)
    assert head.propose(h).shape == (3,)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("mode", ["elastic", "ar"])
def test_packed_host_read_equals_the_tensor_read(golden, monkeypatch, model, mode):  # noqa: F811
    """Every step of a batch: the host row the step op packs (trace records, out_len, done, the
    next eager widths, lse_sum's bits) equals what read_host gathers from the batch tensors; AR
    decoding with ops.ar_step gives the tokens of the phases' commit_ar."""
    from fluid_rt.decode import decoder

    cases = [c for c in CASES if c["model"] == model]
    cfgs = [case_config(c, mode=mode) for c in cases]
    prompts, mask = [c["prompt"] for c in cases], cases[0]["mask_token_id"]
    reads = []

    def both(b, trim, packed=False):
        rows = decoder_read(b, trim, packed)
        if packed:
            assert rows == decoder_read(b, trim, False)
            reads.append(len(rows))
        return rows

    decoder_read = decoder.read_host
    monkeypatch.setattr(decoder, "read_host", both)
    got, got_stats = _decode(golden[model], prompts, cfgs, mask, True, monkeypatch)
    assert len(reads) == got_stats.forwards  # every step, the prefill's too
    monkeypatch.setattr(decoder, "read_host", decoder_read)
    want, want_stats = _decode(golden[model], prompts, cfgs, mask, False, monkeypatch)
    assert [(g.tokens, g.stop_reason, g.forwards) for g in got] == [
        (g.tokens, g.stop_reason, g.forwards) for g in want
    ]


def test_fused_step_with_bfloat16_hidden_states(monkeypatch):
    """A bfloat16 model: the step reads bfloat16 outputs (entropy horizon; a bfloat16 K-head stays
    on the phases, see phases.can_fuse)."""
    case = CASES[0]
    loaded = load_model(
        os.path.join(GOLDEN_DIR, case["model"]), mask_token_id=case["mask_token_id"], dtype=torch.bfloat16
    )
    cfg = case_config(case, horizon="entropy")
    want, _ = _decode(loaded, [case["prompt"]], cfg, case["mask_token_id"], False, monkeypatch)
    got, _ = _decode(loaded, [case["prompt"]], cfg, case["mask_token_id"], True, monkeypatch)
    assert got[0].tokens == want[0].tokens and got[0].trace == want[0].trace


def _step_args(rows=2, width=4, hidden=8, bs=3):
    """A batch right after its prefill forward (every row restarting) and that forward's outputs."""
    _, head = _khead(hidden=hidden, inner=4, max_k=bs)
    cfgs = [DecodeConfig(mode="elastic", max_new_tokens=6, block_size=bs, min_block=1, threshold=0.4)] * rows
    b = Batch(cfgs, mask_id=5, device="cpu", khead=head)
    b.restart.fill_(True)
    b.pending.copy_(torch.tensor([3, 4])[:rows])
    g = torch.Generator().manual_seed(1)
    stats = (
        torch.randint(0, 9, (rows, width), generator=g),
        torch.rand(rows, width, generator=g),
        torch.rand(rows, width, generator=g) * 3,
        torch.randn(rows, width, generator=g),
    )
    return stats, torch.randn(rows, width, hidden, generator=g), head.op_weights, b


def _op_args(stats, hidden, khead, b, horizon_kind=0):
    w1_t, b1, w2_t, b2 = khead if khead is not None else (None,) * 4
    state = b.step_state()
    return [*stats, hidden, w1_t, b1, w2_t, b2, horizon_kind, 0.5, 3.0, False, True, 5] + [
        state[n] for n in ops.STEP_STATE
    ]


def _ar_args(b):
    state = b.step_state()
    return [torch.tensor([7, 8]), torch.randn(2)] + [state[n] for n in ops.AR_STEP_STATE]


def test_step_opcheck():
    torch.library.opcheck(torch.ops.fluid_rt.elastic_step.default, _op_args(*_step_args()))
    torch.library.opcheck(torch.ops.fluid_rt.ar_step.default, _ar_args(_step_args()[3]))
    _, head = _khead()
    torch.library.opcheck(torch.ops.fluid_rt.khead_logits.default, [torch.randn(3, 50), *head.op_weights])


def test_elastic_step_never_reads_past_its_outputs():
    """A row whose accepted block ends past the forward's outputs (a state the decoder never makes)
    reads its last output, not memory beyond it (it crashed with a large hidden size)."""
    stats, hidden, khead, b = _step_args(rows=1, width=1, hidden=1 << 16, bs=3)
    b.restart.fill_(False)
    b.verifying.fill_(True)
    b.block.fill_(4)
    stats = (torch.full((1, 1), 4), *stats[1:])  # every position predicts the block: accepted
    torch.ops.fluid_rt.elastic_step(*_op_args(stats, hidden, khead, b))
    assert b.out_len.tolist() == [3] and b.horizon.item() in (1, 2, 3)


def test_elastic_step_rejects_bad_arguments():
    stats, hidden, khead, b = _step_args()
    with pytest.raises(ValueError, match="horizon_kind"):
        torch.ops.fluid_rt.elastic_step(*_op_args(stats, hidden, khead, b, horizon_kind=3))
    with pytest.raises(ValueError, match="khead"):
        torch.ops.fluid_rt.elastic_step(*_op_args(stats, hidden, None, b))
    with pytest.raises(ValueError, match="score"):
        torch.ops.fluid_rt.elastic_step(*_op_args((stats[0], stats[1][:, :3], *stats[2:]), hidden, khead, b))
    with pytest.raises(ValueError, match="hidden"):
        torch.ops.fluid_rt.elastic_step(*_op_args(stats, hidden[..., :5], khead, b))
    b.trace.data = torch.zeros(2, 5, 3, dtype=torch.int32)
    with pytest.raises(ValueError, match="trace"):
        torch.ops.fluid_rt.elastic_step(*_op_args(stats, hidden, khead, b))
    b.trace.data = torch.zeros(2, 5, 2, dtype=torch.int32)
    b.host = torch.zeros(2, ops.HOST_FIELDS + 1, dtype=torch.int32)
    with pytest.raises(ValueError, match="host"):
        torch.ops.fluid_rt.elastic_step(*_op_args(stats, hidden, khead, b))
    with pytest.raises(ValueError, match="host"):
        torch.ops.fluid_rt.ar_step(*_ar_args(b))
    stats, hidden, khead, b = _step_args()
    b.out_len[0] = 7  # > budget
    with pytest.raises(ValueError, match="out_len"):
        torch.ops.fluid_rt.ar_step(*_ar_args(b))
    stats, hidden, khead, b = _step_args()
    b.min_block[1] = 4  # > block_size: a state the op refuses before touching any row
    before = {k: v.clone() for k, v in b.step_state().items()}
    with pytest.raises(ValueError, match="min_block"):
        torch.ops.fluid_rt.elastic_step(*_op_args(stats, hidden, khead, b))
    assert all(torch.equal(before[k], v) for k, v in b.step_state().items())
