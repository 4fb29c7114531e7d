// Attention over packed token tries on the CPU (float32, forward only): every query attends to
// its segment's ancestor key intervals in full and to its own segment causally (see
// introspect/ops/paired_attention.py for the segment metadata). Only the keys a query sees are
// touched: no mask, no padding, no gathered copies of the tries.
#pragma once

#include <cstdint>

namespace introspect::cpu {

struct PairedAttentionArgs {
  // q [B, Hq, T, D] with strides (qb, qh, qt, 1); k, v [B, Hkv, P + T, D] likewise.
  const float* q;
  int64_t qb, qh, qt;
  const float* k;
  int64_t kb, kh, kt;
  const float* v;
  int64_t vb, vh, vt;
  // out [B, Hq, T, D] with strides (ob, oh, ot, 1).
  float* out;
  int64_t ob, oh, ot;
  int64_t Hq, Hkv, D, P;
  float scale;
  // Segment metadata (int32, `segments` entries; kv_ptr has segments + 1).
  const int32_t* seg_row;
  const int32_t* seg_q_start;
  const int32_t* seg_q_end;
  const int32_t* seg_self_only;
  const int32_t* kv_ptr;
  const int32_t* kv_start;
  const int32_t* kv_end;
  int64_t segments;
};

// out = softmax(scale · q kᵀ over the keys each query sees) v. A self-only (padding) query's
// output is its own value. Hq must be a multiple of Hkv.
void paired_attention_fwd(const PairedAttentionArgs& a, int threads);

}  // namespace introspect::cpu
