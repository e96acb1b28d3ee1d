"""The CUDA execution-model emulator itself (csrc/emu, torch.ops.fluid_rt_emu): it must tell a
correct kernel from a racy one, catch out-of-bounds writes and divergent warp operations, and poison
shared memory. The op families' emulated tests live with their CPU/CUDA twins (test_attention.py,
test_entropy.py, test_norm.py, test_commit.py: the ``emu`` params)."""

import math

import pytest
import torch

import fluid_rt

pytestmark = pytest.mark.emu


def selftest(what, x, drop_barrier=False, orders="forward,reverse,random"):
    torch.ops.fluid_rt_emu.configure(4, 7, orders)
    try:
        return torch.ops.fluid_rt_emu.selftest(what, x, drop_barrier)
    finally:
        torch.ops.fluid_rt_emu.configure()


def test_build_info_reports_the_emulation():
    assert fluid_rt.build_info()["cuda_emu"] is True


@pytest.mark.parametrize("n", [1, 200, 256])
def test_block_reduction_with_its_barrier_is_right_in_every_order(n):
    x = torch.randn(n, generator=torch.Generator().manual_seed(n))
    got = selftest("block_sum", x)[0].item()
    assert math.isclose(got, x.double().sum().item(), rel_tol=1e-5, abs_tol=1e-5)


def test_a_dropped_barrier_is_caught():
    """The same reduction without its __syncthreads: the result depends on the thread order, and
    the op says so instead of returning either answer."""
    x = torch.randn(256, generator=torch.Generator().manual_seed(1))
    with pytest.raises(RuntimeError, match="race on shared memory or a missing barrier"):
        selftest("block_sum", x, drop_barrier=True)


def test_a_dropped_barrier_reads_poisoned_shared_memory():
    """One order at a time: thread 0 running first reads the other threads' slots before they are
    written, and they hold the block-start poison (NaN), not a stale value; running last it happens
    to be right, which is why every launch runs in several orders."""
    x = torch.randn(256, generator=torch.Generator().manual_seed(2))
    want = x.double().sum().item()
    forward = selftest("block_sum", x, drop_barrier=True, orders="forward")[0].item()
    reverse = selftest("block_sum", x, drop_barrier=True, orders="reverse")[0].item()
    assert math.isnan(forward)
    assert math.isclose(reverse, want, rel_tol=1e-5, abs_tol=1e-5)


def test_warp_shuffles_exchange_among_the_lanes_of_each_warp():
    x = torch.randn(64, generator=torch.Generator().manual_seed(3))
    got = selftest("warp_sum", x)
    want = x.double().view(2, 32).sum(1).repeat_interleave(32)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_an_out_of_bounds_write_trips_the_guard_zone():
    with pytest.raises(RuntimeError, match="wrote outside out"):
        selftest("overrun", torch.zeros(64))


def test_a_warp_operation_missing_a_lane_fails():
    with pytest.raises(RuntimeError, match="warp"):
        selftest("divergent", torch.zeros(32))


def test_configure_checks_its_arguments():
    with pytest.raises(ValueError, match="orders"):
        torch.ops.fluid_rt_emu.configure(4, 1, "forward,sideways")
    with pytest.raises(ValueError, match="num_sms"):
        torch.ops.fluid_rt_emu.configure(0, 1, "forward")
    torch.ops.fluid_rt_emu.configure()


def test_emulated_ops_check_their_arguments():
    with pytest.raises(ValueError, match="weight"):
        torch.ops.fluid_rt_emu.rms_norm(torch.randn(2, 8), torch.randn(7), 1e-5, None)
    with pytest.raises(ValueError, match="q"):
        torch.ops.fluid_rt_emu.causal_attention(
            torch.randn(1, 1, 2, 48),
            torch.randn(1, 4, 1, 48),
            torch.randn(1, 4, 1, 48),
            torch.zeros(1, dtype=torch.int32),
        )


def _bad_calls():
    """One bad call per emulated op: (op name, arguments); each breaks a rule of the op's table or
    of its describe_<op>()."""
    i32, i64 = torch.int32, torch.int64
    B, kmax = 2, 3
    verify = [
        torch.zeros(B, kmax, dtype=i64),
        torch.zeros(B, kmax, dtype=i64),
        torch.full((B,), kmax, dtype=i32),
        torch.ones(B, dtype=torch.bool),
        torch.full((B, 1), -1, dtype=i64),
        torch.ones(B, dtype=torch.bool),
        torch.zeros(B, 8, dtype=i64),
        torch.zeros(B, dtype=i32),
        torch.full((B,), 8, dtype=i32),
        torch.zeros(B, dtype=torch.bool),
        torch.zeros(B, dtype=i64),
        torch.zeros(B, dtype=i32),
        torch.zeros(B, dtype=i32),
        torch.zeros(B, dtype=i64),
    ]  # mismatch: int64, not int32
    draft = [
        torch.zeros(B, kmax, dtype=i64),
        torch.zeros(B, dtype=i32),
        torch.ones(B, dtype=torch.bool),
        torch.zeros(B, kmax + 1, dtype=i64),
        torch.zeros(B, kmax),
        torch.ones(B, dtype=i32),
        torch.zeros(B),
        0,
        False,
    ]  # pred: Kmax + 1
    q = torch.randn(1, 2, 4, 64)
    cache = torch.zeros(1, 8, 3, 64)  # 4 query heads over 3 kv heads
    return [
        ("rms_norm", (torch.randn(2, 8), torch.randn(8, dtype=torch.bfloat16), 1e-5, None)),
        ("rms_norm", (torch.randn(4, 8)[:, ::2], torch.randn(4), 1e-5, None)),
        ("token_entropy", (torch.randn(2, 3, 5).transpose(0, 1), 1.0)),
        ("token_entropy", (torch.randn(2, 5), 0.0)),
        ("causal_attention", (q, cache, cache.clone(), torch.zeros(1, dtype=i32), None, None, None, None)),
        (
            "causal_attention",
            (q, cache[:, :, :2], cache[:, :, :2].clone(), torch.zeros(1, dtype=i64), None, None, None, None),
        ),
        ("draft_commit", tuple(draft)),
        ("verify_commit", tuple(verify)),
    ]


def test_emulated_ops_share_the_schemas_of_the_real_ops():
    for name in ("causal_attention", "token_entropy", "rms_norm", "draft_commit", "verify_commit"):
        real = str(getattr(torch.ops.fluid_rt, name).default._schema)
        emu = str(getattr(torch.ops.fluid_rt_emu, name).default._schema)
        assert emu == real.replace("fluid_rt::", "fluid_rt_emu::"), name


@pytest.mark.parametrize("case", range(len(_bad_calls())))
def test_emulated_ops_raise_the_errors_of_the_real_ops(case):
    """The emulated ops check their arguments with the real ops' tables and rules: the same call
    raises the same error, word for word."""
    name, args = _bad_calls()[case]
    with pytest.raises((ValueError, RuntimeError)) as real:
        getattr(torch.ops.fluid_rt, name)(*args)
    with pytest.raises(real.type) as emu:
        getattr(torch.ops.fluid_rt_emu, name)(*args)
    assert str(emu.value) == str(real.value)


def test_emulated_ops_leave_device_values_to_the_kernels():
    """As on CUDA, lengths out of range are no argument error: the CPU impl raises, the emulated
    kernels write NaN rows instead of reading out of range."""
    q, cache = torch.randn(1, 1, 2, 64), torch.randn(1, 4, 1, 64)
    seqlens = torch.tensor([9], dtype=torch.int32)  # > S_max - T
    with pytest.raises(ValueError, match="cache_seqlens: row 0"):
        torch.ops.fluid_rt.causal_attention(q, cache, cache.clone(), seqlens)
    out, lse = torch.ops.fluid_rt_emu.causal_attention(q, cache, cache.clone(), seqlens)
    assert out.isnan().all() and lse.isnan().all()
