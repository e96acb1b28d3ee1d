// rope_: schema, argument checks and the CPU impl (tensor -> params). CPU-only by design: on CUDA
// the model's step is one captured CUDA graph, where torch's three elementwise ops cost no launch
// overhead; on the CPU each op is a dispatch, which this fused pass saves.
#include "rope.h"

#include "common.h"
#include "rope/params.h"

namespace fluid_rt {
namespace {

constexpr ArgSpec kRopeArgs[] = {
    {"x", kAnyFloat, "... heads>=1 head_dim>=2", Layout::kAny, kWritten},  // strides: check_rope_rows
    {"cos", kAnyFloat, "... head_dim", Layout::kContiguous},
    {"sin", kAnyFloat, "... head_dim", Layout::kContiguous},
};
constexpr OpSpec kRopeSpec{kRopeArgs, "rope_ is a CPU kernel (on CUDA the model uses torch ops)"};

// x's heads of a row contiguous, its rows (the leading dims) at one stride, as in a column slice
// of the fused qkv projection, and distinct: rows sharing memory (an expanded x, stride 0) would be
// rotated twice in place. Returns the row stride.
int64_t check_rope_rows(const at::Tensor& x) {
  const int64_t H = x.size(-2), D = x.size(-1);
  FLUID_CHECK_VALUE(D % 2 == 0, "x: head_dim (last dim) must be even and >= 2, got shape ", x.sizes());
  FLUID_CHECK_VALUE(x.stride(-1) == 1 && (H == 1 || x.stride(-2) == D), "x: each row's heads must be ",
                    "contiguous (strides [..., head_dim, 1]), got strides ", x.strides());
  const int64_t row_stride = collapsed_row_stride(x.flatten(-2), "x");
  const int64_t rows = x.numel() / (H * D);
  FLUID_CHECK_VALUE(rows <= 1 || row_stride >= H * D, "x: its rows overlap in memory (row stride ",
                    row_stride, " < heads * head_dim = ", H * D,
                    "); rope_ writes x in place and needs distinct rows");
  return row_stride;
}

}  // namespace

void rope_impl(at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  check_args(kRopeSpec, {x, cos, sin});
  RopeParams p;
  p.row_stride = check_rope_rows(x);
  p.x = x.data_ptr();
  p.cos = cos.data_ptr();
  p.sin = sin.data_ptr();
  p.dtype = float_dtype_of(x, "x");
  p.heads = x.size(-2);
  p.head_dim = x.size(-1);
  p.rows = x.numel() / (p.heads * p.head_dim);
  rope_cpu(p);
}

TORCH_LIBRARY_FRAGMENT(fluid_rt, m) { m.def("rope_(Tensor(a!) x, Tensor cos, Tensor sin) -> ()"); }

TORCH_LIBRARY_IMPL(fluid_rt, CPU, m) { m.impl("rope_", &rope_impl); }

}  // namespace fluid_rt
