// delta_probe, CPU: one pass over the rows computes prediction, residual, squared error and the
// weight gradient together.
//
// Rows are processed in blocks of kRows. For each block, z = hm - hx (or hx) is converted to
// float32 into a small buffer that stays in L1, the P dot products of each row are accumulated in
// kLanes-wide partial sums (reading each probe's weights once per block, not once per row), and
// the residual-weighted rows are added into a per-thread gradient. Per-thread partials are
// reduced in thread order, so the result is deterministic for a given thread count.
#include "delta_probe.h"

#include <algorithm>
#include <vector>

#include "parallel.h"
#include "simd.h"

namespace introspect::cpu {
namespace {

constexpr long kRows = 8;          // rows per block
constexpr long kTileRows = 4;      // rows per register tile of the dot products
constexpr long kProbes = 4;        // probes per register tile; P is padded to a multiple
constexpr long kFlushRows = 512;   // rows summed in a local gradient before it joins the total

template <typename T>
INTROSPECT_INLINE float to_f32(const T* p, long i) {
  if constexpr (sizeof(T) == 2) {
    return bf16_to_float(p[i]);
  } else {
    return p[i];
  }
}

template <typename T>
INTROSPECT_INLINE void make_z_impl(const T* x, const T* m, long D, long Dp, float* dst) {
  const long Dv = D / kLanes * kLanes;
  if (m != nullptr) {
    for (long d = 0; d < Dv; d += kLanes) store(dst + d, load(m + d) - load(x + d));
    for (long d = Dv; d < D; ++d) dst[d] = to_f32(m, d) - to_f32(x, d);
  } else {
    for (long d = 0; d < Dv; d += kLanes) store(dst + d, load(x + d));
    for (long d = Dv; d < D; ++d) dst[d] = to_f32(x, d);
  }
  for (long d = D; d < Dp; ++d) dst[d] = 0.0f;
}

INTROSPECT_CLONES void make_z_f32(const float* x, const float* m, long D, long Dp, float* dst) {
  make_z_impl(x, m, D, Dp, dst);
}

INTROSPECT_CLONES void make_z_bf16(const uint16_t* x, const uint16_t* m, long D, long Dp,
                                   float* dst) {
  make_z_impl(x, m, D, Dp, dst);
}

// Dot products of a row block, two layouts:
//  - few probes (Pp <= 8): vectors run along D; a register tile of kTileRows rows x kProbes
//    probes reuses every loaded vector several times, then one horizontal sum per (row, probe);
//  - many probes: vectors run along the probes of a transposed weight copy Wt [Dp, Pp], and each
//    z element is broadcast, so no horizontal sums are needed at all.
// out[r*Pp + p] = zb[r] · w[p] for the kRows rows of the block (padded rows are zero).
INTROSPECT_CLONES void block_dots_few(const float* zb, const float* Wp, long Pp, long Dp,
                                      float* out) {
  for (long p0 = 0; p0 < Pp; p0 += kProbes) {
    for (long r0 = 0; r0 < kRows; r0 += kTileRows) {
      vfloat acc[kTileRows][kProbes] = {};
      for (long d0 = 0; d0 < Dp; d0 += kLanes) {
        vfloat z[kTileRows];
#pragma GCC unroll 4
        for (long r = 0; r < kTileRows; ++r) z[r] = load(zb + (r0 + r) * Dp + d0);
#pragma GCC unroll 4
        for (long q = 0; q < kProbes; ++q) {
          const vfloat wv = load(Wp + (p0 + q) * Dp + d0);
#pragma GCC unroll 4
          for (long r = 0; r < kTileRows; ++r) acc[r][q] += z[r] * wv;
        }
      }
      for (long r = 0; r < kTileRows; ++r)
        for (long q = 0; q < kProbes; ++q) out[(r0 + r) * Pp + p0 + q] = lane_sum(acc[r][q]);
    }
  }
}

INTROSPECT_CLONES void block_dots_many(const float* zb, const float* Wt, long Pp, long D, long Dp,
                                       float* out) {
  for (long p0 = 0; p0 < Pp; p0 += kLanes) {
    vfloat acc[kRows] = {};
    for (long d = 0; d < D; ++d) {
      const vfloat wv = load(Wt + d * Pp + p0);
#pragma GCC unroll 8
      for (long r = 0; r < kRows; ++r) acc[r] += wv * zb[r * Dp + d];
    }
#pragma GCC unroll 8
    for (long r = 0; r < kRows; ++r) store(out + r * Pp + p0, acc[r]);
  }
}

// Gp[p] += Σ_r coef[r*Pp + p] · zb[r] over the rows of the block (coefficients of padded rows
// and padded probes are zero). Each z vector is loaded once per group of GROUP probes, and the
// GROUP accumulators are independent FMA chains.
template <long GROUP>
INTROSPECT_INLINE void block_accumulate_impl(const float* zb, const float* coef, long Pp, long Dp,
                                             float* Gp) {
  for (long p0 = 0; p0 < Pp; p0 += GROUP) {
    for (long d0 = 0; d0 < Dp; d0 += kLanes) {
      vfloat g[GROUP];
#pragma GCC unroll 8
      for (long q = 0; q < GROUP; ++q) g[q] = load(Gp + (p0 + q) * Dp + d0);
#pragma GCC unroll 8
      for (long r = 0; r < kRows; ++r) {
        const vfloat z = load(zb + r * Dp + d0);
#pragma GCC unroll 8
        for (long q = 0; q < GROUP; ++q) g[q] += z * coef[r * Pp + p0 + q];
      }
#pragma GCC unroll 8
      for (long q = 0; q < GROUP; ++q) store(Gp + (p0 + q) * Dp + d0, g[q]);
    }
  }
}

INTROSPECT_CLONES void block_accumulate(const float* zb, const float* coef, long Pp, long Dp,
                                        float* Gp) {
  if (Pp % 8 == 0) {
    block_accumulate_impl<8>(zb, coef, Pp, Dp, Gp);
  } else {
    block_accumulate_impl<kProbes>(zb, coef, Pp, Dp, Gp);
  }
}

INTROSPECT_CLONES void add_into(float* dst, float* src, long n) {
  for (long i = 0; i < n; ++i) {
    dst[i] += src[i];
    src[i] = 0.0f;
  }
}

// out[d] = sign · Σ_p g[p] Wp[p, d]
INTROSPECT_CLONES void row_matvec(const float* g, const float* Wp, long P, long Dp, float sign,
                                  float* out) {
  for (long d0 = 0; d0 < Dp; d0 += kLanes) {
    vfloat acc = {};
    for (long p = 0; p < P; ++p) acc += load(Wp + p * Dp + d0) * g[p];
    store(out + d0, acc * sign);
  }
}

INTROSPECT_CLONES void store_row_bf16(const float* src, long D, float sign, uint16_t* dst) {
  for (long d = 0; d < D; ++d) dst[d] = float_to_bf16(sign * src[d]);
}

void make_z(DType dtype, const void* hx, int64_t sx, const void* hm, int64_t sm, long n, long D,
            long Dp, float* dst) {
  if (dtype == DType::kFloat32) {
    const float* x = static_cast<const float*>(hx) + n * sx;
    const float* m = hm ? static_cast<const float*>(hm) + n * sm : nullptr;
    make_z_f32(x, m, D, Dp, dst);
  } else {
    const uint16_t* x = static_cast<const uint16_t*>(hx) + n * sx;
    const uint16_t* m = hm ? static_cast<const uint16_t*>(hm) + n * sm : nullptr;
    make_z_bf16(x, m, D, Dp, dst);
  }
}

// Fills one row block of z; rows past `nr` are zero.
void make_block(DType dtype, const void* hx, int64_t sx, const void* hm, int64_t sm, long n0,
                long nr, long D, long Dp, float* zb) {
  for (long r = 0; r < nr; ++r) make_z(dtype, hx, sx, hm, sm, n0 + r, D, Dp, zb + r * Dp);
  std::fill(zb + nr * Dp, zb + kRows * Dp, 0.0f);
}

// Probes are padded to 4 or 8 (vectors along D) or to a multiple of kLanes (vectors along P).
constexpr long kManyProbes = 8;
long padded_probes(long P) {
  if (P <= kProbes) return kProbes;
  if (P <= kManyProbes) return kManyProbes;
  return round_up(P, kLanes);
}

// w [P, D] copied into a zero-padded [Pp, Dp] buffer.
std::vector<float> padded_weights(const float* w, long P, long Pp, long D, long Dp) {
  std::vector<float> Wp(static_cast<size_t>(Pp * Dp), 0.0f);
  for (long p = 0; p < P; ++p) std::copy(w + p * D, w + (p + 1) * D, Wp.begin() + p * Dp);
  return Wp;
}

// Weights laid out for the dot products of a row block.
struct BlockWeights {
  long P, Pp, D, Dp;
  std::vector<float> rows;        // [Pp, Dp], zero padded
  std::vector<float> transposed;  // [D, Pp], zero padded; only when Pp > kManyProbes
  BlockWeights(const float* w, long P_, long D_)
      : P(P_),
        Pp(padded_probes(P_)),
        D(D_),
        Dp(round_up(D_, kLanes)),
        rows(padded_weights(w, P, Pp, D, Dp)) {
    if (Pp > kManyProbes) {
      transposed.assign(static_cast<size_t>(D * Pp), 0.0f);
      for (long p = 0; p < P; ++p)
        for (long d = 0; d < D; ++d) transposed[d * Pp + p] = w[p * D + d];
    }
  }
  void dots(const float* zb, float* out) const {
    if (Pp > kManyProbes) {
      block_dots_many(zb, transposed.data(), Pp, D, Dp, out);
    } else {
      block_dots_few(zb, rows.data(), Pp, Dp, out);
    }
  }
};

// Per-thread gradient accumulator with a local chunk so long sums stay accurate in float32.
struct GradAccumulator {
  std::vector<float> total, chunk;
  long rows = 0;
  explicit GradAccumulator(size_t n) : total(n, 0.0f), chunk(n, 0.0f) {}
  // coef: [kRows, Pp], zero for padded rows and probes.
  void add(const float* zb, const float* coef, long nr, long Pp, long Dp) {
    block_accumulate(zb, coef, Pp, Dp, chunk.data());
    rows += nr;
    if (rows >= kFlushRows) flush();
  }
  void flush() {
    add_into(total.data(), chunk.data(), static_cast<long>(total.size()));
    rows = 0;
  }
};

// G[p, :D] = Σ_threads partial[p, :Dp]
void reduce_grads(const std::vector<GradAccumulator>& parts, long P, long D, long Dp, float* G) {
  for (long p = 0; p < P; ++p)
    for (long d = 0; d < D; ++d) {
      float s = 0.0f;
      for (const auto& part : parts) s += part.total[p * Dp + d];
      G[p * D + d] = s;
    }
}

}  // namespace

void delta_probe_fwd(DType dtype, const void* hx, int64_t sx, const void* hm, int64_t sm,
                     const float* w, const float* b, const float* t, int64_t N, int64_t D,
                     int64_t P, float* pred, float* resid, float* sse, float* G, float* gb,
                     int threads) {
  const BlockWeights W(w, P, D);
  const long Dp = W.Dp, Pp = W.Pp;
  const bool train = t != nullptr;
  const int nt = threads_for(N * D * P * (train ? 2 : 1), threads);

  std::vector<GradAccumulator> grads;
  if (train) grads.assign(nt, GradAccumulator(static_cast<size_t>(Pp * Dp)));
  std::vector<double> sse_part(static_cast<size_t>(nt * P), 0.0), gb_part(sse_part);

  parallel_ranges(N, nt, [&](int tid, int64_t begin, int64_t end) {
    std::vector<float> zb(static_cast<size_t>(kRows * Dp));
    std::vector<float> out(static_cast<size_t>(kRows * Pp));
    double* my_sse = sse_part.data() + tid * P;
    double* my_gb = gb_part.data() + tid * P;
    for (int64_t n0 = begin; n0 < end; n0 += kRows) {
      const long nr = static_cast<long>(std::min<int64_t>(kRows, end - n0));
      make_block(dtype, hx, sx, hm, sm, n0, nr, D, Dp, zb.data());
      W.dots(zb.data(), out.data());
      for (long r = 0; r < nr; ++r) {
        for (long p = 0; p < P; ++p) {
          const float v = out[r * Pp + p] + (b ? b[p] : 0.0f);
          const int64_t i = (n0 + r) * P + p;
          pred[i] = v;
          if (train) {
            const float e = v - t[i];
            resid[i] = e;
            out[r * Pp + p] = e;
            my_sse[p] += static_cast<double>(e) * e;
            my_gb[p] += e;
          }
        }
      }
      if (train) {
        // Padded probes and rows must not contribute: their coefficients are zero.
        for (long r = 0; r < kRows; ++r)
          for (long p = (r < nr ? P : 0); p < Pp; ++p) out[r * Pp + p] = 0.0f;
        grads[tid].add(zb.data(), out.data(), nr, Pp, Dp);
      }
    }
    if (train) grads[tid].flush();
  });

  if (!train) return;
  reduce_grads(grads, P, D, Dp, G);
  for (long p = 0; p < P; ++p) {
    double s = 0.0, g = 0.0;
    for (int i = 0; i < nt; ++i) {
      s += sse_part[i * P + p];
      g += gb_part[i * P + p];
    }
    sse[p] = static_cast<float>(s);
    gb[p] = static_cast<float>(g);
  }
}

void delta_probe_bwd(DType dtype, const void* hx, int64_t sx, const void* hm, int64_t sm,
                     const float* w, const float* g, int64_t N, int64_t D, int64_t P, float* gw,
                     void* ghx, void* ghm, int threads) {
  const long Dp = round_up(D, kLanes), Pp = padded_probes(P);
  const std::vector<float> Wp = padded_weights(w, P, Pp, D, Dp);
  const int nt = threads_for(N * D * P, threads);
  const bool want_gw = gw != nullptr, want_gh = ghx != nullptr || ghm != nullptr;
  const float x_sign = hm != nullptr ? -1.0f : 1.0f;

  std::vector<GradAccumulator> grads;
  if (want_gw) grads.assign(nt, GradAccumulator(static_cast<size_t>(Pp * Dp)));

  parallel_ranges(N, nt, [&](int tid, int64_t begin, int64_t end) {
    std::vector<float> zb(static_cast<size_t>(kRows * Dp));
    std::vector<float> row(static_cast<size_t>(Dp));
    std::vector<float> coef(static_cast<size_t>(kRows * Pp));
    for (int64_t n0 = begin; n0 < end; n0 += kRows) {
      const long nr = static_cast<long>(std::min<int64_t>(kRows, end - n0));
      if (want_gw) {
        make_block(dtype, hx, sx, hm, sm, n0, nr, D, Dp, zb.data());
        std::fill(coef.begin(), coef.end(), 0.0f);
        for (long r = 0; r < nr; ++r)
          std::copy(g + (n0 + r) * P, g + (n0 + r + 1) * P, coef.begin() + r * Pp);
        grads[tid].add(zb.data(), coef.data(), nr, Pp, Dp);
      }
      if (!want_gh) continue;
      for (long r = 0; r < nr; ++r) {
        const int64_t n = n0 + r;
        row_matvec(g + n * P, Wp.data(), P, Dp, 1.0f, row.data());
        if (dtype == DType::kFloat32) {
          if (ghx) {
            float* dst = static_cast<float*>(ghx) + n * D;
            for (long d = 0; d < D; ++d) dst[d] = x_sign * row[d];
          }
          if (ghm) std::copy(row.data(), row.data() + D, static_cast<float*>(ghm) + n * D);
        } else {
          if (ghx) store_row_bf16(row.data(), D, x_sign, static_cast<uint16_t*>(ghx) + n * D);
          if (ghm) store_row_bf16(row.data(), D, 1.0f, static_cast<uint16_t*>(ghm) + n * D);
        }
      }
    }
    if (want_gw) grads[tid].flush();
  });

  if (want_gw) reduce_grads(grads, P, D, Dp, gw);
}

}  // namespace introspect::cpu
