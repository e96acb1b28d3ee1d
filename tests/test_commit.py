"""Tests of fluid_rt.ops.draft_commit / verify_commit against a plain-Python reference.

The reference below restates DEVELOPERS.md ("draft_commit", "verify_commit") with lists and loops,
independently of the kernels; every mutated tensor is compared exactly.
"""

from __future__ import annotations

import random

import pytest
import torch
from conftest import EMU

import fluid_rt  # noqa: F401  (loads torch.ops.fluid_rt)
from fluid_rt.ops import draft_commit, verify_commit

MASK = 5  # inside the small random vocabulary on purpose: models may predict it
VOCAB = 9


# ----------------------------------------------------------------------------------------------
# Plain-Python reference
# ----------------------------------------------------------------------------------------------


def f32(x: float) -> float:
    """x rounded to float32 (the ops compare scores against the float32 threshold)."""
    return float(torch.tensor(x, dtype=torch.float32).item())


def ref_draft(st: dict, threshold: float, mask: int, is_entropy: bool) -> dict:
    block = [list(r) for r in st["block"]]
    step, drafting = list(st["step"]), list(st["drafting"])
    for b in range(len(block)):
        if not drafting[b]:
            continue
        thr = f32(threshold[b] if isinstance(threshold, list) else threshold)  # per row or shared
        K, s = st["horizon"][b], step[b]
        block[b][s] = st["pred"][b][s]
        jump, run = 0, True
        for j in range(s + 1, K):
            sc = st["score"][b][j]
            conf = sc < thr if is_entropy else sc > thr  # NaN: False either way
            if conf:
                block[b][j] = st["pred"][b][j]
                if run:
                    jump += 1
            else:
                run = False
        step[b] = s + 1 + jump
        # The spec's loop also stops at s >= K (only matters when pred holds the MASK id).
        drafting[b] = any(t == mask for t in block[b][:K]) and step[b] < K
    return {"block": block, "step": step, "drafting": drafting}


def ref_verify(st: dict, eos: list, remask: bool) -> dict:
    out = {k: [list(r) if isinstance(r, list) else r for r in st[k]] for k in VERIFY_MUTATED}
    for b in range(len(st["block"])):
        if not out["verifying"][b] or out["done"][b]:
            continue
        K = st["horizon"][b]
        blk, prd = st["block"][b], st["pred"][b]
        row_eos = eos[b] if eos and isinstance(eos[0], list) else eos  # per row or shared
        f = None
        if remask[b] if isinstance(remask, list) else remask:
            for j in range(K):
                if blk[j] != prd[j]:
                    f = j
                    break
        toks = blk[:K] if f is None else blk[:f] + [prd[f]]
        n, budget, finished = out["out_len"][b], st["budget"][b], False
        for t in toks:
            if n >= budget:
                break
            out["out_tokens"][b][n] = t
            n += 1
            if t in row_eos:
                finished = True
                break
        if n >= budget:
            finished = True
        out["out_len"][b] = n
        out["pending"][b] = toks[-1]
        if finished:
            out["done"][b] = True
        else:
            out["cache_seqlens"][b] += len(toks)
        out["committed"][b] = len(toks)
        out["mismatch"][b] = -1 if f is None else f
        out["verifying"][b] = False
    return out


VERIFY_MUTATED = [
    "verifying",
    "out_tokens",
    "out_len",
    "done",
    "pending",
    "cache_seqlens",
    "committed",
    "mismatch",
]
DTYPES = {
    "block": torch.int64,
    "pred": torch.int64,
    "score": torch.float32,
    "step": torch.int32,
    "horizon": torch.int32,
    "drafting": torch.bool,
    "verifying": torch.bool,
    "eos_ids": torch.int64,
    "out_tokens": torch.int64,
    "out_len": torch.int32,
    "budget": torch.int32,
    "done": torch.bool,
    "pending": torch.int64,
    "cache_seqlens": torch.int32,
    "committed": torch.int32,
    "mismatch": torch.int32,
}


def to_tensors(st: dict, device) -> dict:
    return {
        k: torch.tensor(v, dtype=DTYPES[k], device=device).reshape(st_shape(st, k)) for k, v in st.items()
    }


def st_shape(st, k):
    v = st[k]
    if v and isinstance(v[0], list):
        return (len(v), len(v[0]))
    return (len(v),)


# ----------------------------------------------------------------------------------------------
# Random states
# ----------------------------------------------------------------------------------------------


def random_draft_state(rng: random.Random, B: int, kmax: int, is_entropy: bool):
    thr = rng.choice([0.9, 0.5, 0.3, rng.random(), 0.0, 1.0]) * (3.0 if is_entropy else 1.0)
    st = {"block": [], "step": [], "drafting": [], "pred": [], "score": [], "horizon": []}
    for _ in range(B):
        drafting = rng.random() < 0.75
        K = rng.randint(1, kmax)
        s = rng.randrange(K)
        # Realistic-ish: positions before s filled, MASK or stale tokens after; junk past K.
        row = [rng.randrange(VOCAB) if j < s or rng.random() < 0.3 else MASK for j in range(kmax)]
        for j in range(K, kmax):
            row[j] = rng.choice([MASK, rng.randrange(-3, 100)])
        pred = [rng.randrange(VOCAB) for _ in range(kmax)]
        score = []
        for _ in range(kmax):
            r = rng.random()
            if r < 0.1:
                score.append(f32(thr))  # ties with the threshold: never confident
            elif r < 0.13:
                score.append(float("nan"))
            else:
                score.append(f32(rng.random() * (3.0 if is_entropy else 1.0)))
        if not drafting and rng.random() < 0.5:  # garbage in rows the op must not read
            K, s = rng.choice([0, -2, kmax + 3]), rng.choice([-1, 99])
        st["block"].append(row)
        st["step"].append(s)
        st["drafting"].append(drafting)
        st["pred"].append(pred)
        st["score"].append(score)
        st["horizon"].append(K)
    return st, thr


def random_verify_state(rng: random.Random, B: int, kmax: int, N: int):
    st = {k: [] for k in ["block", "pred", "horizon", "budget"] + VERIFY_MUTATED}
    for _ in range(B):
        K = rng.randint(1, kmax)
        blk = [rng.randrange(VOCAB) for _ in range(kmax)]
        prd = list(blk)
        r = rng.random()
        if r < 0.6:  # one or more mismatches
            for _ in range(rng.randint(1, 3)):
                j = rng.randrange(kmax)
                prd[j] = (prd[j] + rng.randint(1, VOCAB - 1)) % VOCAB
        for j in range(K, kmax):  # past K: anything, never read as tokens
            prd[j] = rng.randrange(-5, 200)
        n = rng.randint(0, N)
        budget = rng.randint(n, N)
        if rng.random() < 0.5:  # a budget that runs out inside the block
            budget = min(N, n + rng.randint(0, K))
        verifying, done = rng.random() < 0.8, rng.random() < 0.2
        if not (verifying and not done) and rng.random() < 0.5:
            K, n, budget = rng.choice([0, kmax + 1]), N + 3, -1  # garbage the op must not read
        st["block"].append(blk)
        st["pred"].append(prd)
        st["horizon"].append(K)
        st["budget"].append(budget)
        st["verifying"].append(verifying)
        st["done"].append(done)
        st["out_tokens"].append([rng.randrange(-1000, -1) for _ in range(N)])  # poison
        st["out_len"].append(n)
        st["pending"].append(rng.randrange(-1000, -1))
        st["cache_seqlens"].append(rng.randrange(0, 5000))
        st["committed"].append(rng.randrange(-1000, -1))
        st["mismatch"].append(rng.randrange(-1000, -2))
    eos = rng.choice([[], [rng.randrange(VOCAB)], rng.sample(range(VOCAB), 2), rng.sample(range(VOCAB), 3)])
    return st, eos


def per_row_params(rng: random.Random, B: int, thr: float, eos: list, remask: bool):
    """Per-row thresholds, EOS sets (with -1 padding) and remask flags, for one batch."""
    thrs = [thr if rng.random() < 0.5 else rng.random() for _ in range(B)]
    eos_rows = [rng.choice([[], eos, [rng.randrange(VOCAB)]]) for _ in range(B)]
    remasks = [rng.random() < 0.6 for _ in range(B)]
    return thrs, eos_rows, remasks


def run_draft(st, thr, is_entropy, device):
    t = to_tensors(st, device)
    if isinstance(thr, list):
        thr = torch.tensor(thr, dtype=torch.float32, device=device)
    draft_commit(
        t["block"], t["step"], t["drafting"], t["pred"], t["score"], t["horizon"], thr, MASK, is_entropy
    )
    return t


def run_verify(st, eos, remask, device):
    t = to_tensors(st, device)
    if eos and isinstance(eos[0], list):  # per row: [B, E] padded with -1
        width = max(1, max(len(e) for e in eos))
        eos_t = torch.tensor([e + [-1] * (width - len(e)) for e in eos], dtype=torch.int64, device=device)
    else:
        eos_t = torch.tensor(eos, dtype=torch.int64, device=device)
    if isinstance(remask, list):
        remask = torch.tensor(remask, dtype=torch.bool, device=device)
    verify_commit(
        t["block"],
        t["pred"],
        t["horizon"],
        t["verifying"],
        eos_t,
        remask,
        t["out_tokens"],
        t["out_len"],
        t["budget"],
        t["done"],
        t["pending"],
        t["cache_seqlens"],
        t["committed"],
        t["mismatch"],
    )
    return t


def check_draft_random(device, seed):
    rng = random.Random(seed)
    for case in range(60):
        is_entropy = case % 2 == 1
        B = rng.choice([1, 2, 3, 7, 33])
        kmax = rng.choice([1, 2, 4, 16, 31, 32, 33, 70])
        st, thr = random_draft_state(rng, B, kmax, is_entropy)
        if case % 4 >= 2:  # every row with its own threshold
            thr = per_row_params(rng, B, thr, [], True)[0]
        want = ref_draft(st, thr, MASK, is_entropy)
        got = run_draft(st, thr, is_entropy, device)
        for k in ["block", "step", "drafting"]:
            assert got[k].cpu().tolist() == want[k], (case, k)
        for k in ["pred", "score", "horizon"]:  # inputs are unchanged (NaN scores included)
            want_in = to_tensors({k: st[k]}, "cpu")[k]
            assert torch.allclose(got[k].cpu(), want_in, rtol=0, atol=0, equal_nan=True), (case, k)


def check_verify_random(device, seed):
    rng = random.Random(seed)
    for case in range(60):
        B = rng.choice([1, 2, 5, 9, 33])
        kmax = rng.choice([1, 3, 16, 31, 32, 33, 70])
        N = rng.choice([0, 1, 5, 40, 100])
        st, eos = random_verify_state(rng, B, kmax, N)
        remask = case % 3 != 2
        if case % 4 >= 2:  # every row with its own EOS set and remask flag
            _, eos, remask = per_row_params(rng, B, 0.5, eos, remask)
        want = ref_verify(st, eos, remask)
        got = run_verify(st, eos, remask, device)
        for k in VERIFY_MUTATED:
            assert got[k].cpu().tolist() == want[k], (case, k)
        for k in ["block", "pred", "horizon", "budget"]:  # inputs are unchanged
            assert got[k].cpu().tolist() == st[k], (case, k)


# ----------------------------------------------------------------------------------------------
# CPU tests
# ----------------------------------------------------------------------------------------------


def test_draft_commit_matches_reference():
    check_draft_random("cpu", 1)


def test_verify_commit_matches_reference():
    check_verify_random("cpu", 2)


def test_draft_commit_doc_example():
    # K = 4, s = 0: position 0 always, 1 confident (run), 2 not (run ends), 3 confident (written).
    block = torch.full((1, 6), MASK, dtype=torch.int64)
    block[0, 5] = 77
    step = torch.zeros(1, dtype=torch.int32)
    drafting = torch.ones(1, dtype=torch.bool)
    pred = torch.tensor([[10, 11, 12, 13, 14, 15]])
    score = torch.tensor([[0.0, 0.95, 0.2, 0.99, 0.99, 0.99]])
    horizon = torch.tensor([4], dtype=torch.int32)
    draft_commit(block, step, drafting, pred, score, horizon, 0.9, MASK)
    assert block.tolist() == [[10, 11, MASK, 13, MASK, 77]]
    assert step.tolist() == [2] and drafting.tolist() == [True]
    draft_commit(block, step, drafting, pred, score, horizon, 0.9, MASK)
    assert block.tolist() == [[10, 11, 12, 13, MASK, 77]]
    assert step.tolist() == [4] and drafting.tolist() == [False]


def test_draft_commit_mask_prediction_ends_draft():
    # The model predicts the MASK id at the last open position: step reaches K, drafting ends.
    block = torch.full((1, 3), MASK, dtype=torch.int64)
    step = torch.tensor([2], dtype=torch.int32)
    block[0, :2] = torch.tensor([1, 2])
    drafting = torch.ones(1, dtype=torch.bool)
    pred = torch.tensor([[1, 2, MASK]])
    score = torch.zeros(1, 3)
    draft_commit(block, step, drafting, pred, score, torch.tensor([3], dtype=torch.int32), 0.9, MASK)
    assert step.tolist() == [3] and drafting.tolist() == [False] and block.tolist() == [[1, 2, MASK]]


def test_verify_commit_doc_example():
    block = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 4]])
    pred = torch.tensor([[1, 2, 9, 9], [1, 2, 9, 9]])
    horizon = torch.tensor([4, 4], dtype=torch.int32)
    verifying = torch.ones(2, dtype=torch.bool)
    out = torch.full((2, 8), -1, dtype=torch.int64)
    out_len = torch.tensor([0, 6], dtype=torch.int32)
    budget = torch.tensor([8, 8], dtype=torch.int32)
    done = torch.zeros(2, dtype=torch.bool)
    pending = torch.full((2,), -1, dtype=torch.int64)
    seqlens = torch.tensor([10, 20], dtype=torch.int32)
    committed = torch.full((2,), -7, dtype=torch.int32)
    mismatch = torch.full((2,), -7, dtype=torch.int32)
    verify_commit(
        block,
        pred,
        horizon,
        verifying,
        torch.tensor([], dtype=torch.int64),
        True,
        out,
        out_len,
        budget,
        done,
        pending,
        seqlens,
        committed,
        mismatch,
    )
    assert out.tolist() == [[1, 2, 9, -1, -1, -1, -1, -1], [-1] * 6 + [1, 2]]
    assert out_len.tolist() == [3, 8] and done.tolist() == [False, True]
    assert pending.tolist() == [9, 9] and seqlens.tolist() == [13, 20]
    assert (
        committed.tolist() == [3, 3] and mismatch.tolist() == [2, 2] and verifying.tolist() == [False, False]
    )


def test_chained_draft_passes_reach_a_full_block():
    """Synthetic model (fixed pred/score per position): loop until no row drafts; spec properties."""
    rng = random.Random(3)
    for case in range(20):
        B, kmax = rng.choice([1, 4, 9]), rng.choice([1, 4, 16, 40])
        is_entropy = case % 2 == 1
        thr = rng.random() * (2.0 if is_entropy else 1.0)
        K = [rng.randint(1, kmax) for _ in range(B)]
        pred = torch.tensor(
            [[rng.choice([t for t in range(VOCAB) if t != MASK]) for _ in range(kmax)] for _ in range(B)]
        )
        score = torch.rand(B, kmax, generator=torch.Generator().manual_seed(case)) * (
            2.0 if is_entropy else 1.0
        )
        block = torch.full((B, kmax), MASK, dtype=torch.int64)
        for b in range(B):
            if K[b] < kmax:
                block[b, -1] = 123  # past K: must survive
        horizon = torch.tensor(K, dtype=torch.int32)
        step = torch.zeros(B, dtype=torch.int32)
        drafting = torch.ones(B, dtype=torch.bool)
        passes = [0] * B
        st = {
            "block": block.tolist(),
            "step": step.tolist(),
            "drafting": drafting.tolist(),
            "pred": pred.tolist(),
            "score": score.tolist(),
            "horizon": K,
        }
        for _ in range(kmax + 1):
            if not drafting.any():
                break
            before_step, before_masks = step.clone(), (block == MASK).sum(1)
            was = drafting.clone()
            draft_commit(block, step, drafting, pred, score, horizon, thr, MASK, is_entropy)
            want = ref_draft(st, thr, MASK, is_entropy)
            assert block.tolist() == want["block"] and step.tolist() == want["step"]
            assert drafting.tolist() == want["drafting"]
            st.update(want)
            for b in range(B):
                if was[b]:
                    passes[b] += 1
                    assert step[b] > before_step[b]  # each pass commits >= 1 position
                    assert (block[b] == MASK).sum() < before_masks[b]
        assert not drafting.any()
        for b in range(B):
            assert passes[b] <= K[b]
            assert not (block[b, : K[b]] == MASK).any()
            assert block[b, : K[b]].tolist() == pred[b, : K[b]].tolist()
            if K[b] < kmax:
                assert block[b, -1] == 123


def _draft_args(device="cpu", B=3, kmax=5):
    block = torch.full((B, kmax), MASK, dtype=torch.int64, device=device)
    step = torch.zeros(B, dtype=torch.int32, device=device)
    drafting = torch.ones(B, dtype=torch.bool, device=device)
    pred = torch.randint(0, VOCAB, (B, kmax), device=device)
    score = torch.rand(B, kmax, device=device)
    horizon = torch.full((B,), kmax, dtype=torch.int32, device=device)
    threshold = torch.full((B,), 0.5, device=device)
    return [block, step, drafting, pred, score, horizon, threshold, MASK, False]


def _verify_args(device="cpu", B=3, kmax=5, N=12):
    block = torch.randint(0, VOCAB, (B, kmax), device=device)
    pred = block.clone()
    pred[0, kmax // 2] = (pred[0, kmax // 2] + 1) % VOCAB
    return [
        block,
        pred,
        torch.full((B,), kmax, dtype=torch.int32, device=device),
        torch.ones(B, dtype=torch.bool, device=device),
        torch.full((B, 1), 3, device=device),
        torch.ones(B, dtype=torch.bool, device=device),
        torch.zeros(B, N, dtype=torch.int64, device=device),
        torch.zeros(B, dtype=torch.int32, device=device),
        torch.full((B,), N, dtype=torch.int32, device=device),
        torch.zeros(B, dtype=torch.bool, device=device),
        torch.zeros(B, dtype=torch.int64, device=device),
        torch.zeros(B, dtype=torch.int32, device=device),
        torch.zeros(B, dtype=torch.int32, device=device),
        torch.zeros(B, dtype=torch.int32, device=device),
    ]


def test_opcheck():
    torch.library.opcheck(torch.ops.fluid_rt.draft_commit.default, _draft_args())
    torch.library.opcheck(torch.ops.fluid_rt.verify_commit.default, _verify_args())
    args = _verify_args()
    args[4] = torch.empty(3, 0, dtype=torch.int64)
    torch.library.opcheck(torch.ops.fluid_rt.verify_commit.default, args)


def _draft_then_verify(
    block,
    step,
    drafting,
    pred,
    score,
    horizon,
    verifying,
    eos,
    out,
    out_len,
    budget,
    done,
    pending,
    seqlens,
    committed,
    mismatch,
):
    draft_commit(block, step, drafting, pred, score, horizon, 0.5, MASK, False)
    verifying.copy_(~drafting)
    verify_commit(
        block,
        pred,
        horizon,
        verifying,
        eos,
        True,
        out,
        out_len,
        budget,
        done,
        pending,
        seqlens,
        committed,
        mismatch,
    )
    return block.sum() + out.sum()


def test_torch_compile_smoke():
    torch.manual_seed(0)
    d = _draft_args(B=4, kmax=6)
    v = _verify_args(B=4, kmax=6)
    d[0][:, 3:] = 1  # some rows finish drafting in one pass
    state = [d[0], d[1], d[2], d[3], d[4], d[5], v[3], v[4], *v[6:]]
    eager = [t.clone() for t in state]
    compiled = torch.compile(_draft_then_verify, backend="aot_eager", fullgraph=True)
    r_c = compiled(*state)
    r_e = _draft_then_verify(*eager)
    assert torch.equal(r_c, r_e)
    for a, b in zip(state, eager):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------------------------
# Argument errors
# ----------------------------------------------------------------------------------------------

DRAFT_NAMES = ["block", "step", "drafting", "pred", "score", "horizon"]
VERIFY_NAMES = [
    "block",
    "pred",
    "horizon",
    "verifying",
    "eos_ids",
    None,
    "out_tokens",
    "out_len",
    "budget",
    "done",
    "pending",
    "cache_seqlens",
    "committed",
    "mismatch",
]


@pytest.mark.parametrize("i", range(6))
def test_draft_errors_name_the_argument(i):
    name = DRAFT_NAMES[i]
    args = _draft_args()
    bad = args[i].to(torch.float64 if args[i].dtype != torch.float64 else torch.int32)
    with pytest.raises(ValueError, match=name):
        draft_commit(*args[:i], bad, *args[i + 1 :])
    args = _draft_args()
    bad = args[i][..., :1] if args[i].dim() == 2 else args[i][:2]
    with pytest.raises(ValueError, match=name if i else "pred|step|drafting"):
        draft_commit(*args[:i], bad.contiguous(), *args[i + 1 :])
    if args[i].dim() == 2:
        args = _draft_args()
        nc = torch.empty(args[i].shape[1], args[i].shape[0], dtype=args[i].dtype).t()
        nc.copy_(args[i])
        with pytest.raises(ValueError, match=name):
            draft_commit(*args[:i], nc, *args[i + 1 :])


@pytest.mark.parametrize("i", [i for i in range(14) if VERIFY_NAMES[i]])
def test_verify_errors_name_the_argument(i):
    name = VERIFY_NAMES[i]
    args = _verify_args()
    bad = args[i].to(torch.float32)
    with pytest.raises(ValueError, match=name):
        verify_commit(*args[:i], bad, *args[i + 1 :])
    if name != "eos_ids":
        args = _verify_args()
        bad = args[i][:2].contiguous()
        with pytest.raises(ValueError, match=name if i else "pred"):
            verify_commit(*args[:i], bad, *args[i + 1 :])


def test_overlap_errors():
    args = _draft_args()
    step_and_horizon = torch.zeros(3, dtype=torch.int32)
    args[1] = step_and_horizon
    args[5] = step_and_horizon
    with pytest.raises(ValueError, match="step and horizon"):
        draft_commit(*args)
    args = _draft_args()
    args[3] = args[0]  # pred aliasing the mutated block
    with pytest.raises(ValueError, match="block and pred"):
        draft_commit(*args)
    args = _verify_args()
    both = torch.zeros(6, dtype=torch.int32)
    args[12], args[13] = both[:3], both[3:]  # disjoint views of one storage: fine
    verify_commit(*args)
    args = _verify_args()
    args[12], args[13] = both[:3], both[2:5]
    with pytest.raises(ValueError, match="committed and mismatch"):
        verify_commit(*args)
    args = _verify_args()
    args[1] = args[0]  # block == pred: both read only, allowed (never a mismatch)
    verify_commit(*args)
    assert args[13].tolist() == [-1, -1, -1]


def test_value_errors_on_cpu():
    args = _draft_args()
    args[5][1] = 0
    with pytest.raises(ValueError, match="horizon"):
        draft_commit(*args)
    args = _draft_args()
    args[5][1] = 6
    with pytest.raises(ValueError, match="horizon"):
        draft_commit(*args)
    args = _draft_args()
    args[1][2] = 5  # step == K
    with pytest.raises(ValueError, match="step"):
        draft_commit(*args)
    args = _draft_args()
    args[1][2] = -1
    with pytest.raises(ValueError, match="step"):
        draft_commit(*args)
    args = _draft_args()
    args[1][2], args[2][2] = 99, False  # not drafting: not read, not checked
    draft_commit(*args)
    args = _verify_args()
    args[7][0] = 13  # out_len > budget
    with pytest.raises(ValueError, match="out_len"):
        verify_commit(*args)
    args = _verify_args()
    args[8][0] = 13  # budget > N
    with pytest.raises(ValueError, match="budget"):
        verify_commit(*args)
    args = _verify_args()
    args[2][0] = 0
    with pytest.raises(ValueError, match="horizon"):
        verify_commit(*args)
    args = _verify_args()
    args[2][0], args[9][0] = 0, True  # done row: not read, not checked
    verify_commit(*args)


def test_fuzz_malformed_calls_never_crash():
    rng = random.Random(1234)
    gen = torch.Generator().manual_seed(1234)
    dtypes = [torch.int64, torch.int32, torch.bool, torch.float32, torch.float16]

    def mangle(t):
        r = rng.random()
        if not isinstance(t, torch.Tensor):
            return rng.choice([t, None, "x", 1.5, -1, 2**40]) if r < 0.3 else t
        if r < 0.15:
            return t.to(rng.choice(dtypes))
        if r < 0.3:
            shape = [max(0, s + rng.randint(-2, 2)) for s in t.shape] + ([2] if rng.random() < 0.2 else [])
            return torch.randint(-3, 12, shape, generator=gen).to(t.dtype)
        if r < 0.4 and t.dim() == 2 and t.shape[1] > 1:
            return t[:, ::2]
        if r < 0.55 and t.dtype in (torch.int32, torch.int64):
            return torch.randint(-5, 40, t.shape, generator=gen).to(t.dtype)
        if r < 0.6:
            return t[:0]
        return t

    for trial in range(300):
        is_draft = trial % 2 == 0
        base = (
            _draft_args(B=rng.randint(1, 4), kmax=rng.randint(1, 6))
            if is_draft
            else _verify_args(B=rng.randint(1, 4), kmax=rng.randint(1, 6), N=rng.randint(0, 9))
        )
        args = [mangle(a) for a in base]
        if rng.random() < 0.1:  # aliasing
            i, j = rng.sample(range(len(args)), 2)
            if isinstance(args[i], torch.Tensor):
                args[j] = args[i]
        op = draft_commit if is_draft else verify_commit
        try:
            op(*args)
        except (ValueError, RuntimeError, TypeError):
            pass


# ----------------------------------------------------------------------------------------------
# CUDA tests (same reference)
# ----------------------------------------------------------------------------------------------


@pytest.mark.cuda
def test_cuda_draft_commit_matches_reference():
    check_draft_random("cuda", 11)


@pytest.mark.cuda
def test_cuda_verify_commit_matches_reference():
    check_verify_random("cuda", 12)


# The CUDA kernels under the CPU emulator (torch.ops.fluid_rt_emu, tests/conftest.py).
@pytest.mark.emu
def test_emu_draft_commit_matches_reference():
    check_draft_random("cpu", 13)


@pytest.mark.emu
def test_emu_verify_commit_matches_reference():
    check_verify_random("cpu", 14)


@pytest.mark.cuda
def test_cuda_opcheck():
    torch.library.opcheck(torch.ops.fluid_rt.draft_commit.default, _draft_args("cuda"))
    torch.library.opcheck(torch.ops.fluid_rt.verify_commit.default, _verify_args("cuda"))


@pytest.mark.cuda
def test_cuda_device_mismatch_raises():
    args = _draft_args("cuda")
    args[4] = args[4].cpu()
    with pytest.raises(RuntimeError, match="score"):
        draft_commit(*args)
    args = _verify_args("cuda")
    args[4] = args[4].cpu()
    with pytest.raises(RuntimeError, match="eos_ids"):
        verify_commit(*args)


@pytest.mark.parametrize("device", [pytest.param("cuda", marks=pytest.mark.cuda), EMU])
def test_cuda_bad_values_are_guarded(device):
    # Draft: bad K or step -> drafting cleared, nothing else written.
    args = _draft_args(device, B=4, kmax=5)
    args[5][0], args[5][1] = 0, 9
    args[1][2], args[1][3] = 5, -1
    block0 = args[0].clone()
    draft_commit(*args)
    assert args[2].tolist() == [False] * 4
    assert torch.equal(args[0], block0) and args[1].tolist() == [0, 0, 5, -1]
    # Verify: bad K / out_len / budget -> row finished with no tokens written.
    args = _verify_args(device, B=4, kmax=5, N=12)
    args[2][0] = 6
    args[7][1] = -1
    args[7][2], args[8][2] = 5, 4
    args[8][3] = 13
    verify_commit(*args)
    assert args[9].tolist() == [True] * 4 and args[3].tolist() == [False] * 4
    assert args[12].tolist() == [0] * 4 and args[13].tolist() == [-1] * 4
    assert not args[6].any() and args[7].tolist() == [0, -1, 5, 0]
    assert not args[10].any() and not args[11].any()


@pytest.mark.cuda
def test_cuda_graph_capture_and_replay():
    rng = random.Random(21)
    B, kmax, N = 9, 16, 40
    st_d, thr = random_draft_state(rng, B, kmax, False)
    st_v, eos = random_verify_state(rng, B, kmax, N)
    d = to_tensors(st_d, "cuda")
    v = to_tensors(st_v, "cuda")
    eos_t = torch.tensor(eos, dtype=torch.int64, device="cuda")

    def step_fn():
        draft_commit(
            d["block"], d["step"], d["drafting"], d["pred"], d["score"], d["horizon"], thr, MASK, False
        )
        verify_commit(
            v["block"],
            v["pred"],
            v["horizon"],
            v["verifying"],
            eos_t,
            True,
            v["out_tokens"],
            v["out_len"],
            v["budget"],
            v["done"],
            v["pending"],
            v["cache_seqlens"],
            v["committed"],
            v["mismatch"],
        )

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        step_fn()  # warm-up outside the graph
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step_fn()
    for _ in range(3):  # new states copied into the captured tensors, then replayed
        st_d, _ = random_draft_state(rng, B, kmax, False)
        st_v, _ = random_verify_state(rng, B, kmax, N)
        for k, t in to_tensors(st_d, "cuda").items():
            d[k].copy_(t)
        for k, t in to_tensors(st_v, "cuda").items():
            v[k].copy_(t)
        graph.replay()
        torch.cuda.synchronize()
        want_d = ref_draft(st_d, thr, MASK, False)
        want_v = ref_verify(st_v, eos, True)
        for k in ["block", "step", "drafting"]:
            assert d[k].cpu().tolist() == want_d[k], k
        for k in VERIFY_MUTATED:
            assert v[k].cpu().tolist() == want_v[k], k
