// rope_: schema, argument checks and the CPU impl (tensor -> params). CPU-only by design: on CUDA
// the model's step is one captured CUDA graph, where torch's three elementwise ops cost no launch
// overhead; on the CPU each op is a dispatch, which this fused pass saves.
#include "common.h"
#include "rope/params.h"

namespace fluid_rt {
namespace {

void rope_cpu_impl(at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  FLUID_CHECK(x.is_cpu(), "x: rope_ is a CPU kernel (on CUDA the model uses torch ops), got a tensor on ",
              x.device());
  const DType dt = float_dtype_of(x, "x");
  FLUID_CHECK_VALUE(x.dim() >= 2, "x: expected [..., heads, head_dim], got shape ", x.sizes());
  const int64_t H = x.size(-2), D = x.size(-1);
  FLUID_CHECK_VALUE(D >= 2 && D % 2 == 0, "x: head_dim (last dim) must be even and >= 2, got shape ", x.sizes());
  FLUID_CHECK_VALUE(x.stride(-1) == 1 && (H == 1 || x.stride(-2) == D), "x: each row's heads must be ",
                    "contiguous (strides [..., head_dim, 1]), got strides ", x.strides());
  // Rows (the leading dims) at one stride, as in a column slice of the fused qkv projection.
  const int64_t row_stride = collapsed_row_stride(x.flatten(-2), "x");
  const int64_t rows = x.numel() / (H * D);
  // Written in place: rows that share memory (an expanded x, stride 0) would be rotated twice.
  FLUID_CHECK_VALUE(rows <= 1 || row_stride >= H * D, "x: its rows overlap in memory (row stride ", row_stride,
                    " < heads * head_dim = ", H * D, "); rope_ writes x in place and needs distinct rows");
  std::vector<int64_t> table_shape(x.sizes().begin(), x.sizes().end() - 2);
  table_shape.push_back(D);
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{cos, "cos"}, {sin, "sin"}}) {
    check_same_device(t, x, name, "x");
    check_dtype(t, x.scalar_type(), name);
    FLUID_CHECK_VALUE(t.sizes() == at::IntArrayRef(table_shape), name, ": expected shape ",
                      at::IntArrayRef(table_shape), " (x's leading dims, head_dim), got ", t.sizes());
    check_contiguous(t, name);
    check_no_overlap(x, "x", t, name);
  }
  RopeParams p;
  p.x = x.data_ptr();
  p.row_stride = row_stride;
  p.cos = cos.data_ptr();
  p.sin = sin.data_ptr();
  p.dtype = dt;
  p.rows = rows;
  p.heads = H;
  p.head_dim = D;
  rope_cpu(p);
}

}  // namespace
}  // namespace fluid_rt

TORCH_LIBRARY_FRAGMENT(fluid_rt, m) { m.def("rope_(Tensor(a!) x, Tensor cos, Tensor sin) -> ()"); }

TORCH_LIBRARY_IMPL(fluid_rt, CPU, m) { m.impl("rope_", &fluid_rt::rope_cpu_impl); }
