// Guard zones for the emulator's global buffers: a copy of a tensor's bytes between two zones of
// 0xFF canary bytes, at the same address modulo 64 as the original (kernels choose vector paths by
// alignment). After a launch, a changed canary byte means a kernel wrote out of bounds; reads out of
// bounds see 0xFF bytes (NaN floats, -1 integers). The byte -1 pattern cannot tell a stray write of
// 0xFF bytes, which is no kernel's NaN (0x7fc00000 / 0x7fc0 / 0x7e00).
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

namespace fluid_rt {
namespace emu {

class GuardedBuffer {
 public:
  static constexpr size_t kGuard = 256;

  // `src` (nullptr: poison the contents too) of `bytes` bytes; `align_like` gives the alignment.
  GuardedBuffer(const void* src, size_t bytes, uintptr_t align_like) : bytes_(bytes) {
    storage_.assign(bytes + 2 * kGuard + 128, 0xFF);
    const uintptr_t base = reinterpret_cast<uintptr_t>(storage_.data()) + kGuard;
    const uintptr_t aligned = (base + 63) & ~uintptr_t{63};
    offset_ = aligned + (align_like & 63) - reinterpret_cast<uintptr_t>(storage_.data());
    if (src != nullptr && bytes > 0) std::memcpy(data(), src, bytes);
  }
  unsigned char* data() { return storage_.data() + offset_; }
  const unsigned char* data() const { return storage_.data() + offset_; }
  size_t size() const { return bytes_; }
  bool guards_intact() const {
    for (size_t i = 0; i < offset_; ++i)
      if (storage_[i] != 0xFF) return false;
    for (size_t i = offset_ + bytes_; i < storage_.size(); ++i)
      if (storage_[i] != 0xFF) return false;
    return true;
  }

 private:
  std::vector<unsigned char> storage_;
  size_t bytes_ = 0;
  size_t offset_ = 0;
};

}  // namespace emu
}  // namespace fluid_rt
