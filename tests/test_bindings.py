"""The bindings' declarative argument checks (bindings/common.h, check_args): what every op's table
promises, checked through the real ops. The per-op files test each op's own arguments; this file
tests the rules the tables share: symbolic dims bound by one argument and checked on the others,
leading dims ("..."), dtype sets and the op's one float dtype, minimum sizes, written arguments that
may share memory with no other, and empty inputs."""

import re

import pytest
import torch

import fluid_rt
from fluid_rt.ops import pack_linear_weight, packed_linear, rms_norm, rope_, token_entropy

ops = torch.ops.fluid_rt


def _raises(exc, message, call):
    with pytest.raises(exc, match=re.escape(message)):
        call()


def _verify_args(B=3, kmax=5, N=12):
    """verify_commit arguments in schema order (block .. mismatch): one row to verify."""
    i32 = dict(dtype=torch.int32)
    return [
        torch.zeros(B, kmax, dtype=torch.int64),
        torch.zeros(B, kmax, dtype=torch.int64),
        torch.full((B,), kmax, **i32),
        torch.ones(B, dtype=torch.bool),
        torch.full((B, 1), -1, dtype=torch.int64),
        torch.ones(B, dtype=torch.bool),
        torch.zeros(B, N, dtype=torch.int64),
        torch.zeros(B, **i32),
        torch.full((B,), N, **i32),
        torch.zeros(B, dtype=torch.bool),
        torch.zeros(B, dtype=torch.int64),
        torch.zeros(B, **i32),
        torch.zeros(B, **i32),
        torch.zeros(B, **i32),
    ]


def test_a_symbolic_dim_is_bound_by_the_first_argument_and_named_on_the_others():
    args = _verify_args()
    args[1] = torch.zeros(3, 4, dtype=torch.int64)  # pred: Kmax 4, block says 5
    _raises(
        ValueError,
        "pred: dim 1 (Kmax, as block) must be 5, got shape [3, 4]",
        lambda: ops.verify_commit(*args),
    )
    args = _verify_args()
    args[13] = torch.zeros(2, dtype=torch.int32)  # mismatch: batch 2, block says 3
    _raises(
        ValueError,
        "mismatch: dim 0 (batch, as block) must be 3, got shape [2]",
        lambda: ops.verify_commit(*args),
    )


def test_minimum_sizes_and_ranks():
    args = _verify_args(kmax=1)
    args[0] = args[1] = torch.zeros(3, 0, dtype=torch.int64)
    _raises(
        ValueError, "block: dim 1 (Kmax) must be >= 1, got shape [3, 0]", lambda: ops.verify_commit(*args)
    )
    args = _verify_args()
    args[2] = torch.zeros(3, 1, dtype=torch.int32)
    _raises(
        ValueError,
        "horizon: expected a 1-D tensor [batch], got shape [3, 1]",
        lambda: ops.verify_commit(*args),
    )
    _raises(
        ValueError,
        "x: expected a tensor of shape [..., hidden], got shape []",
        lambda: rms_norm(torch.tensor(1.0), torch.ones(1), 1e-5),
    )


def test_zero_heads_is_an_error_not_a_division_by_zero():
    x = torch.ones(2, 0, 4)
    _raises(ValueError, "x: dim 1 (heads) must be >= 1", lambda: rope_(x, torch.ones(2, 4), torch.ones(2, 4)))


def test_leading_dims_are_shared():
    _raises(
        ValueError,
        "add: expected the leading dims [2] (those of x), got shape [3, 4]",
        lambda: rms_norm(torch.ones(2, 4), torch.ones(4), 1e-5, torch.ones(3, 4)),
    )
    _raises(
        ValueError,
        "cos: expected the leading dims [2] (those of x), got shape [3, 4]",
        lambda: rope_(torch.ones(2, 3, 4), torch.ones(3, 4), torch.ones(2, 4)),
    )


def test_dtype_sets_and_the_ops_one_float_dtype():
    _raises(
        ValueError,
        "logits: expected float32, bfloat16 or float16, got Int",
        lambda: token_entropy(torch.zeros(2, 5, dtype=torch.int32)),
    )
    _raises(
        ValueError,
        "weight: expected float32 or bfloat16, got Half",
        lambda: pack_linear_weight(torch.ones(3, 4, dtype=torch.float16)),
    )
    # The first float argument picks the dtype; later ones must match it exactly.
    _raises(
        ValueError,
        "weight: expected dtype BFloat16, got Float",
        lambda: rms_norm(torch.ones(2, 4, dtype=torch.bfloat16), torch.ones(4), 1e-5),
    )
    args = _verify_args()
    args[7] = args[7].long()  # out_len: one fixed dtype
    _raises(ValueError, "out_len: expected dtype Int, got Long", lambda: ops.verify_commit(*args))


def test_layouts():
    _raises(
        ValueError,
        "x: expected a contiguous tensor, got strides [8, 2]",
        lambda: rms_norm(torch.ones(4, 8)[:, ::2], torch.ones(4), 1e-5),
    )
    _raises(
        ValueError,
        "logits: the last dimension must be contiguous (stride 1), got strides [10, 2]",
        lambda: token_entropy(torch.ones(3, 10)[:, ::2]),
    )
    _raises(
        ValueError,
        "logits: the leading dims must collapse to one row stride",
        lambda: token_entropy(torch.ones(2, 3, 5).transpose(0, 1)),
    )
    # Rows at one stride (a column slice of a wider matrix) are fine where the table says so.
    wide = torch.randn(3, 12)
    torch.testing.assert_close(token_entropy(wide[:, 2:7]).argmax, wide[:, 2:7].argmax(-1))


def test_only_written_arguments_are_kept_apart():
    x = torch.ones(2, 4)
    _raises(ValueError, "x and weight must not share memory", lambda: rms_norm(x, x[0], 1e-5))
    # Two read-only arguments may share memory (verify_commit's block and pred).
    args = _verify_args()
    args[1] = args[0]
    ops.verify_commit(*args)
    assert args[12].tolist() == [5, 5, 5]  # the whole block committed: no mismatch


def test_empty_rows_are_accepted():
    out = token_entropy(torch.ones(0, 7))
    assert out.entropy.shape == (0,) and out.argmax.dtype == torch.int64
    assert rms_norm(torch.ones(0, 4), torch.ones(4), 1e-5).shape == (0, 4)
    assert packed_linear(torch.ones(0, 4), pack_linear_weight(torch.ones(3, 4))).shape == (0, 3)


def test_cpu_only_ops_say_so_and_the_others_follow_the_build():
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    for name in ("causal_attention", "token_entropy", "rms_norm", "draft_commit", "verify_commit"):
        assert has(f"fluid_rt::{name}", "CPU")
        assert has(f"fluid_rt::{name}", "CUDA") == fluid_rt.build_info()["with_cuda"], name
    for name in (
        "rope_",
        "packed_linear",
        "pack_linear_weight",
        "unpack_linear_weight",
        "quant_pack",
        "quant_linear",
        "quant_dequantize_rows",
    ):
        assert has(f"fluid_rt::{name}", "CPU") and not has(f"fluid_rt::{name}", "CUDA"), name
