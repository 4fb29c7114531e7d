// Register tiles of the CUDA kernels: every thread of a block holds an A x B tile of a product
// in registers and accumulates it from operands staged in shared memory. The operands are read
// through callables `a(k, i)` and `b(k, j)`, so each kernel keeps its own shared-memory layout
// and thread mapping while the multiply-add order stays the same everywhere:
//   acc[i][j] = fmaf(a(k, i), b(k, j), acc[i][j])   for k = 0, 1, ..., K - 1.
// Device code only: included by the .cu sources.
#pragma once

namespace introspect::cuda {

// Sets every element of a register tile to 0.
template <int A, int B>
__device__ __forceinline__ void zero_tile(float (&t)[A][B]) {
#pragma unroll
  for (int i = 0; i < A; ++i)
#pragma unroll
    for (int j = 0; j < B; ++j) t[i][j] = 0.0f;
}

// acc[i][j] += Σ_k a(k, i) b(k, j), one fmaf chain per element in k order; the k loop is
// unrolled UNROLL times.
template <int K, int UNROLL, int A, int B, typename LoadA, typename LoadB>
__device__ __forceinline__ void fma_tile(float (&acc)[A][B], LoadA a, LoadB b) {
#pragma unroll(UNROLL)
  for (int k = 0; k < K; ++k) {
    float av[A];
    float bv[B];
#pragma unroll
    for (int i = 0; i < A; ++i) av[i] = a(k, i);
#pragma unroll
    for (int j = 0; j < B; ++j) bv[j] = b(k, j);
#pragma unroll
    for (int i = 0; i < A; ++i)
#pragma unroll
      for (int j = 0; j < B; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
  }
}

// total += the product of one staged chunk (K steps of fma_tile). The chunk is summed from 0 on
// its own before it joins the total: per-chunk partial sums keep long dot products accurate in
// float32.
template <int K, int UNROLL, int A, int B, typename LoadA, typename LoadB>
__device__ __forceinline__ void accumulate_chunk(float (&total)[A][B], LoadA a, LoadB b) {
  float part[A][B];
  zero_tile(part);
  fma_tile<K, UNROLL>(part, a, b);
#pragma unroll
  for (int i = 0; i < A; ++i)
#pragma unroll
    for (int j = 0; j < B; ++j) total[i][j] += part[i][j];
}

}  // namespace introspect::cuda
