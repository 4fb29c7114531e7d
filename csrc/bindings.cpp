// The one Python binding of the native kernels: introspect._C.
// Arguments are raw addresses (Python ints from tensor.data_ptr()), shapes and strides; the
// Python glue in introspect/ops checks dtypes, devices and shapes before calling in here.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <tuple>

#include "common.h"
#include "delta_probe.h"
#include "fused.h"
#include "paired_attention.h"
#include "pearson.h"
#ifdef INTROSPECT_WITH_CUDA
#include "choice_logprobs_cuda.h"
#include "cuda_info.h"
#include "delta_probe_cuda.h"
#endif

namespace py = pybind11;
using introspect::DType;

namespace {

template <typename T>
T* as_ptr(uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

DType as_dtype(int code) {
  if (code < 0 || code > 2) throw std::invalid_argument("unknown dtype code " + std::to_string(code));
  return static_cast<DType>(code);
}

#ifndef INTROSPECT_VERSION
#define INTROSPECT_VERSION "unknown"
#endif

py::dict build_info() {
  py::dict info;
  info["version"] = INTROSPECT_VERSION;
  info["abi"] = introspect::kAbiVersion;
#ifdef INTROSPECT_WITH_CUDA
  info["cuda"] = true;
  info["cuda_archs"] = INTROSPECT_CUDA_ARCHS;
  info["cuda_kernels"] = std::string(introspect::cuda::compiled_kernels()) + "," +
                         introspect::cuda::choice_logprobs_kernels();
#else
  info["cuda"] = false;
  info["cuda_archs"] = "";
  info["cuda_kernels"] = "";
#endif
#if defined(__GNUC__) && !defined(__clang__)
  info["compiler"] = "gcc " __VERSION__;
#elif defined(__clang__)
  info["compiler"] = "clang " __clang_version__;
#else
  info["compiler"] = "unknown";
#endif
  return info;
}

// The CPU kernels: delta_probe_{fwd,bwd}_cpu, pearson_partials_cpu and the fused elementwise
// kernels (bind_fused).
void bind_cpu(py::module_& m) {
  m.def(
      "delta_probe_fwd_cpu",
      [](int dtype, uintptr_t hx, int64_t sx, uintptr_t hm, int64_t sm, uintptr_t w, uintptr_t b,
         uintptr_t t, int64_t N, int64_t D, int64_t P, uintptr_t pred, uintptr_t resid,
         uintptr_t sse, uintptr_t G, uintptr_t gb, int threads) {
        introspect::cpu::delta_probe_fwd(
            as_dtype(dtype), as_ptr<const void>(hx), sx, as_ptr<const void>(hm), sm,
            as_ptr<const float>(w), as_ptr<const float>(b), as_ptr<const float>(t), N, D, P,
            as_ptr<float>(pred), as_ptr<float>(resid), as_ptr<float>(sse), as_ptr<float>(G),
            as_ptr<float>(gb), threads);
      },
      py::call_guard<py::gil_scoped_release>());

  m.def(
      "delta_probe_bwd_cpu",
      [](int dtype, uintptr_t hx, int64_t sx, uintptr_t hm, int64_t sm, uintptr_t w, uintptr_t g,
         int64_t N, int64_t D, int64_t P, uintptr_t gw, uintptr_t ghx, uintptr_t ghm,
         int threads) {
        introspect::cpu::delta_probe_bwd(as_dtype(dtype), as_ptr<const void>(hx), sx,
                                         as_ptr<const void>(hm), sm, as_ptr<const float>(w),
                                         as_ptr<const float>(g), N, D, P, as_ptr<float>(gw),
                                         as_ptr<void>(ghx), as_ptr<void>(ghm), threads);
      },
      py::call_guard<py::gil_scoped_release>());

  m.attr("PEARSON_CHUNK_ROWS") = introspect::cpu::kPearsonChunkRows;
  m.def(
      "pearson_partials_cpu",
      [](int dtype, uintptr_t x, int64_t sx, uintptr_t y, int64_t sy, int64_t N, int64_t K,
         uintptr_t counts, uintptr_t stats, int threads) {
        introspect::cpu::pearson_partials(as_dtype(dtype), as_ptr<const void>(x), sx,
                                          as_ptr<const void>(y), sy, N, K,
                                          as_ptr<int64_t>(counts), as_ptr<double>(stats),
                                          threads);
      },
      py::call_guard<py::gil_scoped_release>());
}

// rms_norm_cpu, silu_mul_cpu, rope_cpu (csrc/fused.h). A residual or s address of 0 means none.
void bind_fused(py::module_& m) {
  m.def(
      "rms_norm_cpu",
      [](int x_dtype, uintptr_t x, int64_t sx, uintptr_t residual, int64_t sr, int w_dtype,
         uintptr_t w, float eps, int64_t rows, int64_t n, uintptr_t y, int64_t sy, uintptr_t s,
         int64_t ss, int threads) {
        introspect::cpu::rms_norm(as_dtype(x_dtype), as_ptr<const void>(x), sx,
                                  as_ptr<const void>(residual), sr, as_dtype(w_dtype),
                                  as_ptr<const void>(w), eps, rows, n, as_ptr<void>(y), sy,
                                  as_ptr<void>(s), ss, threads);
      },
      py::call_guard<py::gil_scoped_release>());
  m.def(
      "silu_mul_cpu",
      [](int dtype, uintptr_t g, int64_t sg, uintptr_t u, int64_t su, int64_t rows, int64_t n,
         uintptr_t out, int64_t so, int threads) {
        introspect::cpu::silu_mul(as_dtype(dtype), as_ptr<const void>(g), sg,
                                  as_ptr<const void>(u), su, rows, n, as_ptr<void>(out), so,
                                  threads);
      },
      py::call_guard<py::gil_scoped_release>());
  // q and k: (address, H, strides b, h, s, out address, out strides b, h, s).
  using RopeArg = std::tuple<uintptr_t, int64_t, int64_t, int64_t, int64_t, uintptr_t, int64_t,
                             int64_t, int64_t>;
  m.def(
      "rope_cpu",
      [](int x_dtype, int cs_dtype, const RopeArg& q, const RopeArg& k, uintptr_t cos,
         int64_t cb, int64_t cs, uintptr_t sin, int64_t sb, int64_t ss, int64_t B, int64_t S,
         int64_t D, int threads) {
        const auto tensor = [](const RopeArg& t) {
          return introspect::cpu::RopeTensor{
              as_ptr<const void>(std::get<0>(t)), std::get<1>(t), std::get<2>(t),
              std::get<3>(t), std::get<4>(t), as_ptr<void>(std::get<5>(t)), std::get<6>(t),
              std::get<7>(t), std::get<8>(t)};
        };
        introspect::cpu::rope(as_dtype(x_dtype), as_dtype(cs_dtype), tensor(q), tensor(k),
                              as_ptr<const void>(cos), cb, cs, as_ptr<const void>(sin), sb, ss,
                              B, S, D, threads);
      },
      py::call_guard<py::gil_scoped_release>());
}

// paired_attention_cpu (csrc/paired_attention.h): q, k, v, out as (address, stride b, stride h,
// stride t); the segment metadata as addresses of int32 arrays.
void bind_paired_attention(py::module_& m) {
  using View = std::tuple<uintptr_t, int64_t, int64_t, int64_t>;
  using Segments = std::tuple<uintptr_t, uintptr_t, uintptr_t, uintptr_t, uintptr_t, uintptr_t,
                              uintptr_t, int64_t>;
  m.def(
      "paired_attention_cpu",
      [](const View& q, const View& k, const View& v, const View& out, int64_t Hq, int64_t Hkv,
         int64_t D, int64_t P, float scale, const Segments& seg, int threads) {
        introspect::cpu::PairedAttentionArgs a{};
        a.q = as_ptr<const float>(std::get<0>(q));
        std::tie(std::ignore, a.qb, a.qh, a.qt) = q;
        a.k = as_ptr<const float>(std::get<0>(k));
        std::tie(std::ignore, a.kb, a.kh, a.kt) = k;
        a.v = as_ptr<const float>(std::get<0>(v));
        std::tie(std::ignore, a.vb, a.vh, a.vt) = v;
        a.out = as_ptr<float>(std::get<0>(out));
        std::tie(std::ignore, a.ob, a.oh, a.ot) = out;
        a.Hq = Hq;
        a.Hkv = Hkv;
        a.D = D;
        a.P = P;
        a.scale = scale;
        a.seg_row = as_ptr<const int32_t>(std::get<0>(seg));
        a.seg_q_start = as_ptr<const int32_t>(std::get<1>(seg));
        a.seg_q_end = as_ptr<const int32_t>(std::get<2>(seg));
        a.seg_self_only = as_ptr<const int32_t>(std::get<3>(seg));
        a.kv_ptr = as_ptr<const int32_t>(std::get<4>(seg));
        a.kv_start = as_ptr<const int32_t>(std::get<5>(seg));
        a.kv_end = as_ptr<const int32_t>(std::get<6>(seg));
        a.segments = std::get<7>(seg);
        if (Hkv <= 0 || Hq % Hkv != 0)
          throw std::invalid_argument("paired_attention_cpu: Hq must be a multiple of Hkv");
        introspect::cpu::paired_attention_fwd(a, threads);
      },
      py::call_guard<py::gil_scoped_release>());
}

#ifdef INTROSPECT_WITH_CUDA
void check_cuda(const char* error, const char* what) {
  if (error != nullptr) throw std::runtime_error(std::string(what) + ": " + error);
}

// {"driver": CUDA version the driver supports (0: no driver), "runtime": CUDA runtime version
// compiled in, "error": why the driver query failed ("" if it did not)}.
py::dict cuda_versions() {
  const char* error = "";
  const int driver = introspect::cuda::driver_version(&error);
  py::dict out;
  out["driver"] = driver;
  out["runtime"] = introspect::cuda::runtime_version();
  out["error"] = error;
  return out;
}

// The CUDA kernels (host entry points taking device addresses and a stream) and their scratch
// sizes.
void bind_cuda(py::module_& m) {
  m.def("cuda_versions", &cuda_versions,
        "CUDA versions of the driver (0 if none) and of the runtime compiled in.");
  m.def("delta_probe_fwd_cuda_scratch_bytes", &introspect::cuda::delta_probe_fwd_scratch_bytes);
  m.def("delta_probe_bwd_cuda_scratch_bytes", &introspect::cuda::delta_probe_bwd_scratch_bytes);
  m.def(
      "delta_probe_fwd_cuda",
      [](int dtype, uintptr_t hx, int64_t sx, uintptr_t hm, int64_t sm, uintptr_t w, uintptr_t b,
         uintptr_t t, int64_t N, int64_t D, int64_t P, uintptr_t pred, uintptr_t resid,
         uintptr_t sse, uintptr_t G, uintptr_t gb, uintptr_t scratch, int64_t scratch_bytes,
         uintptr_t stream) {
        check_cuda(introspect::cuda::delta_probe_fwd(
                       as_dtype(dtype), as_ptr<const void>(hx), sx, as_ptr<const void>(hm), sm,
                       as_ptr<const float>(w), as_ptr<const float>(b), as_ptr<const float>(t), N,
                       D, P, as_ptr<float>(pred), as_ptr<float>(resid), as_ptr<float>(sse),
                       as_ptr<float>(G), as_ptr<float>(gb), as_ptr<void>(scratch),
                       scratch_bytes, as_ptr<void>(stream)),
                   "delta_probe_fwd (CUDA)");
      },
      py::call_guard<py::gil_scoped_release>());
  m.def(
      "delta_probe_bwd_cuda",
      [](int dtype, uintptr_t hx, int64_t sx, uintptr_t hm, int64_t sm, uintptr_t w, uintptr_t g,
         int64_t N, int64_t D, int64_t P, uintptr_t gw, uintptr_t ghx, uintptr_t ghm,
         uintptr_t scratch, int64_t scratch_bytes, uintptr_t stream) {
        check_cuda(introspect::cuda::delta_probe_bwd(
                       as_dtype(dtype), as_ptr<const void>(hx), sx, as_ptr<const void>(hm), sm,
                       as_ptr<const float>(w), as_ptr<const float>(g), N, D, P,
                       as_ptr<float>(gw), as_ptr<void>(ghx), as_ptr<void>(ghm),
                       as_ptr<void>(scratch), scratch_bytes, as_ptr<void>(stream)),
                   "delta_probe_bwd (CUDA)");
      },
      py::call_guard<py::gil_scoped_release>());

  m.def("choice_logprobs_cuda_scratch_bytes", &introspect::cuda::choice_logprobs_scratch_bytes);
  m.def(
      "choice_logprobs_cuda",
      [](int h_dtype, uintptr_t h, int64_t sh, int w_dtype, uintptr_t w, int64_t sw,
         uintptr_t bias, uintptr_t choices, int64_t M, int64_t V, int64_t D, int64_t C,
         float softcap, uintptr_t logp, uintptr_t lse, uintptr_t scratch, int64_t scratch_bytes,
         uintptr_t stream) {
        check_cuda(introspect::cuda::choice_logprobs(
                       h_dtype, as_ptr<const void>(h), sh, w_dtype, as_ptr<const void>(w), sw,
                       as_ptr<const float>(bias), as_ptr<const int64_t>(choices), M, V, D, C,
                       softcap, as_ptr<float>(logp), as_ptr<float>(lse), as_ptr<void>(scratch),
                       scratch_bytes, as_ptr<void>(stream)),
                   "choice_logprobs (CUDA)");
      },
      py::call_guard<py::gil_scoped_release>());
}
#endif

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "introspect native kernels (framework-free C++ and CUDA)";
  m.attr("__version__") = INTROSPECT_VERSION;
  m.attr("ABI_VERSION") = introspect::kAbiVersion;
  m.def("build_info", &build_info, "What this extension was built with.");
  bind_cpu(m);
  bind_fused(m);
  bind_paired_attention(m);
#ifdef INTROSPECT_WITH_CUDA
  bind_cuda(m);
#endif
}
