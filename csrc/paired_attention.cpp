// Attention over packed token tries, CPU, float32 (csrc/paired_attention.h).
//
// The unit of work is a tile of kLanes queries of one segment that share a key/value head: the
// segment's (query, head) pairs in query-major order, so grouped-query heads fill the lanes of
// short segments. The tile's queries sit transposed in lanes ([D][kLanes], scaled), so that
//   - a key's scores for the whole tile are one vector: Σ_d k[d] · Qᵀ[d] (kKeys keys at once,
//     each FMA taking its key element as a broadcast operand, no horizontal sums);
//   - the softmax runs along the keys lane by lane (vector max, exp, sum);
//   - the output, transposed, is Σ_j v[j][d] · p[j] for kLanes output dims at a time.
// A tile visits the segment's ancestor intervals, then its own keys up to its last query, the
// key after a lane's own position masked. Keys are read where they lie; nothing is gathered.
#include "paired_attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "parallel.h"
#include "simd.h"

namespace introspect::cpu {
namespace {

constexpr int kKeys = 8;  // keys whose scores accumulate together (independent FMA chains)
typedef int32_t vint __attribute__((vector_size(kLanes * sizeof(int32_t))));

INTROSPECT_INLINE vfloat splat(float f) { return vfloat{} + f; }

INTROSPECT_INLINE vfloat vmax(vfloat a, vfloat b) { return a > b ? a : b; }

// e^x lane by lane: x = n ln2 + r with |r| ≤ ln2 / 2, e^r by its degree-6 minimax polynomial
// (Cephes' expf coefficients), 2^n built in the exponent bits. Relative error about 2e-7;
// x < -87 (including -inf) gives 0.
INTROSPECT_INLINE vfloat vexp(vfloat x) {
  const vint tiny = x < splat(-87.0f);
  x = x > splat(88.0f) ? splat(88.0f) : x;
  x = tiny ? splat(-87.0f) : x;
  const vfloat magic = splat(12582912.0f);  // 1.5 · 2^23: adding it rounds to an integer
  const vfloat n = (x * splat(1.44269504088896341f) + magic) - magic;
  vfloat r = x - n * splat(0.693359375f);
  r = r - n * splat(-2.12194440e-4f);
  vfloat p = splat(1.9875691500e-4f);
  p = p * r + splat(1.3981999507e-3f);
  p = p * r + splat(8.3334519073e-3f);
  p = p * r + splat(4.1665795894e-2f);
  p = p * r + splat(1.6666665459e-1f);
  p = p * r + splat(5.0000001201e-1f);
  const vfloat y = p * r * r + r + splat(1.0f);
  const vint bits = (__builtin_convertvector(n, vint) + 127) << 23;
  vfloat two_n;
  __builtin_memcpy(&two_n, &bits, sizeof(two_n));
  return tiny ? vfloat{} : y * two_n;
}

struct Tile {
  int32_t seg, kv_head, first;  // first: index of the tile's first (query, head) pair
};

struct Scratch {
  std::vector<float> qt, scores, acc;
  std::vector<const float*> keys, values;
};

INTROSPECT_CLONES
void run_tile(const PairedAttentionArgs& a, const Tile& tile, Scratch& s) {
  const int64_t G = a.Hq / a.Hkv, D = a.D, P = a.P;
  const int64_t row = a.seg_row[tile.seg];
  const int64_t q0 = a.seg_q_start[tile.seg], q1 = a.seg_q_end[tile.seg];
  const int64_t pairs = (q1 - q0) * G;
  const int64_t valid = std::min<int64_t>(kLanes, pairs - tile.first);
  int64_t head[kLanes], pos[kLanes];
  for (int64_t l = 0; l < kLanes; ++l) {
    const int64_t i = tile.first + std::min(l, valid - 1);  // spare lanes repeat the last
    pos[l] = q0 + i / G;
    head[l] = tile.kv_head * G + i % G;
  }
  const float* kbase = a.k + row * a.kb + tile.kv_head * a.kh;
  const float* vbase = a.v + row * a.vb + tile.kv_head * a.vh;
  if (a.seg_self_only[tile.seg]) {  // padding: each query sees itself only
    for (int64_t l = 0; l < valid; ++l) {
      const float* src = vbase + (P + pos[l]) * a.vt;
      std::copy(src, src + D, a.out + row * a.ob + head[l] * a.oh + pos[l] * a.ot);
    }
    return;
  }

  // Qᵀ, scaled: qt[d][lane].
  s.qt.resize(D * kLanes);
  for (int64_t l = 0; l < kLanes; ++l) {
    const float* src = a.q + row * a.qb + head[l] * a.qh + pos[l] * a.qt;
    for (int64_t d = 0; d < D; ++d) s.qt[d * kLanes + l] = src[d] * a.scale;
  }

  // The keys the tile sees: ancestor intervals, then its own segment up to its last query.
  s.keys.clear();
  s.values.clear();
  for (int32_t i = a.kv_ptr[tile.seg]; i < a.kv_ptr[tile.seg + 1]; ++i)
    for (int64_t j = a.kv_start[i]; j < a.kv_end[i]; ++j) {
      s.keys.push_back(kbase + j * a.kt);
      s.values.push_back(vbase + j * a.vt);
    }
  const int64_t ancestors = static_cast<int64_t>(s.keys.size());
  for (int64_t j = P + q0; j <= P + pos[kLanes - 1]; ++j) {
    s.keys.push_back(kbase + j * a.kt);
    s.values.push_back(vbase + j * a.vt);
  }
  const int64_t n = static_cast<int64_t>(s.keys.size());
  for (int64_t j = n; j % kKeys; ++j) s.keys.push_back(s.keys[n - 1]);  // whole key blocks

  // Scores [n][lane] and their running maximum.
  s.scores.resize(n * kLanes);
  const float* qt = s.qt.data();
  float* sc = s.scores.data();
  const float neg_inf = -std::numeric_limits<float>::infinity();
  vfloat m = splat(neg_inf);
  for (int64_t j0 = 0; j0 < n; j0 += kKeys) {
    const float* const* kp = s.keys.data() + j0;
    vfloat acc[kKeys] = {};
    for (int64_t d = 0; d < D; ++d) {
      const vfloat qd = load(qt + d * kLanes);
      for (int i = 0; i < kKeys; ++i) acc[i] += qd * kp[i][d];
    }
    const int64_t cnt = std::min<int64_t>(kKeys, n - j0);
    for (int64_t i = 0; i < cnt; ++i) store(sc + (j0 + i) * kLanes, acc[i]);
  }
  vint lane_pos;
  for (int64_t l = 0; l < kLanes; ++l) lane_pos[l] = static_cast<int32_t>(pos[l]);
  for (int64_t j = ancestors; j < n; ++j) {  // own keys: causal
    const vint key_pos = vint{} + static_cast<int32_t>(q0 + j - ancestors);
    store(sc + j * kLanes, key_pos > lane_pos ? splat(neg_inf) : load(sc + j * kLanes));
  }
  for (int64_t j = 0; j < n; ++j) m = vmax(m, load(sc + j * kLanes));

  // p = e^(score - max), in place; their sum.
  vfloat sum = {};
  for (int64_t j = 0; j < n; ++j) {
    const vfloat p = vexp(load(sc + j * kLanes) - m);
    store(sc + j * kLanes, p);
    sum += p;
  }
  const vfloat inv = splat(1.0f) / sum;

  // Outᵀ[d][lane] = Σ_j v[j][d] p[j], kLanes dims at a time, then the remainder one by one.
  s.acc.resize(D * kLanes);
  float* ot = s.acc.data();
  const float* const* vp = s.values.data();
  int64_t d0 = 0;
  for (; d0 + kLanes <= D; d0 += kLanes) {
    vfloat acc[kLanes] = {};
    for (int64_t j = 0; j < n; ++j) {
      const vfloat p = load(sc + j * kLanes);
      const float* vr = vp[j] + d0;
      for (int64_t dd = 0; dd < kLanes; ++dd) acc[dd] += p * vr[dd];
    }
    for (int64_t dd = 0; dd < kLanes; ++dd) store(ot + (d0 + dd) * kLanes, acc[dd] * inv);
  }
  for (; d0 < D; ++d0) {
    vfloat acc = {};
    for (int64_t j = 0; j < n; ++j) acc += load(sc + j * kLanes) * vp[j][d0];
    store(ot + d0 * kLanes, acc * inv);
  }
  for (int64_t l = 0; l < valid; ++l) {
    float* dst = a.out + row * a.ob + head[l] * a.oh + pos[l] * a.ot;
    for (int64_t d = 0; d < D; ++d) dst[d] = ot[d * kLanes + l];
  }
}

}  // namespace

void paired_attention_fwd(const PairedAttentionArgs& a, int threads) {
  const int64_t G = a.Hq / a.Hkv;
  std::vector<Tile> tiles;
  std::vector<int64_t> cost_end;  // cumulative cost (keys read) after each tile
  int64_t work = 0;
  for (int64_t seg = 0; seg < a.segments; ++seg) {
    const int64_t q0 = a.seg_q_start[seg], len = a.seg_q_end[seg] - q0;
    int64_t seen = 0;
    for (int32_t i = a.kv_ptr[seg]; i < a.kv_ptr[seg + 1]; ++i) seen += a.kv_end[i] - a.kv_start[i];
    for (int64_t h = 0; h < a.Hkv; ++h)
      for (int64_t first = 0; first < len * G; first += kLanes) {
        tiles.push_back({static_cast<int32_t>(seg), static_cast<int32_t>(h),
                         static_cast<int32_t>(first)});
        const int64_t last = std::min(first + kLanes, len * G) - 1;
        work += a.seg_self_only[seg] ? 1 : seen + last / G + 1;
        cost_end.push_back(work);
      }
  }
  // Each thread takes a contiguous run of tiles of about equal cost (tiles of long segments
  // read more keys than those of short ones).
  const int team = threads_for(work * a.D * kLanes, threads);
  std::vector<int64_t> bounds(team + 1, static_cast<int64_t>(tiles.size()));
  bounds[0] = 0;
  for (int t = 1; t < team; ++t) {
    const int64_t target = work * t / team;
    bounds[t] = std::lower_bound(cost_end.begin(), cost_end.end(), target) - cost_end.begin();
  }
  parallel_ranges(team, team, [&](int, int64_t begin, int64_t end) {
    Scratch s;
    for (int64_t part = begin; part < end; ++part)
      for (int64_t t = bounds[part]; t < bounds[part + 1]; ++t) run_tile(a, tiles[t], s);
  });
}

}  // namespace introspect::cpu
