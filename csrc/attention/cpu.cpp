// causal_attention on the CPU: the kernel is attention.isa.cpp, compiled once per CPU path; this
// runs the copy of the path in use (csrc/common/cpu_isa.h).
#include "attention/params.h"
#include "common/isa.h"

namespace fluid_rt {

FLUID_RT_DECLARE_ISA(void, causal_attention_run, (const CausalAttentionParams& p))

void causal_attention_cpu(const CausalAttentionParams& p) { FLUID_RT_ISA_PICK(causal_attention_run)(p); }

}  // namespace fluid_rt
