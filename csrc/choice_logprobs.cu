// choice_logprobs on a CUDA device: log-probabilities of chosen tokens under an LM head without
// materialising the [M, V] logits.
//
// Pass 1, lse_partial_kernel: block (x, y) owns rows 64x .. 64x+63 and the vocabulary tiles
//   y, y + S, y + 2S, ... of 64 columns each (S = gridDim.y splits). For every tile it computes
//   the 64 x 64 logits as a shared-memory tiled product over D in chunks of 32 (each of the 256
//   threads holds a 4 x 4 register tile: rows ty + 16 i, columns tx + 16 j), adds the bias,
//   applies the soft-cap, and folds its 4 values per row into a per-thread running pair. After the
//   last tile the 16 threads of a row merge their pairs through shared memory, and one thread
//   writes the block's pair to the [S, M] scratch arrays.
// Pass 2, pick_kernel: one warp per row merges the S pairs into lse (lanes stride over the
//   splits, then a butterfly), then for every choice takes the dot product of the hidden row with
//   the chosen weight row (lanes stride over D, butterfly sum), adds bias and soft-cap, and writes
//   logp = logit - lse. Lane 0's values are the ones written.
//
// Running pairs: (m, s) with s = Σ exp(x - shift(m)), shift(m) = m when finite, else 0, so no
// exponent is ever inf - inf; a merge rescales by exp(min(shift(old) - shift(new), 0)) <= 1, so an
// empty sum (s = 0) is never multiplied by inf. fmaxf drops NaN from m, but a NaN logit makes its
// exponential NaN, which every later sum keeps: lse is NaN, as in a dense logsumexp. A +inf logit
// gives s = inf and lse = inf.
//
// Padding invariant: staged elements outside the valid range (row >= M, column >= V, d >= D) are
// 0, and logits of columns >= V become -inf before they reach a running pair; rows >= M are
// computed but never written.
//
// All products and sums are float32 (CUDA cores, no tensor cores): 16-bit inputs are converted
// on load, so every dtype gets the same float32 arithmetic.
#include "choice_logprobs_cuda.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cmath>

#include "cuda_launch.cuh"
#include "cuda_tiles.cuh"

namespace introspect {
namespace {

using cuda::accumulate_chunk;
using cuda::align_up;
using cuda::ceil_div;
using cuda::check_launch;
using cuda::zero_tile;

constexpr int kThreads = 256;  // threads per block in both kernels
constexpr int kGroup = 16;     // pass 1: threads per row group and per column group
constexpr int kPer = 4;        // pass 1: rows (and columns) per thread
constexpr int kTileM = kGroup * kPer;  // pass 1: rows per block (64)
constexpr int kTileV = kGroup * kPer;  // pass 1: vocabulary columns per tile (64)
constexpr int kTileK = 32;             // pass 1: D chunk staged in shared memory
constexpr int kWarp = 32;
constexpr int kPickRows = kThreads / kWarp;  // pass 2: rows per block (one warp each)
constexpr int64_t kTargetBlocks = 1024;      // pass 1 blocks aimed for (before clamping)
constexpr int64_t kMaxSplits = 65535;        // gridDim.y limit
constexpr unsigned kFullMask = 0xffffffffu;

static_assert(kGroup * kGroup == kThreads, "pass 1 runs 16 x 16 threads");
static_assert((kTileM * kTileK) % kThreads == 0 && (kTileV * kTileK) % kThreads == 0,
              "staging loops cover the tiles exactly");
static_assert(kThreads % kWarp == 0, "pass 2 runs whole warps");

// ---------------------------------------------------------------------------------------------
// Element access and running pairs

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }

struct Running {
  float m;  // largest value seen (NaN dropped)
  float s;  // Σ exp(x - shift(m))
};

__device__ __forceinline__ float shift_of(float m) { return isfinite(m) ? m : 0.0f; }

__device__ __forceinline__ Running merge(Running a, Running b) {
  const float m = fmaxf(a.m, b.m);
  const float sh = shift_of(m);
  const float sa = a.s * expf(fminf(shift_of(a.m) - sh, 0.0f));
  const float sb = b.s * expf(fminf(shift_of(b.m) - sh, 0.0f));
  return Running{m, sa + sb};
}

__device__ __forceinline__ float finish(Running r) { return shift_of(r.m) + logf(r.s); }

__device__ __forceinline__ float cap_logit(float x, float softcap) {
  return softcap > 0.0f ? softcap * tanhf(x / softcap) : x;
}

// ---------------------------------------------------------------------------------------------
// Pass 1: per (row, split) running pairs of the logits of the split's vocabulary tiles.

// dst[k][r] = src[row0 + r, k0 + k] in float32 for r < ROWS, k < kTileK, 0 outside
// [0, rows) x [0, D): the chunk transposed, so the operands of one k are one row of dst. A warp
// reads 32 consecutive elements of one row of src.
template <int ROWS, int LD, typename T>
__device__ __forceinline__ void stage_chunk(float (&dst)[kTileK][LD], const T* __restrict__ src,
                                            int64_t stride, int64_t rows, int64_t row0,
                                            int64_t D, int64_t k0, int tid) {
#pragma unroll
  for (int e = tid; e < ROWS * kTileK; e += kThreads) {
    const int r = e / kTileK;
    const int k = e % kTileK;
    const int64_t n = row0 + r;
    const int64_t d = k0 + k;
    dst[k][r] = (n < rows && d < D) ? to_f32(src[n * stride + d]) : 0.0f;
  }
}

// Folds this thread's 4 logits of each of its rows (columns v0 + tx + 16 j of the tile, after
// bias and soft-cap; columns past V take no part) into the row's running pair.
__device__ __forceinline__ void fold_tile(Running (&run)[kPer], const float (&total)[kPer][kPer],
                                          const float* __restrict__ bias, int64_t v0, int64_t V,
                                          float softcap, int tx) {
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    float x[kPer];
    float tile_max = -INFINITY;
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      const int64_t v = v0 + tx + kGroup * j;
      float value = -INFINITY;  // columns past V take no part
      if (v < V) {
        value = total[i][j];
        if (bias != nullptr) value += bias[v];
        value = cap_logit(value, softcap);
      }
      x[j] = value;
      tile_max = fmaxf(tile_max, value);
    }
    const float sh_t = shift_of(tile_max);
    float sum = 0.0f;
#pragma unroll
    for (int j = 0; j < kPer; ++j) sum += expf(x[j] - sh_t);
    run[i] = merge(run[i], Running{tile_max, sum});
  }
}

template <typename TH, typename TW>
__global__ void __launch_bounds__(kThreads)
    lse_partial_kernel(const TH* __restrict__ h, int64_t sh, const TW* __restrict__ w,
                       int64_t sw, const float* __restrict__ bias, int64_t M, int64_t V,
                       int64_t D, float softcap, float* __restrict__ part_m,
                       float* __restrict__ part_s) {
  __shared__ float hs[kTileK][kTileM + 1];  // hs[k][row]; +1 puts a warp's stores in 32 banks
  __shared__ float ws[kTileK][kTileV + 1];  // ws[k][column]
  __shared__ float red_m[kTileM][kGroup + 1];
  __shared__ float red_s[kTileM][kGroup + 1];

  const int tid = static_cast<int>(threadIdx.x);
  const int tx = tid % kGroup;  // column group: columns tx + 16 j
  const int ty = tid / kGroup;  // row group: rows ty + 16 i
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kTileM;
  const int64_t num_tiles = (V + kTileV - 1) / kTileV;

  Running run[kPer];
#pragma unroll
  for (int i = 0; i < kPer; ++i) run[i] = Running{-INFINITY, 0.0f};

  for (int64_t tile = blockIdx.y; tile < num_tiles; tile += gridDim.y) {
    const int64_t v0 = tile * kTileV;
    float total[kPer][kPer];
    zero_tile(total);

    for (int64_t k0 = 0; k0 < D; k0 += kTileK) {
      // Stage h[row0 : row0+64, k0 : k0+32] and w[v0 : v0+64, k0 : k0+32] in float32.
      stage_chunk<kTileM>(hs, h, sh, M, row0, D, k0, tid);
      stage_chunk<kTileV>(ws, w, sw, V, v0, D, k0, tid);
      __syncthreads();
      accumulate_chunk<kTileK, 8>(
          total, [&](int k, int i) { return hs[k][ty + kGroup * i]; },
          [&](int k, int j) { return ws[k][tx + kGroup * j]; });
      __syncthreads();  // hs/ws are overwritten by the next chunk
    }
    fold_tile(run, total, bias, v0, V, softcap, tx);
  }

  // Merge the 16 pairs of every row (one per column group), in column-group order.
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    red_m[ty + kGroup * i][tx] = run[i].m;
    red_s[ty + kGroup * i][tx] = run[i].s;
  }
  __syncthreads();
  if (tid < kTileM) {
    Running r{-INFINITY, 0.0f};
    for (int t = 0; t < kGroup; ++t) r = merge(r, Running{red_m[tid][t], red_s[tid][t]});
    const int64_t n = row0 + tid;
    if (n < M) {
      const int64_t o = static_cast<int64_t>(blockIdx.y) * M + n;
      part_m[o] = r.m;
      part_s[o] = r.s;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Pass 2: lse from the S partial pairs, then the chosen logits by dot products; one warp per row.
template <typename TH, typename TW>
__global__ void __launch_bounds__(kThreads)
    pick_kernel(const TH* __restrict__ h, int64_t sh, const TW* __restrict__ w, int64_t sw,
                const float* __restrict__ bias, const int64_t* __restrict__ choices, int64_t M,
                int64_t V, int64_t D, int64_t C, float softcap, const float* __restrict__ part_m,
                const float* __restrict__ part_s, int64_t S, float* __restrict__ logp,
                float* __restrict__ lse) {
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  const int64_t row =
      static_cast<int64_t>(blockIdx.x) * kPickRows + static_cast<int64_t>(threadIdx.x) / kWarp;
  if (row >= M) return;  // the whole warp leaves together

  Running run{-INFINITY, 0.0f};
  for (int64_t s = lane; s < S; s += kWarp) {
    run = merge(run, Running{part_m[s * M + row], part_s[s * M + row]});
  }
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    const Running other{__shfl_xor_sync(kFullMask, run.m, offset),
                        __shfl_xor_sync(kFullMask, run.s, offset)};
    run = merge(run, other);
  }
  const float row_lse = finish(run);
  if (lane == 0) lse[row] = row_lse;

  const TH* hr = h + row * sh;
  for (int64_t c = 0; c < C; ++c) {
    const int64_t id = choices[row * C + c];  // the same for every lane: branches are uniform
    float value;
    if (id < 0) {
      value = -INFINITY;  // padding: probability zero
    } else if (id >= V) {
      value = NAN;  // rejected by the caller; never read out of bounds
    } else {
      const TW* wr = w + id * sw;
      float acc = 0.0f;
      for (int64_t d = lane; d < D; d += kWarp) acc = fmaf(to_f32(hr[d]), to_f32(wr[d]), acc);
#pragma unroll
      for (int offset = kWarp / 2; offset > 0; offset /= 2) {
        acc += __shfl_xor_sync(kFullMask, acc, offset);
      }
      if (bias != nullptr) acc += bias[id];
      value = cap_logit(acc, softcap) - row_lse;
    }
    if (lane == 0) logp[row * C + c] = value;
  }
}

// ---------------------------------------------------------------------------------------------
// Host helpers

// Vocabulary splits S of pass 1: about kTargetBlocks blocks in all, at most one split per tile.
// Depends only on the sizes, so results do not depend on the device.
int64_t num_splits(int64_t M, int64_t V) {
  const int64_t row_tiles = ceil_div(M, kTileM);
  const int64_t vocab_tiles = ceil_div(V, kTileV);
  int64_t s = ceil_div(kTargetBlocks, row_tiles);
  s = std::min(s, vocab_tiles);
  s = std::min(s, kMaxSplits);
  return std::max<int64_t>(s, 1);
}

// Scratch layout: [m partials: S*M float][s partials: S*M float], each section aligned.
int64_t part_bytes(int64_t M, int64_t V) {
  return align_up(num_splits(M, V) * M * static_cast<int64_t>(sizeof(float)));
}

struct Args {
  const void* h;
  int64_t sh;
  const void* w;
  int64_t sw;
  const float* bias;
  const int64_t* choices;
  int64_t M, V, D, C;
  float softcap;
  int64_t splits;
  float* part_m;
  float* part_s;
  float* logp;
  float* lse;
  cudaStream_t stream;
};

template <typename TH, typename TW>
const char* launch(const Args& a) {
  const TH* h = static_cast<const TH*>(a.h);
  const TW* w = static_cast<const TW*>(a.w);

  const dim3 grid1(static_cast<unsigned>(ceil_div(a.M, kTileM)),
                   static_cast<unsigned>(a.splits));
  lse_partial_kernel<TH, TW><<<grid1, kThreads, 0, a.stream>>>(
      h, a.sh, w, a.sw, a.bias, a.M, a.V, a.D, a.softcap, a.part_m, a.part_s);
  if (const char* err = check_launch("choice_logprobs: pass 1 launch failed")) return err;

  const unsigned blocks2 = static_cast<unsigned>(ceil_div(a.M, kPickRows));
  pick_kernel<TH, TW><<<blocks2, kThreads, 0, a.stream>>>(
      h, a.sh, w, a.sw, a.bias, a.choices, a.M, a.V, a.D, a.C, a.softcap, a.part_m, a.part_s,
      a.splits, a.logp, a.lse);
  return check_launch("choice_logprobs: pass 2 launch failed");
}

constexpr int kF32 = static_cast<int>(cuda::ChoiceDType::kFloat32);
constexpr int kBF16 = static_cast<int>(cuda::ChoiceDType::kBFloat16);
constexpr int kF16 = static_cast<int>(cuda::ChoiceDType::kFloat16);

}  // namespace

namespace cuda {

int64_t choice_logprobs_scratch_bytes(int64_t M, int64_t V) {
  if (M <= 0 || V <= 0) return 0;
  return 2 * part_bytes(M, V);
}

const char* choice_logprobs(int h_dtype, const void* h, int64_t sh, int w_dtype, const void* w,
                            int64_t sw, const float* bias, const int64_t* choices, int64_t M,
                            int64_t V, int64_t D, int64_t C, float softcap, float* logp,
                            float* lse, void* scratch, int64_t scratch_bytes, void* stream) {
  if (M < 0 || C < 0) return "choice_logprobs (CUDA): M and C must be >= 0";
  if (V < 1 || D < 1) return "choice_logprobs (CUDA): V and D must be >= 1";
  if (sh < 0 || sw < 0) return "choice_logprobs (CUDA): row strides must be >= 0";
  if (!(softcap >= 0.0f) || std::isinf(softcap))
    return "choice_logprobs (CUDA): softcap must be finite and >= 0 (0 means none)";
  const bool same = h_dtype == w_dtype && (h_dtype == kF32 || h_dtype == kBF16 || h_dtype == kF16);
  const bool mixed = h_dtype == kF32 && (w_dtype == kBF16 || w_dtype == kF16);
  if (!same && !mixed)
    return "choice_logprobs (CUDA): hidden and weight must share a dtype (float32, bfloat16 or "
           "float16), or the hidden states must be float32";
  if (M == 0) return nullptr;
  if (h == nullptr || w == nullptr || lse == nullptr || (C > 0 && (choices == nullptr || logp == nullptr)))
    return "choice_logprobs (CUDA): h, w, choices, logp and lse must not be null";
  if (ceil_div(M, kPickRows) > INT_MAX) return "choice_logprobs (CUDA): too many rows for one launch";
  if (scratch == nullptr || scratch_bytes < choice_logprobs_scratch_bytes(M, V))
    return "choice_logprobs (CUDA): scratch is smaller than choice_logprobs_scratch_bytes()";
  if (reinterpret_cast<uintptr_t>(scratch) % 16 != 0)
    return "choice_logprobs (CUDA): scratch must be 16-byte aligned";

  Args a{};
  a.h = h;
  a.sh = sh;
  a.w = w;
  a.sw = sw;
  a.bias = bias;
  a.choices = choices;
  a.M = M;
  a.V = V;
  a.D = D;
  a.C = C;
  a.softcap = softcap;
  a.splits = num_splits(M, V);
  a.part_m = static_cast<float*>(scratch);
  a.part_s = reinterpret_cast<float*>(static_cast<char*>(scratch) + part_bytes(M, V));
  a.logp = logp;
  a.lse = lse;
  a.stream = static_cast<cudaStream_t>(stream);

  if (h_dtype == kF32) {
    if (w_dtype == kBF16) return launch<float, __nv_bfloat16>(a);
    if (w_dtype == kF16) return launch<float, __half>(a);
    return launch<float, float>(a);
  }
  if (h_dtype == kBF16) return launch<__nv_bfloat16, __nv_bfloat16>(a);
  return launch<__half, __half>(a);
}

const char* choice_logprobs_kernels() { return "choice_logprobs"; }

}  // namespace cuda
}  // namespace introspect
