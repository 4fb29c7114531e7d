// Fused elementwise kernels of a Llama-family decoder forward, CPU: the RMS norm (with an
// optional residual add before it), silu(gate) * up, and the rotary position embedding.
// Each rounds exactly where the PyTorch formulas it replaces round (bfloat16 intermediates
// round to nearest even, as torch does); the file is compiled without floating-point
// contraction so float32 sums and products round one at a time, as separate torch ops do.
#pragma once

#include <cstdint>

#include "common.h"

namespace introspect::cpu {

// Rows of x: [rows, n] of x_dtype (row stride sx, unit column stride); weight: [n] of w_dtype.
// h = x as float32; y = weight * to_x_dtype(h * rsqrt(mean(h², row) + eps)), with row stride
// sy, bfloat16 when x and weight both are (the product rounded), else float32. With a residual ([rows,
// n] of x_dtype, row stride sr), x + residual is rounded to x_dtype, written to s (row stride
// ss) and normalised in place of x.
void rms_norm(DType x_dtype, const void* x, int64_t sx, const void* residual, int64_t sr,
              DType w_dtype, const void* weight, float eps, int64_t rows, int64_t n, void* y,
              int64_t sy, void* s, int64_t ss, int threads);

// out = silu(gate) * up over [rows, n] of `dtype` (row strides sg, su, so; unit column
// stride). bfloat16: silu rounded to bfloat16 first, then the product.
void silu_mul(DType dtype, const void* gate, int64_t sg, const void* up, int64_t su,
              int64_t rows, int64_t n, void* out, int64_t so, int threads);

// One tensor of the rotary embedding: x [B, H, S, D] with strides (b, h, s, 1).
struct RopeTensor {
  const void* x;
  int64_t H;
  int64_t xb, xh, xs;
  void* out;  // [B, H, S, D] of the output dtype, strides (b, h, s, 1)
  int64_t ob, oh, os;
};

// out = x * cos + rotate_half(x) * sin for q and k (x_dtype) with cos and sin [B, S, D] of
// cs_dtype (strides (b, s, 1); a stride may be 0 to broadcast). D is even. The output is
// bfloat16 (each product and the sum rounded) when both dtypes are, else float32.
void rope(DType x_dtype, DType cs_dtype, const RopeTensor& q, const RopeTensor& k,
          const void* cos, int64_t cb, int64_t cs, const void* sin, int64_t sb, int64_t ss,
          int64_t B, int64_t S, int64_t D, int threads);

}  // namespace introspect::cpu
