// gated_lora_: schema, argument checks and the CPU impl (tensor -> params). CPU-only: on CUDA the
// adapter runs a fixed-shape dense gate in torch ops (fluid_rt/adapter.py), which a CUDA graph
// captures; on the CPU the four torch ops per layer and linear it replaces cost more than the math.
#include <vector>

#include "lora.h"

namespace fluid_rt {
namespace {

constexpr ArgSpec kGatedLoraArgs[] = {
    {"y", kOpFloat | kF32 | kBF16, "... out_features>=1", Layout::kRows, kWritten},
    {"x", kOpFloat | kF32 | kBF16, "... features", Layout::kRows},  // in_features, or 2x with silu_and_mul
    {"rows", kI64, "num_rows", Layout::kContiguous},
    {"a_t", kF32 | kBF16, "in_features>=1 rank>=1", Layout::kContiguous},
    {"b_t", kF32 | kBF16, "pieces part_rank piece", Layout::kContiguous},  // ops.lora_pack_b
};
constexpr OpSpec kGatedLoraSpec{kGatedLoraArgs,
                                "gated_lora_ is a CPU kernel (on CUDA the adapter uses torch ops)"};

// Every row index in [0, n) and none twice (two in-place adds to one row would race).
void check_rows(const at::Tensor& rows, int64_t n) {
  const int64_t* r = rows.data_ptr<int64_t>();
  std::vector<bool> seen(static_cast<size_t>(n), false);
  for (int64_t i = 0; i < rows.numel(); ++i) {
    FLUID_CHECK_VALUE(r[i] >= 0 && r[i] < n, "rows: index ", r[i], " at position ", i, " is outside y's ", n,
                      " rows");
    FLUID_CHECK_VALUE(!seen[static_cast<size_t>(r[i])], "rows: index ", r[i], " appears twice");
    seen[static_cast<size_t>(r[i])] = true;
  }
}

// out_parts (the output sizes of a fused projection's parts) as cumulative ends; empty: one part.
std::vector<int64_t> part_ends(at::IntArrayRef out_parts, int64_t rank, int64_t part_rank, int64_t out) {
  const int64_t parts = out_parts.empty() ? 1 : static_cast<int64_t>(out_parts.size());
  FLUID_CHECK_VALUE(rank == parts * part_rank, "b_t: part_rank ", part_rank, ", but a_t's rank ", rank,
                    " over ", parts, " part(s) (out_parts) gives ", rank / parts,
                    rank % parts ? " and a remainder" : "");
  if (out_parts.empty()) return {out};
  std::vector<int64_t> ends;
  int64_t end = 0;
  for (const int64_t n : out_parts) {
    FLUID_CHECK_VALUE(n > 0, "out_parts: sizes must be positive, got ", out_parts);
    ends.push_back(end += n);
  }
  FLUID_CHECK_VALUE(end == out, "out_parts: sizes ", out_parts, " sum to ", end, ", y has ", out,
                    " out_features");
  return ends;
}

}  // namespace

namespace {

// The rows and factors of a call over n rows with `out` output features (already checked by a
// spec): rows in range and distinct, one factor dtype, the parts and B's pieces. Fills every field
// but the input's and output's.
GatedLoraParams lora_factor_params(int64_t n, int64_t out, const at::Tensor& rows, const at::Tensor& a_t,
                                   const at::Tensor& b_t, bool silu_and_mul, at::IntArrayRef out_parts,
                                   std::vector<int64_t>& ends) {
  check_rows(rows, n);
  GatedLoraParams p;
  p.rows = rows.data_ptr<int64_t>();
  p.num_rows = rows.numel();
  FLUID_CHECK_VALUE(a_t.scalar_type() == b_t.scalar_type(), "a_t and b_t must have one dtype, got ",
                    a_t.scalar_type(), " and ", b_t.scalar_type());
  p.a_t = a_t.data_ptr();
  p.b_t = b_t.data_ptr();
  p.factor_dtype = a_t.scalar_type() == at::kFloat ? DType::kFloat32 : DType::kBFloat16;
  p.in = a_t.size(0);
  p.rank = a_t.size(1);
  p.out = out;
  p.silu_and_mul = silu_and_mul;
  ends = part_ends(out_parts, p.rank, b_t.size(1), p.out);
  p.part_ends = ends.data();
  p.num_parts = static_cast<int64_t>(ends.size());
  FLUID_CHECK_VALUE(b_t.size(2) == kLoraPiece && b_t.size(0) == lora_num_pieces(p), "b_t: expected ",
                    lora_num_pieces(p), " pieces of ", kLoraPiece, " columns for out_parts ", out_parts,
                    " (ops.lora_pack_b), got shape ", b_t.sizes());
  return p;
}

// The rows, a_t and b_t entries of gated_lora_'s table: the checks of a call whose y and x do not
// exist yet (describe_lora_factors).
constexpr ArgSpec kLoraFactorArgs[] = {kGatedLoraArgs[2], kGatedLoraArgs[3], kGatedLoraArgs[4]};
constexpr OpSpec kLoraFactorSpec{kLoraFactorArgs, kGatedLoraSpec.cpu_only};

}  // namespace

GatedLoraParams describe_gated_lora(const at::Tensor& y, const at::Tensor& x, const at::Tensor& rows,
                                    const at::Tensor& a_t, const at::Tensor& b_t, bool silu_and_mul,
                                    at::IntArrayRef out_parts, std::vector<int64_t>& ends) {
  check_args(kGatedLoraSpec, {y, x, rows, a_t, b_t});
  check_linear_input(x, a_t.size(0), silu_and_mul, "a_t", a_t);
  GatedLoraParams p =
      lora_factor_params(y.numel() / y.size(-1), y.size(-1), rows, a_t, b_t, silu_and_mul, out_parts, ends);
  p.y = y.data_ptr();
  p.y_stride = row_stride(y);
  p.x = x.data_ptr();
  p.x_stride = row_stride(x);
  p.dtype = y.scalar_type() == at::kFloat ? DType::kFloat32 : DType::kBFloat16;
  return p;
}

GatedLoraParams describe_lora_factors(int64_t n, int64_t in, int64_t out, at::ScalarType dtype,
                                      const at::Tensor& rows, const at::Tensor& a_t, const at::Tensor& b_t,
                                      bool silu_and_mul, at::IntArrayRef out_parts,
                                      std::vector<int64_t>& ends) {
  check_args(kLoraFactorSpec, {rows, a_t, b_t});
  FLUID_CHECK_VALUE(a_t.size(0) == in, "a_t: expected ", in, " in_features (rows), got shape ", a_t.sizes());
  GatedLoraParams p = lora_factor_params(n, out, rows, a_t, b_t, silu_and_mul, out_parts, ends);
  p.dtype = dtype == at::kFloat ? DType::kFloat32 : DType::kBFloat16;
  return p;
}

namespace {

void gated_lora_impl(at::Tensor& y, const at::Tensor& x, const at::Tensor& rows, const at::Tensor& a_t,
                     const at::Tensor& b_t, bool silu_and_mul, at::IntArrayRef out_parts) {
  std::vector<int64_t> ends;
  gated_lora_cpu(describe_gated_lora(y, x, rows, a_t, b_t, silu_and_mul, out_parts, ends));
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fluid_rt, m) {
  m.def(
      "gated_lora_(Tensor(a!) y, Tensor x, Tensor rows, Tensor a_t, Tensor b_t, bool silu_and_mul=False, "
      "int[] out_parts=[]) -> ()");
}

TORCH_LIBRARY_IMPL(fluid_rt, CPU, m) { m.impl("gated_lora_", &gated_lora_impl); }

}  // namespace fluid_rt
