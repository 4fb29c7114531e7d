// Fused elementwise kernels of a Llama-family decoder forward, CPU. Rows are independent, so
// threads take contiguous row ranges; within a row, kLanes-wide blocks (the last one padded
// with zeros) go through the same vector code, so a row's result does not depend on its width
// being a multiple of kLanes. Compiled with -ffp-contract=off (CMakeLists.txt): every product
// and sum rounds on its own, as the separate PyTorch ops do.
#include "fused.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "parallel.h"
#include "simd.h"

namespace introspect::cpu {
namespace {

using bf16 = uint16_t;
typedef int32_t vint __attribute__((vector_size(kLanes * sizeof(int32_t))));

INTROSPECT_INLINE vfloat splat(float f) { return vfloat{} + f; }

// Each lane rounded to the nearest bfloat16 (ties to even; NaN kept, made quiet), as float32.
INTROSPECT_INLINE vuint bf16_bits(vfloat v) {
  vuint bits;
  __builtin_memcpy(&bits, &v, sizeof(bits));
  const vuint rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) & 0xffff0000u;
  const vuint quiet = (bits | 0x00400000u) & 0xffff0000u;
  return ((bits & 0x7fffffffu) > 0x7f800000u) ? quiet : rounded;
}

INTROSPECT_INLINE vfloat round_bf16(vfloat v) {
  const vuint bits = bf16_bits(v);
  __builtin_memcpy(&v, &bits, sizeof(v));
  return v;
}

// kLanes bfloat16 values as float32 lanes: each value becomes the upper half of its lane
// (one interleave with zeros, where a widening conversion would take several instructions).
typedef uint16_t vhalves __attribute__((vector_size(2 * kLanes * sizeof(uint16_t))));
static_assert(kLanes == 16, "the interleaves below are written out for 16 lanes");

INTROSPECT_INLINE vfloat load_bf16(const bf16* p) {
  vbf16 h;
  __builtin_memcpy(&h, p, sizeof(h));
  const vhalves w = __builtin_shufflevector(vbf16{}, h, 0, 16, 0, 17, 0, 18, 0, 19, 0, 20, 0, 21,
                                            0, 22, 0, 23, 0, 24, 0, 25, 0, 26, 0, 27, 0, 28, 0,
                                            29, 0, 30, 0, 31);
  vfloat v;
  __builtin_memcpy(&v, &w, sizeof(v));
  return v;
}

// v rounded to T's precision (float: unchanged).
template <typename T>
INTROSPECT_INLINE vfloat round_to(vfloat v) {
  if constexpr (sizeof(T) == 2) {
    return round_bf16(v);
  } else {
    return v;
  }
}

template <typename T>
INTROSPECT_INLINE void store_as(T* p, vfloat v) {
  if constexpr (sizeof(T) == 2) {
    const vuint bits = bf16_bits(v);
    vhalves w;
    __builtin_memcpy(&w, &bits, sizeof(w));
    const vbf16 h = __builtin_shufflevector(w, w, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25,
                                            27, 29, 31);
    __builtin_memcpy(p, &h, sizeof(h));
  } else {
    store(p, v);
  }
}

template <typename T>
INTROSPECT_INLINE vfloat load_as(const T* p) {
  if constexpr (sizeof(T) == 2) {
    return load_bf16(p);
  } else {
    return load(p);
  }
}

// The first m (≤ kLanes) values at p as lanes, the rest zero; and the store of the first m.
template <typename T>
INTROSPECT_INLINE vfloat get(const T* p, long m) {
  if (m == kLanes) return load_as(p);
  T buf[kLanes] = {};
  for (long i = 0; i < m; ++i) buf[i] = p[i];
  return load_as(buf);
}

template <typename T>
INTROSPECT_INLINE void put(T* p, long m, vfloat v) {
  if (m == kLanes) return store_as(p, v);
  T buf[kLanes];
  store_as(buf, v);
  for (long i = 0; i < m; ++i) p[i] = buf[i];
}

// f(j, m) over a row of n values in blocks of m = kLanes, then one shorter block if n is not a
// multiple of kLanes (full blocks see m as a constant, so their loads and stores are direct).
template <typename F>
INTROSPECT_INLINE void blocks(long n, F&& f) {
  long j = 0;
  for (; j + kLanes <= n; j += kLanes) f(j, kLanes);
  if (j < n) f(j, n - j);
}

// e^x per lane (Cephes' expf: range reduction by ln 2 in two parts, degree-6 polynomial),
// within 2 ulp of the exact value; +inf above ln(FLT_MAX), 0 below -86.5 (where e^x is under
// 2^-124: 1 + e^x is then 1 in float32, which is all that silu needs), NaN kept.
INTROSPECT_INLINE vfloat exp_lanes(vfloat x) {
  const vfloat lo = splat(-86.5f), hi = splat(88.72283f);
  vfloat xc = x < lo ? lo : x;
  xc = xc > hi ? hi : xc;
  const vfloat magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  const vfloat n = ((xc * 1.44269504088896341f) + magic) - magic;
  vfloat r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  vfloat p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const vfloat y = p * r * r + r + 1.0f;
  // 2^(n-1) built from its exponent bits, times 2y: n = 128 at the top stays finite.
  const vuint bits = (vuint)((__builtin_convertvector(n, vint) + 126) << 23);
  vfloat scale;
  __builtin_memcpy(&scale, &bits, sizeof(scale));
  vfloat out = (y * 2.0f) * scale;
  out = x > hi ? splat(INFINITY) : out;
  return x < lo ? vfloat{} : out;
}

// ---------------------------------------------------------------------------------- rms_norm

struct RmsArgs {
  const void* x;
  int64_t sx;
  const void* r;
  int64_t sr;
  const void* w;
  float eps;
  long n;
  void* y;
  int64_t sy;
  void* s;
  int64_t ss;
};

template <typename TX, typename TW, typename TY>
INTROSPECT_INLINE void rms_row(const TX* x, const TX* res, const TW* w, float eps, long n, TY* y,
                               TX* s) {
  vfloat acc = {};
  blocks(n, [&](long j, long m) __attribute__((always_inline)) {
    vfloat v = get(x + j, m);
    if (res != nullptr) {
      v = round_to<TX>(v + get(res + j, m));
      put(s + j, m, v);
    }
    acc += v * v;
  });
  const TX* src = res != nullptr ? s : x;
  const float mean = lane_sum(acc) / static_cast<float>(n);
  const float inv = 1.0f / std::sqrt(mean + eps);
  blocks(n, [&](long j, long m) __attribute__((always_inline)) {
    const vfloat h = round_to<TX>(get(src + j, m) * inv);
    put(y + j, m, get(w + j, m) * h);
  });
}

template <typename TX, typename TW, typename TY>
INTROSPECT_INLINE void rms_rows(const RmsArgs& a, int64_t r0, int64_t r1) {
  for (int64_t i = r0; i < r1; ++i) {
    rms_row(static_cast<const TX*>(a.x) + i * a.sx,
            a.r != nullptr ? static_cast<const TX*>(a.r) + i * a.sr : nullptr,
            static_cast<const TW*>(a.w), a.eps, a.n, static_cast<TY*>(a.y) + i * a.sy,
            a.s != nullptr ? static_cast<TX*>(a.s) + i * a.ss : nullptr);
  }
}

INTROSPECT_CLONES void rms_ff(const RmsArgs& a, int64_t r0, int64_t r1) {
  rms_rows<float, float, float>(a, r0, r1);
}
INTROSPECT_CLONES void rms_bb(const RmsArgs& a, int64_t r0, int64_t r1) {
  rms_rows<bf16, bf16, bf16>(a, r0, r1);
}
INTROSPECT_CLONES void rms_bf(const RmsArgs& a, int64_t r0, int64_t r1) {
  rms_rows<bf16, float, float>(a, r0, r1);
}
INTROSPECT_CLONES void rms_fb(const RmsArgs& a, int64_t r0, int64_t r1) {
  rms_rows<float, bf16, float>(a, r0, r1);
}

// ---------------------------------------------------------------------------------- silu_mul

struct SiluArgs {
  const void* g;
  int64_t sg;
  const void* u;
  int64_t su;
  long n;
  void* o;
  int64_t so;
};

template <typename T>
INTROSPECT_INLINE void silu_rows(const SiluArgs& a, int64_t r0, int64_t r1) {
  for (int64_t i = r0; i < r1; ++i) {
    const T* g = static_cast<const T*>(a.g) + i * a.sg;
    const T* u = static_cast<const T*>(a.u) + i * a.su;
    T* o = static_cast<T*>(a.o) + i * a.so;
    blocks(a.n, [&](long j, long m) __attribute__((always_inline)) {
      const vfloat gv = get(g + j, m);
      const vfloat silu = round_to<T>(gv / (1.0f + exp_lanes(-gv)));
      put(o + j, m, silu * get(u + j, m));
    });
  }
}

INTROSPECT_CLONES void silu_f(const SiluArgs& a, int64_t r0, int64_t r1) {
  silu_rows<float>(a, r0, r1);
}
INTROSPECT_CLONES void silu_b(const SiluArgs& a, int64_t r0, int64_t r1) {
  silu_rows<bf16>(a, r0, r1);
}

// -------------------------------------------------------------------------------------- rope

struct RopeArgs {
  RopeTensor q, k;
  const void* cos;
  int64_t cb, cs;
  const void* sin;
  int64_t sb, ss;
  int64_t S;
  long D;
};

template <typename TX, typename TC, typename TO>
INTROSPECT_INLINE void rope_row(const TX* x, const TC* c, const TC* s, long D, TO* o) {
  const long half = D / 2;
  blocks(half, [&](long j, long m) __attribute__((always_inline)) {
    const vfloat a = get(x + j, m), b = get(x + half + j, m);
    put(o + j, m, round_to<TO>(a * get(c + j, m)) + round_to<TO>(-b * get(s + j, m)));
    put(o + half + j, m,
        round_to<TO>(b * get(c + half + j, m)) + round_to<TO>(a * get(s + half + j, m)));
  });
}

// Rows are numbered over q's B·H·S rows, then k's.
template <typename TX, typename TC, typename TO>
INTROSPECT_INLINE void rope_rows(const RopeArgs& a, int64_t nq, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const RopeTensor& t = r < nq ? a.q : a.k;
    const int64_t i = r < nq ? r : r - nq;
    const int64_t s = i % a.S, h = (i / a.S) % t.H, b = i / a.S / t.H;
    rope_row(static_cast<const TX*>(t.x) + b * t.xb + h * t.xh + s * t.xs,
             static_cast<const TC*>(a.cos) + b * a.cb + s * a.cs,
             static_cast<const TC*>(a.sin) + b * a.sb + s * a.ss, a.D,
             static_cast<TO*>(t.out) + b * t.ob + h * t.oh + s * t.os);
  }
}

INTROSPECT_CLONES void rope_ff(const RopeArgs& a, int64_t nq, int64_t r0, int64_t r1) {
  rope_rows<float, float, float>(a, nq, r0, r1);
}
INTROSPECT_CLONES void rope_bb(const RopeArgs& a, int64_t nq, int64_t r0, int64_t r1) {
  rope_rows<bf16, bf16, bf16>(a, nq, r0, r1);
}
INTROSPECT_CLONES void rope_bf(const RopeArgs& a, int64_t nq, int64_t r0, int64_t r1) {
  rope_rows<bf16, float, float>(a, nq, r0, r1);
}
INTROSPECT_CLONES void rope_fb(const RopeArgs& a, int64_t nq, int64_t r0, int64_t r1) {
  rope_rows<float, bf16, float>(a, nq, r0, r1);
}

// The kernel for a (first, second) dtype pair of float32/bfloat16; float64 is refused.
template <typename Fn>
Fn pick(const char* op, DType first, DType second, Fn ff, Fn bb, Fn bf, Fn fb) {
  if (first == DType::kFloat64 || second == DType::kFloat64)
    throw std::invalid_argument(std::string(op) + ": float64 is not supported (float32 or bfloat16)");
  const bool b1 = first == DType::kBFloat16, b2 = second == DType::kBFloat16;
  return b1 ? (b2 ? bb : bf) : (b2 ? fb : ff);
}

}  // namespace

void rms_norm(DType x_dtype, const void* x, int64_t sx, const void* residual, int64_t sr,
              DType w_dtype, const void* weight, float eps, int64_t rows, int64_t n, void* y,
              int64_t sy, void* s, int64_t ss, int threads) {
  const auto fn = pick("rms_norm", x_dtype, w_dtype, &rms_ff, &rms_bb, &rms_bf, &rms_fb);
  if (rows <= 0 || n <= 0) return;
  const RmsArgs a{x, sx, residual, sr, weight, eps, static_cast<long>(n), y, sy, s, ss};
  parallel_ranges(rows, threads_for(rows * n, threads),
                  [&](int, int64_t r0, int64_t r1) { fn(a, r0, r1); });
}

void silu_mul(DType dtype, const void* gate, int64_t sg, const void* up, int64_t su,
              int64_t rows, int64_t n, void* out, int64_t so, int threads) {
  const auto fn = pick("silu_mul", dtype, dtype, &silu_f, &silu_b, &silu_b, &silu_f);
  if (rows <= 0 || n <= 0) return;
  const SiluArgs a{gate, sg, up, su, static_cast<long>(n), out, so};
  parallel_ranges(rows, threads_for(rows * n, threads),
                  [&](int, int64_t r0, int64_t r1) { fn(a, r0, r1); });
}

void rope(DType x_dtype, DType cs_dtype, const RopeTensor& q, const RopeTensor& k,
          const void* cos, int64_t cb, int64_t cs, const void* sin, int64_t sb, int64_t ss,
          int64_t B, int64_t S, int64_t D, int threads) {
  const auto fn = pick("rope", x_dtype, cs_dtype, &rope_ff, &rope_bb, &rope_bf, &rope_fb);
  if (D % 2 != 0) throw std::invalid_argument("rope: the head dimension must be even");
  const int64_t nq = B * q.H * S, rows = nq + B * k.H * S;
  if (rows <= 0 || D <= 0) return;
  const RopeArgs a{q, k, cos, cb, cs, sin, sb, ss, S, static_cast<long>(D)};
  parallel_ranges(rows, threads_for(rows * D, threads),
                  [&](int, int64_t r0, int64_t r1) { fn(a, nq, r0, r1); });
}

}  // namespace introspect::cpu
