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
        torch.ops.fluid_rt_emu.causal_attention(torch.randn(1, 1, 2, 48), torch.randn(1, 4, 1, 48),
                                                torch.randn(1, 4, 1, 48), torch.zeros(1, dtype=torch.int32))
