// Element types shared by the kernel families, and bf16/fp16 <-> float for the CPU kernels.
// No torch headers: the bindings translate at::ScalarType into DType.
#pragma once
#include <cstdint>
#include <cstring>

namespace fluid_rt {

enum class DType : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

// bfloat16 is the top half of a float32; round to nearest even on the way down.
inline float bf16_to_float(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

inline uint16_t float_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40u);  // quiet NaN
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

// IEEE half <-> float through the compiler's half type: _Float16 (GCC >= 12 on x86-64), __fp16 on
// Arm (GCC 12 has no _Float16 in C++ there).
#if defined(__aarch64__) || defined(__arm__)
using HalfFloat = __fp16;
#else
using HalfFloat = _Float16;
#endif

inline float fp16_to_float(uint16_t h) {
  HalfFloat v;
  std::memcpy(&v, &h, sizeof(v));
  return static_cast<float>(v);
}

inline uint16_t float_to_fp16(float f) {
  HalfFloat v = static_cast<HalfFloat>(f);
  uint16_t h;
  std::memcpy(&h, &v, sizeof(h));
  return h;
}

// Load element i of a buffer of the given type as float (the scalar path of the CPU kernels).
inline float load_as_float(const void* base, int64_t i, DType t) {
  switch (t) {
    case DType::kFloat32: return static_cast<const float*>(base)[i];
    case DType::kBFloat16: return bf16_to_float(static_cast<const uint16_t*>(base)[i]);
    default: return fp16_to_float(static_cast<const uint16_t*>(base)[i]);
  }
}

inline void store_from_float(void* base, int64_t i, DType t, float v) {
  switch (t) {
    case DType::kFloat32: static_cast<float*>(base)[i] = v; break;
    case DType::kBFloat16: static_cast<uint16_t*>(base)[i] = float_to_bf16(v); break;
    default: static_cast<uint16_t*>(base)[i] = float_to_fp16(v); break;
  }
}

}  // namespace fluid_rt
