// token_entropy's binding pieces that every impl of the op shares (bindings/common.h says how).
#pragma once
#include <tuple>

#include "common.h"
#include "entropy/params.h"

namespace fluid_rt {

inline constexpr char kTokenEntropySchema[] =
    "token_entropy(Tensor logits, float temperature=1.0) -> (Tensor entropy, Tensor max_prob, Tensor argmax, "
    "Tensor logsumexp)";

inline constexpr ArgSpec kTokenEntropyArgs[] = {
    // Rows at logits + r * row_stride, stride 1 inside a row.
    {"logits", kAnyFloat, "... vocab>=1", Layout::kRows},
};
inline constexpr OpSpec kTokenEntropySpec{kTokenEntropyArgs};

// Checks every argument and describes the call; the output pointers are token_entropy_outputs'.
TokenEntropyParams describe_token_entropy(const at::Tensor& logits, double temperature);

using TokenEntropyOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// (entropy, max_prob, argmax, logsumexp) shaped like logits without its last dim, on its device;
// their pointers go into p.
TokenEntropyOutputs token_entropy_outputs(const at::Tensor& logits, TokenEntropyParams& p);

}  // namespace fluid_rt
