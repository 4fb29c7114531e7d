// Host side of the CUDA entry points: grid and scratch arithmetic, and launch error messages.
// Included by the .cu sources only.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>

namespace introspect::cuda {

// Every scratch section starts on a multiple of this many bytes.
constexpr int64_t kScratchAlign = 256;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t align_up(int64_t a) { return ceil_div(a, kScratchAlign) * kScratchAlign; }

// "what: cudaErrorName (description)" in a thread_local buffer.
inline const char* cuda_failure(const char* what, cudaError_t err) {
  thread_local char message[512];
  std::snprintf(message, sizeof(message), "%s: %s (%s)", what, cudaGetErrorName(err),
                cudaGetErrorString(err));
  return message;
}

// nullptr if the last launch succeeded, else its error message.
inline const char* check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cuda_failure(what, err);
}

}  // namespace introspect::cuda
