// choice_logprobs on a CUDA device: host entry points that launch the kernels in
// choice_logprobs.cu. Framework-free: raw device pointers, shapes, strides and a cudaStream_t
// passed as void*. This header holds no CUDA types, so it compiles as plain C++.
#pragma once

#include <cstdint>

namespace introspect::cuda {

// Element types of the hidden states and the head weight. 0 and 1 are DType's codes
// (common.h); float16 is 3.
enum class ChoiceDType : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 3 };

// logit[m, v] = h[m]·w[v] + bias[v], then softcap * tanh(logit / softcap) when softcap > 0;
// lse[m] = log Σ_v exp(logit[m, v]);  logp[m, c] = logit[m, choices[m, c]] - lse[m].
// A choice id of -1 (any negative id) gives logp = -inf; an id >= V gives NaN.
//
// h: [M, D] device array of h_dtype, unit column stride, row stride sh (elements).
// w: [V, D] device array of w_dtype, unit column stride, row stride sw (elements).
// Supported (h_dtype, w_dtype): equal types, or float32 hidden states with any weight type.
// bias: [V] float32 or nullptr. choices: [M, C] int64, contiguous.
// logp [M, C] and lse [M]: float32, contiguous, fully written.
// `scratch` must hold choice_logprobs_scratch_bytes(M, V) bytes of 16-byte aligned device
// memory. Everything is enqueued on `stream` (a cudaStream_t); nothing synchronises.
// Returns nullptr on success, else a static/thread_local error message.
const char* choice_logprobs(int h_dtype, const void* h, int64_t sh, int w_dtype, const void* w,
                            int64_t sw, const float* bias, const int64_t* choices, int64_t M,
                            int64_t V, int64_t D, int64_t C, float softcap, float* logp,
                            float* lse, void* scratch, int64_t scratch_bytes, void* stream);

// Scratch bytes choice_logprobs needs for these sizes (0 when M == 0).
int64_t choice_logprobs_scratch_bytes(int64_t M, int64_t V);

// Names of the kernels compiled into this object, comma separated.
const char* choice_logprobs_kernels();

}  // namespace introspect::cuda
