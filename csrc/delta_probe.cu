// delta_probe on a CUDA device.
//
// Forward, three kernels on one stream:
//   1. pred_kernel: pred = z wᵀ + b (and resid = pred - t). Each block owns tiles of 128 rows and
//      walks D in chunks of 32: the z chunk (converted to float32) and the matching w chunk are
//      staged in shared memory, and every thread accumulates a 4-row x (P/8)-probe register tile.
//   2. grad_partial_kernel: G = residᵀ z as a split-K product. Block (x, y) owns the 128 columns
//      of column tile x and every S-th chunk of 32 rows starting at chunk y; each thread keeps a
//      (P/8)-probe x 4-column tile of G in registers for all of its rows, then writes it to its
//      own slot of a [S, P, D] scratch array. Blocks of column tile 0 also sum resid and resid²
//      (in double) into [S, P] scratch arrays.
//   3. reduce_partials_kernel: sums the S partials of every output in split order.
//   No float atomics are used, so results are deterministic for given (N, D, P).
//
// The G pass needs the full residual of a row, which needs the full dot product over D, while
// its register accumulators can only cover a slice of D per block; so the forward reads the
// hidden states twice (pass 1 and pass 2), which keeps every pass simple and the scratch bounded.
//
// Backward, one fused kernel (plus the same reduction when gw is wanted): block (x, y) stages the
// [P, 128] slice of w once, then for each of its 16-row chunks stages g (and z when gw is wanted),
// writes gz = g w for the chunk straight to ghx/ghm, and accumulates gw = gᵀ z in registers.
//
// Padding invariant: any staged element outside the valid range (row >= N, column >= D,
// probe >= P) is 0 in every operand that can be multiplied into a valid output, so a valid output
// only ever sums products of valid elements, and NaN/Inf propagate exactly as in the math.
#include "delta_probe_cuda.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <type_traits>

#include "cuda_launch.cuh"
#include "cuda_tiles.cuh"

namespace introspect {
namespace {

using cuda::accumulate_chunk;
using cuda::align_up;
using cuda::ceil_div;
using cuda::check_launch;
using cuda::cuda_failure;
using cuda::fma_tile;
using cuda::zero_tile;

constexpr int kThreads = 256;          // threads per block in every kernel
constexpr int kPredRows = 128;         // pred_kernel: rows per tile (32 row groups x 4)
constexpr int kPredK = 32;             // pred_kernel: D chunk
constexpr int kColTile = 128;          // grad/bwd kernels: columns per block (32 lanes x 4)
constexpr int kGradRows = 32;          // grad_partial_kernel: rows per chunk
constexpr int kBwdRows = 16;           // bwd_kernel: rows per chunk (8 row groups x 2)
constexpr int64_t kTargetBlocks = 512;  // blocks of the split kernels (before clamping)
constexpr int64_t kMaxPredBlocks = 4096;
constexpr int64_t kMaxReduceBlocks = 1024;
constexpr int kMaxProbes = 64;

static_assert(kThreads == 256, "thread layouts below assume 256 threads");
static_assert(kPredRows == 4 * (kThreads / 8), "pred_kernel: 32 row groups of 4 rows");
static_assert(kColTile == 4 * 32, "grad/bwd kernels: 32 lanes of 4 columns");
static_assert(kBwdRows == 2 * (kThreads / 32), "bwd_kernel: 8 row groups of 2 rows");

// ---------------------------------------------------------------------------------------------
// Element access

__device__ __forceinline__ float load_f32(const float* p) { return *p; }
__device__ __forceinline__ float load_f32(const __nv_bfloat16* p) { return __bfloat162float(*p); }
__device__ __forceinline__ void store_f32(float* p, float v) { *p = v; }
// Round to nearest even; NaN stays NaN.
__device__ __forceinline__ void store_f32(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

// z[n, d] in float32.
template <typename T, bool DIFF>
__device__ __forceinline__ float load_z(const T* __restrict__ hx, int64_t sx,
                                        const T* __restrict__ hm, int64_t sm, int64_t n,
                                        int64_t d) {
  const float x = load_f32(hx + n * sx + d);
  if constexpr (DIFF) {
    return load_f32(hm + n * sm + d) - x;
  } else {
    return x;
  }
}

// ---------------------------------------------------------------------------------------------
// Staging in shared memory (every thread of the block calls these; a barrier must follow)

// zs[r][c] = z[n0 + r, c0 + c] for r < ROWS, c < COLS, 0 outside [0, N) x [0, D). A warp reads
// 32 consecutive columns of one row.
template <typename T, bool DIFF, int ROWS, int COLS, int LD>
__device__ __forceinline__ void stage_z(float (&zs)[ROWS][LD], const T* __restrict__ hx,
                                        int64_t sx, const T* __restrict__ hm, int64_t sm,
                                        int64_t N, int64_t D, int64_t n0, int64_t c0, int tid) {
#pragma unroll 4
  for (int e = tid; e < ROWS * COLS; e += kThreads) {
    const int r = e / COLS;
    const int c = e % COLS;
    const int64_t n = n0 + r;
    const int64_t d = c0 + c;
    zs[r][c] = (n < N && d < D) ? load_z<T, DIFF>(hx, sx, hm, sm, n, d) : 0.0f;
  }
}

// ws[p][c] = w[p, c0 + c] for p < PT, c < COLS, 0 for p >= P or c0 + c >= D.
template <int COLS, int PT, int LD>
__device__ __forceinline__ void stage_w(float (&ws)[PT][LD], const float* __restrict__ w, int P,
                                        int64_t D, int64_t c0, int tid) {
  for (int e = tid; e < PT * COLS; e += kThreads) {
    const int p = e / COLS;
    const int c = e % COLS;
    const int64_t d = c0 + c;
    ws[p][c] = (p < P && d < D) ? w[p * D + d] : 0.0f;
  }
}

// vs[r][p] = v[n0 + r, p] of a contiguous [N, P] array (resid or g), 0 for n >= N or p >= P.
template <int ROWS, int PT>
__device__ __forceinline__ void stage_probe_rows(float (&vs)[ROWS][PT],
                                                 const float* __restrict__ v, int P, int64_t N,
                                                 int64_t n0, int tid) {
  for (int e = tid; e < ROWS * PT; e += kThreads) {
    const int r = e / PT;
    const int p = e % PT;
    const int64_t n = n0 + r;
    vs[r][p] = (n < N && p < P) ? v[n * P + p] : 0.0f;
  }
}

// ---------------------------------------------------------------------------------------------
// Blocks of the grad/bwd kernels. Block (x, y) owns columns d0 = 128 x .. d0+127 and the row
// chunks y, y + S, y + 2S, ... (S = gridDim.y splits). Thread tid = 32 py + cx owns probes
// py + 8 j and columns d0 + cx + 32 i of the block's [PT, 128] probe x column tile.

struct ColTileBlock {
  int tid, cx, py;
  int64_t d0, split, num_splits;
};

__device__ __forceinline__ ColTileBlock col_tile_block() {
  ColTileBlock blk;
  blk.tid = static_cast<int>(threadIdx.x);
  blk.cx = blk.tid % 32;
  blk.py = blk.tid / 32;
  blk.d0 = static_cast<int64_t>(blockIdx.x) * kColTile;
  blk.split = blockIdx.y;
  blk.num_splits = gridDim.y;
  return blk;
}

// total[j][i] += Σ_r vs[r][py + 8 j] zs[r][cx + 32 i] over the ROWS staged rows.
template <int ROWS, int PT, int TP, int CT>
__device__ __forceinline__ void accumulate_probe_tile(float (&total)[TP][CT],
                                                      const float (&vs)[ROWS][PT],
                                                      const float (&zs)[ROWS][kColTile], int py,
                                                      int cx) {
  accumulate_chunk<ROWS, 4>(
      total, [&](int r, int j) { return vs[r][py + 8 * j]; },
      [&](int r, int i) { return zs[r][cx + 32 * i]; });
}

// out[p, d] = total[j][i] for the valid probes and columns of the tile; out is [P, D].
template <int TP, int CT>
__device__ __forceinline__ void store_probe_tile(float* out, const float (&total)[TP][CT], int P,
                                                 int64_t D, int64_t d0, int py, int cx) {
#pragma unroll
  for (int j = 0; j < TP; ++j) {
    const int p = py + 8 * j;
    if (p >= P) continue;
#pragma unroll
    for (int i = 0; i < CT; ++i) {
      const int64_t d = d0 + cx + 32 * i;
      if (d < D) out[p * D + d] = total[j][i];
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Forward pass 1: pred[n, p] = Σ_d z[n, d] w[p, d] + b[p];  resid = pred - t.
//
// Thread layout: tid = 8 * ty + pg. Thread (ty, pg) computes rows ty + 32 i (i < 4) of the tile
// and probes pg + 8 j (j < PT / 8). PT is P rounded up to a supported tile width.
template <typename T, bool DIFF, int PT>
__global__ void __launch_bounds__(kThreads)
    pred_kernel(const T* __restrict__ hx, int64_t sx, const T* __restrict__ hm, int64_t sm,
                const float* __restrict__ w, const float* __restrict__ b,
                const float* __restrict__ t, int64_t N, int64_t D, int P, float* pred,
                float* resid) {
  constexpr int TP = PT / 8;                 // probes per thread
  constexpr int RT = kPredRows / 32;         // rows per thread (4)
  __shared__ float zs[kPredRows][kPredK + 1];  // +1: rows land in different banks
  __shared__ float ws[PT][kPredK + 1];

  const int tid = static_cast<int>(threadIdx.x);
  const int pg = tid % 8;
  const int ty = tid / 8;
  const int64_t num_tiles = (N + kPredRows - 1) / kPredRows;

  for (int64_t tile = blockIdx.x; tile < num_tiles; tile += gridDim.x) {
    const int64_t row0 = tile * kPredRows;
    float total[RT][TP];
    zero_tile(total);

    for (int64_t k0 = 0; k0 < D; k0 += kPredK) {
      // Stage z[row0 : row0+128, k0 : k0+32] and w[0 : PT, k0 : k0+32].
      stage_z<T, DIFF, kPredRows, kPredK>(zs, hx, sx, hm, sm, N, D, row0, k0, tid);
      stage_w<kPredK>(ws, w, P, D, k0, tid);
      __syncthreads();
      accumulate_chunk<kPredK, 4>(
          total, [&](int k, int i) { return zs[ty + 32 * i][k]; },
          [&](int k, int j) { return ws[pg + 8 * j][k]; });
      __syncthreads();  // zs/ws are overwritten by the next chunk
    }

#pragma unroll
    for (int i = 0; i < RT; ++i) {
      const int64_t n = row0 + ty + 32 * i;
      if (n >= N) continue;
#pragma unroll
      for (int j = 0; j < TP; ++j) {
        const int p = pg + 8 * j;
        if (p >= P) continue;
        const int64_t o = n * P + p;
        const float v = total[i][j] + (b != nullptr ? b[p] : 0.0f);
        pred[o] = v;
        if (t != nullptr) resid[o] = v - t[o];
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Forward pass 2: partial G[s, p, d] = Σ_{n in split s} resid[n, p] z[n, d], and for column tile
// 0 also partial gb[s, p] = Σ resid[n, p], sse[s, p] = Σ resid[n, p]². Chunks of 32 rows; the
// block and thread layout is ColTileBlock's.
template <typename T, bool DIFF, int PT>
__global__ void __launch_bounds__(kThreads)
    grad_partial_kernel(const T* __restrict__ hx, int64_t sx, const T* __restrict__ hm, int64_t sm,
                        const float* __restrict__ resid, int64_t N, int64_t D, int P,
                        float* g_part, double* gb_part, double* sse_part) {
  constexpr int TP = PT / 8;          // probes per thread
  constexpr int CT = kColTile / 32;   // columns per thread (4)
  __shared__ float zs[kGradRows][kColTile];
  __shared__ float rs[kGradRows][PT];

  const auto [tid, cx, py, d0, split, num_splits] = col_tile_block();
  const int64_t num_chunks = (N + kGradRows - 1) / kGradRows;
  const bool do_sums = blockIdx.x == 0 && tid < P;

  float total[TP][CT];
  zero_tile(total);
  double sum1 = 0.0;
  double sum2 = 0.0;

  for (int64_t chunk = split; chunk < num_chunks; chunk += num_splits) {
    const int64_t n0 = chunk * kGradRows;
    // Stage z[n0 : n0+32, d0 : d0+128] and resid[n0 : n0+32, 0 : PT].
    stage_z<T, DIFF, kGradRows, kColTile>(zs, hx, sx, hm, sm, N, D, n0, d0, tid);
    stage_probe_rows(rs, resid, P, N, n0, tid);
    __syncthreads();

    accumulate_probe_tile(total, rs, zs, py, cx);
    if (do_sums) {
      for (int r = 0; r < kGradRows; ++r) {
        const double v = rs[r][tid];
        sum1 += v;
        sum2 += v * v;
      }
    }
    __syncthreads();  // zs/rs are overwritten by the next chunk
  }

  store_probe_tile(g_part + split * P * D, total, P, D, d0, py, cx);
  if (do_sums) {
    gb_part[split * P + tid] = sum1;
    sse_part[split * P + tid] = sum2;
  }
}

// ---------------------------------------------------------------------------------------------
// out[i] = Σ_{s < S} part[s * PD + i] for i < PD, summed in split order. When gb_part is given,
// also gb[p] = Σ_s gb_part[s * P + p] and sse[p] = Σ_s sse_part[s * P + p] for p < P.
__global__ void __launch_bounds__(kThreads)
    reduce_partials_kernel(const float* __restrict__ part, int64_t S, int64_t PD, float* out,
                           const double* __restrict__ gb_part, const double* __restrict__ sse_part,
                           int P, float* gb, float* sse) {
  const int64_t extra = gb_part != nullptr ? P : 0;
  const int64_t total = PD + extra;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += stride) {
    if (idx < PD) {
      float acc = 0.0f;
      for (int64_t s = 0; s < S; ++s) acc += part[s * PD + idx];
      out[idx] = acc;
    } else {
      const int64_t p = idx - PD;
      double a1 = 0.0;
      double a2 = 0.0;
      for (int64_t s = 0; s < S; ++s) {
        a1 += gb_part[s * P + p];
        a2 += sse_part[s * P + p];
      }
      gb[p] = static_cast<float>(a1);
      sse[p] = static_cast<float>(a2);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Backward

// acc[m][i] = Σ_p gs[py + 8 m][p] ws[p][cx + 32 i]: the gz tile of rows py + 8 m of the staged
// chunk and columns cx + 32 i of the block.
template <int ROWS, int PT, int RT, int CT>
__device__ __forceinline__ void gz_tile(float (&acc)[RT][CT], const float (&gs)[ROWS][PT],
                                        const float (&ws)[PT][kColTile], int py, int cx) {
  zero_tile(acc);
  fma_tile<PT, 8>(
      acc, [&](int p, int m) { return gs[py + 8 * m][p]; },
      [&](int p, int i) { return ws[p][cx + 32 * i]; });
}

// Writes the gz tile of rows n0 + py + 8 m and columns d0 + cx + 32 i: ghm = gz, ghx = ∓gz
// (each skipped when nullptr).
template <typename T, bool DIFF, int RT, int CT>
__device__ __forceinline__ void store_gz_tile(const float (&acc)[RT][CT], T* ghx, T* ghm,
                                              int64_t N, int64_t D, int64_t n0, int64_t d0,
                                              int py, int cx) {
#pragma unroll
  for (int m = 0; m < RT; ++m) {
    const int64_t n = n0 + py + 8 * m;
    if (n >= N) continue;
#pragma unroll
    for (int i = 0; i < CT; ++i) {
      const int64_t d = d0 + cx + 32 * i;
      if (d >= D) continue;
      const int64_t o = n * D + d;
      if (ghm != nullptr) store_f32(ghm + o, acc[m][i]);
      if (ghx != nullptr) store_f32(ghx + o, DIFF ? -acc[m][i] : acc[m][i]);
    }
  }
}

// The backward kernel: gz[n, d] = Σ_p g[n, p] w[p, d] -> ghx = ∓gz, ghm = +gz; partial
// gw[s, p, d] = Σ_{n in split s} g[n, p] z[n, d].
//
// Chunks of 16 rows; the block and thread layout is ColTileBlock's. For gz, thread (py, cx) owns
// rows py + 8 m (m < 2) of the chunk and columns d0 + cx + 32 i (i < 4); for gw it owns probes
// py + 8 j (j < PT / 8) and the same columns.
template <typename T, bool DIFF, int PT>
__global__ void __launch_bounds__(kThreads)
    bwd_kernel(const T* __restrict__ hx, int64_t sx, const T* __restrict__ hm, int64_t sm,
               const float* __restrict__ w, const float* __restrict__ g, int64_t N, int64_t D,
               int P, float* gw_part, T* ghx, T* ghm) {
  constexpr int TP = PT / 8;            // gw: probes per thread
  constexpr int CT = kColTile / 32;     // columns per thread (4)
  constexpr int RT = kBwdRows / 8;      // gz: rows per thread (2)
  __shared__ float ws[PT][kColTile];
  __shared__ float gs[kBwdRows][PT];
  __shared__ float zs[kBwdRows][kColTile];

  const auto [tid, cx, py, d0, split, num_splits] = col_tile_block();
  const int64_t num_chunks = (N + kBwdRows - 1) / kBwdRows;
  const bool need_gw = gw_part != nullptr;
  const bool need_gz = ghx != nullptr || ghm != nullptr;

  // Stage w[0 : PT, d0 : d0+128] once; the first barrier in the loop orders it before any read.
  stage_w<kColTile>(ws, w, P, D, d0, tid);

  float total[TP][CT];
  zero_tile(total);

  for (int64_t chunk = split; chunk < num_chunks; chunk += num_splits) {
    const int64_t n0 = chunk * kBwdRows;
    // Stage g[n0 : n0+16, 0 : PT], and z[n0 : n0+16, d0 : d0+128] when gw needs it.
    stage_probe_rows(gs, g, P, N, n0, tid);
    if (need_gw) stage_z<T, DIFF, kBwdRows, kColTile>(zs, hx, sx, hm, sm, N, D, n0, d0, tid);
    __syncthreads();

    if (need_gz) {
      float acc[RT][CT];
      gz_tile(acc, gs, ws, py, cx);
      store_gz_tile<T, DIFF>(acc, ghx, ghm, N, D, n0, d0, py, cx);
    }
    if (need_gw) accumulate_probe_tile(total, gs, zs, py, cx);
    __syncthreads();  // gs/zs are overwritten by the next chunk
  }

  if (need_gw) store_probe_tile(gw_part + split * P * D, total, P, D, d0, py, cx);
}

// ---------------------------------------------------------------------------------------------
// Host helpers

// Row splits S of the split-K kernels: about kTargetBlocks blocks in all, at most one split per
// row chunk. Depends only on the sizes, so results do not depend on the device.
int64_t num_splits(int64_t N, int64_t D, int rows_per_chunk) {
  const int64_t col_tiles = ceil_div(D, kColTile);
  const int64_t chunks = ceil_div(N, rows_per_chunk);
  int64_t s = ceil_div(kTargetBlocks, col_tiles);
  s = std::min(s, chunks);
  return std::max<int64_t>(s, 1);
}

// Scratch layout of the forward: [G partials: S*P*D float][gb partials: S*P double]
// [sse partials: S*P double], each section starting on a kScratchAlign boundary.
struct FwdScratch {
  int64_t splits, g_bytes, sums_bytes, total;
};

FwdScratch fwd_scratch(int64_t N, int64_t D, int64_t P) {
  FwdScratch f{};
  f.splits = num_splits(N, D, kGradRows);
  f.g_bytes = align_up(f.splits * P * D * static_cast<int64_t>(sizeof(float)));
  f.sums_bytes = align_up(f.splits * P * static_cast<int64_t>(sizeof(double)));
  f.total = f.g_bytes + 2 * f.sums_bytes;
  return f;
}

// What both directions take: the hidden states (z = hm - hx, or hx alone), the probe weights,
// the sizes and the stream.
struct Operands {
  const void* hx;
  int64_t sx;
  const void* hm;
  int64_t sm;
  const float* w;
  int64_t N, D, P;
  cudaStream_t stream;
};

const char* check_common(DType dtype, const Operands& in) {
  if (dtype != DType::kFloat32 && dtype != DType::kBFloat16)
    return "delta_probe (CUDA): hidden states must be float32 or bfloat16";
  if (in.N < 0) return "delta_probe (CUDA): N must be >= 0";
  if (in.D < 1) return "delta_probe (CUDA): D must be >= 1";
  if (in.P < 1 || in.P > kMaxProbes) return "delta_probe (CUDA): P must be in [1, 64]";
  if (in.sx < 0 || (in.hm != nullptr && in.sm < 0))
    return "delta_probe (CUDA): row strides must be >= 0";
  if (in.N > 0 && (in.hx == nullptr || in.w == nullptr))
    return "delta_probe (CUDA): hx and w must not be null";
  return nullptr;
}

struct FwdArgs : Operands {
  explicit FwdArgs(const Operands& in) : Operands(in) {}
  const float* b = nullptr;
  const float* t = nullptr;
  float* pred = nullptr;
  float* resid = nullptr;
  float* sse = nullptr;
  float* G = nullptr;
  float* gb = nullptr;
  FwdScratch layout{};
  char* scratch = nullptr;
};

struct BwdArgs : Operands {
  explicit BwdArgs(const Operands& in) : Operands(in) {}
  const float* g = nullptr;
  float* gw = nullptr;
  void* ghx = nullptr;
  void* ghm = nullptr;
  int64_t splits = 0;
  float* gw_part = nullptr;
};

const char* launch_reduce(const float* part, int64_t S, int64_t PD, float* out,
                          const double* gb_part, const double* sse_part, int P, float* gb,
                          float* sse, cudaStream_t stream, const char* what) {
  const int64_t total = PD + (gb_part != nullptr ? P : 0);
  const int64_t blocks = std::min(ceil_div(total, kThreads), kMaxReduceBlocks);
  reduce_partials_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      part, S, PD, out, gb_part, sse_part, P, gb, sse);
  return check_launch(what);
}

template <typename T, bool DIFF, int PT>
const char* fwd_launch(const FwdArgs& a) {
  const T* hx = static_cast<const T*>(a.hx);
  const T* hm = static_cast<const T*>(a.hm);
  const int P = static_cast<int>(a.P);

  const int64_t pred_blocks = std::min(ceil_div(a.N, kPredRows), kMaxPredBlocks);
  pred_kernel<T, DIFF, PT><<<static_cast<unsigned>(pred_blocks), kThreads, 0, a.stream>>>(
      hx, a.sx, hm, a.sm, a.w, a.b, a.t, a.N, a.D, P, a.pred, a.resid);
  if (const char* err = check_launch("delta_probe_fwd: pred kernel launch failed")) return err;
  if (a.t == nullptr) return nullptr;

  const int64_t S = a.layout.splits;
  float* g_part = reinterpret_cast<float*>(a.scratch);
  double* gb_part = reinterpret_cast<double*>(a.scratch + a.layout.g_bytes);
  double* sse_part = reinterpret_cast<double*>(a.scratch + a.layout.g_bytes + a.layout.sums_bytes);
  const dim3 grid(static_cast<unsigned>(ceil_div(a.D, kColTile)), static_cast<unsigned>(S));
  grad_partial_kernel<T, DIFF, PT><<<grid, kThreads, 0, a.stream>>>(
      hx, a.sx, hm, a.sm, a.resid, a.N, a.D, P, g_part, gb_part, sse_part);
  if (const char* err = check_launch("delta_probe_fwd: gradient kernel launch failed")) return err;

  return launch_reduce(g_part, S, a.P * a.D, a.G, gb_part, sse_part, P, a.gb, a.sse, a.stream,
                       "delta_probe_fwd: reduction kernel launch failed");
}

template <typename T, bool DIFF, int PT>
const char* bwd_launch(const BwdArgs& a) {
  const T* hx = static_cast<const T*>(a.hx);
  const T* hm = static_cast<const T*>(a.hm);
  const int P = static_cast<int>(a.P);
  float* gw_part = a.gw != nullptr ? a.gw_part : nullptr;

  const dim3 grid(static_cast<unsigned>(ceil_div(a.D, kColTile)),
                  static_cast<unsigned>(a.splits));
  bwd_kernel<T, DIFF, PT><<<grid, kThreads, 0, a.stream>>>(
      hx, a.sx, hm, a.sm, a.w, a.g, a.N, a.D, P, gw_part, static_cast<T*>(a.ghx),
      static_cast<T*>(a.ghm));
  if (const char* err = check_launch("delta_probe_bwd: kernel launch failed")) return err;
  if (a.gw == nullptr) return nullptr;

  return launch_reduce(gw_part, a.splits, a.P * a.D, a.gw, nullptr, nullptr, P, nullptr, nullptr,
                       a.stream, "delta_probe_bwd: reduction kernel launch failed");
}

template <typename T>
struct TypeTag {
  using type = T;
};

// Picks the element type, the mode and the probe tile width PT (P rounded up to 8, 16, 32, 64).
template <template <typename, bool, int> class Launcher, typename Args>
const char* dispatch(DType dtype, bool diff, int64_t P, const Args& a) {
  auto by_width = [&](auto type_tag, auto diff_tag) -> const char* {
    using T = typename decltype(type_tag)::type;
    constexpr bool kDiff = decltype(diff_tag)::value;
    if (P <= 8) return Launcher<T, kDiff, 8>::run(a);
    if (P <= 16) return Launcher<T, kDiff, 16>::run(a);
    if (P <= 32) return Launcher<T, kDiff, 32>::run(a);
    return Launcher<T, kDiff, 64>::run(a);
  };
  auto by_mode = [&](auto type_tag) -> const char* {
    if (diff) return by_width(type_tag, std::true_type{});
    return by_width(type_tag, std::false_type{});
  };
  if (dtype == DType::kBFloat16) return by_mode(TypeTag<__nv_bfloat16>{});
  return by_mode(TypeTag<float>{});
}

template <typename T, bool DIFF, int PT>
struct FwdLauncher {
  static const char* run(const FwdArgs& a) { return fwd_launch<T, DIFF, PT>(a); }
};

template <typename T, bool DIFF, int PT>
struct BwdLauncher {
  static const char* run(const BwdArgs& a) { return bwd_launch<T, DIFF, PT>(a); }
};

}  // namespace

namespace cuda {

int64_t delta_probe_fwd_scratch_bytes(int64_t N, int64_t D, int64_t P) {
  if (N <= 0 || D <= 0 || P <= 0) return 0;
  return fwd_scratch(N, D, P).total;
}

int64_t delta_probe_bwd_scratch_bytes(int64_t N, int64_t D, int64_t P) {
  if (N <= 0 || D <= 0 || P <= 0) return 0;
  return align_up(num_splits(N, D, kBwdRows) * P * D * static_cast<int64_t>(sizeof(float)));
}

const char* delta_probe_fwd(DType dtype, const void* hx, int64_t sx, const void* hm, int64_t sm,
                            const float* w, const float* b, const float* t, int64_t N, int64_t D,
                            int64_t P, float* pred, float* resid, float* sse, float* G, float* gb,
                            void* scratch, int64_t scratch_bytes, void* stream) {
  const Operands in{hx, sx, hm, sm, w, N, D, P, static_cast<cudaStream_t>(stream)};
  if (const char* err = check_common(dtype, in)) return err;
  const bool train = t != nullptr;
  if (N > 0 && pred == nullptr) return "delta_probe_fwd (CUDA): pred must not be null";
  if (train && (sse == nullptr || G == nullptr || gb == nullptr || (N > 0 && resid == nullptr)))
    return "delta_probe_fwd (CUDA): resid, sse, G and gb are required when t is given";
  cudaStream_t st = in.stream;

  if (N == 0) {  // empty sums
    if (!train) return nullptr;
    cudaError_t err = cudaMemsetAsync(G, 0, static_cast<size_t>(P * D) * sizeof(float), st);
    if (err == cudaSuccess) err = cudaMemsetAsync(sse, 0, static_cast<size_t>(P) * sizeof(float), st);
    if (err == cudaSuccess) err = cudaMemsetAsync(gb, 0, static_cast<size_t>(P) * sizeof(float), st);
    return err == cudaSuccess ? nullptr : cuda_failure("delta_probe_fwd: cudaMemsetAsync failed", err);
  }

  FwdArgs a(in);
  a.b = b;
  a.t = t;
  a.pred = pred;
  a.resid = train ? resid : nullptr;
  a.sse = sse;
  a.G = G;
  a.gb = gb;
  if (train) {
    a.layout = fwd_scratch(N, D, P);
    if (scratch == nullptr || scratch_bytes < a.layout.total)
      return "delta_probe_fwd (CUDA): scratch is smaller than delta_probe_fwd_scratch_bytes()";
    if (reinterpret_cast<uintptr_t>(scratch) % 16 != 0)
      return "delta_probe_fwd (CUDA): scratch must be 16-byte aligned";
    a.scratch = static_cast<char*>(scratch);
  }
  return dispatch<FwdLauncher>(dtype, hm != nullptr, P, a);
}

const char* delta_probe_bwd(DType dtype, const void* hx, int64_t sx, const void* hm, int64_t sm,
                            const float* w, const float* g, int64_t N, int64_t D, int64_t P,
                            float* gw, void* ghx, void* ghm, void* scratch, int64_t scratch_bytes,
                            void* stream) {
  const Operands in{hx, sx, hm, sm, w, N, D, P, static_cast<cudaStream_t>(stream)};
  if (const char* err = check_common(dtype, in)) return err;
  if (N > 0 && g == nullptr) return "delta_probe_bwd (CUDA): g must not be null";
  cudaStream_t st = in.stream;

  if (N == 0) {  // empty sum; ghx/ghm are empty
    if (gw == nullptr) return nullptr;
    const cudaError_t err =
        cudaMemsetAsync(gw, 0, static_cast<size_t>(P * D) * sizeof(float), st);
    return err == cudaSuccess ? nullptr : cuda_failure("delta_probe_bwd: cudaMemsetAsync failed", err);
  }
  if (gw == nullptr && ghx == nullptr && ghm == nullptr) return nullptr;

  BwdArgs a(in);
  a.g = g;
  a.gw = gw;
  a.ghx = ghx;
  a.ghm = ghm;
  a.splits = num_splits(N, D, kBwdRows);
  if (gw != nullptr) {
    if (scratch == nullptr || scratch_bytes < delta_probe_bwd_scratch_bytes(N, D, P))
      return "delta_probe_bwd (CUDA): scratch is smaller than delta_probe_bwd_scratch_bytes()";
    if (reinterpret_cast<uintptr_t>(scratch) % 16 != 0)
      return "delta_probe_bwd (CUDA): scratch must be 16-byte aligned";
    a.gw_part = static_cast<float*>(scratch);
  }
  return dispatch<BwdLauncher>(dtype, hm != nullptr, P, a);
}

const char* compiled_kernels() { return "delta_probe_fwd,delta_probe_bwd"; }

}  // namespace cuda
}  // namespace introspect
