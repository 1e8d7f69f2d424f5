// CPU token sampling (moe/decoder_ops.h): penalties, greedy argmax, or temperature with min-p, top-k
// and top-p by the exact rule of moe/sampling_rule.h with a Philox draw of (seed, step, stream), the
// rule the CUDA kernel (native/backends/cuda/sampling.cu) follows, so both backends pick the same id
// from the same logits. One row per task; every sum is over integers in index order, so a row's id
// depends only on its logits, its parameters and its history, never on the thread count or on the
// other rows.
#include <string>

#include "cpu_ops.h"
#include "moe/sampling_rule.h"
#include "threadpool.h"

namespace moe {
namespace cpu {

static_assert(sizeof(SampleRow) == size_t(kSampleRowWords) * 4, "SampleArgs::rows holds SampleRows");

Status sample(const SampleArgs& a) {
  const TensorView& l = a.logits;
  if (l.dtype != DType::kF32 || (l.ndim != 1 && l.ndim != 2)) return Status::invalid("sample: logits must be f32 [V] or [T,V]");
  const int64_t V = l.dims[l.ndim - 1], T = l.ndim == 2 ? l.dims[0] : 1;
  if (V < 1 || V > kSampleMaxVocab) return Status::invalid("sample: V must be in [1, 2^23]");
  if (a.rows.dtype != DType::kI32 || a.rows.ndim != 2 || a.rows.dims[0] != T || a.rows.dims[1] != kSampleRowWords)
    return Status::invalid("sample: rows must be i32 [T, 14] (one SampleRow per row)");
  if (a.ids.dtype != DType::kI32 || a.ids.numel() != T) return Status::invalid("sample: ids must be i32 [T]");
  const SampleRow* rows = a.rows.as<const SampleRow>();
  for (int64_t t = 0; t < T; ++t) {
    const SampleRow& p = rows[t];
    if (!(p.temperature >= 0.f) || !(p.top_p >= 0.f && p.top_p <= 1.f) || !(p.min_p >= 0.f && p.min_p <= 1.f) ||
        p.top_k < 0 || !(p.repetition > 0.f) || !std::isfinite(p.presence) || !std::isfinite(p.frequency))
      return Status::invalid("sample: row " + std::to_string(t) + " has parameters out of range");
  }
  const bool pen = a.penalty_offsets.present();
  const int32_t *pen_ids = nullptr, *pen_counts = nullptr, *off = nullptr;
  if (pen) {
    const int64_t N = a.penalty_ids.numel();
    if (a.penalty_offsets.numel() != T + 1 || a.penalty_counts.numel() != N || a.penalty_ids.dtype != DType::kI32 ||
        a.penalty_counts.dtype != DType::kI32 || a.penalty_offsets.dtype != DType::kI32)
      return Status::invalid("sample: penalty ids, counts [N] and offsets [T+1] must be i32");
    pen_ids = a.penalty_ids.as<const int32_t>(), pen_counts = a.penalty_counts.as<const int32_t>();
    off = a.penalty_offsets.as<const int32_t>();
    if (off[0] != 0 || off[T] != N) return Status::invalid("sample: penalty offsets must run from 0 to N");
    for (int64_t t = 0; t < T; ++t)
      if (off[t + 1] < off[t]) return Status::invalid("sample: penalty offsets must not decrease");
    for (int64_t j = 0; j < N; ++j)
      if (pen_ids[j] < 0 || pen_ids[j] >= V || pen_counts[j] < 1)
        return Status::invalid("sample: penalty entry " + std::to_string(j) + " has an id outside [0, V) or a count < 1");
  }
  const float* logits = l.as<const float>();
  int32_t* ids = a.ids.as<int32_t>();
  parallel_for(T, [&](int64_t t, int) {
    thread_local SampleScratch scratch;
    const int64_t j0 = pen ? off[t] : 0, n = pen ? off[t + 1] - j0 : 0;
    ids[t] = sample_row(logits + size_t(t) * size_t(V), V, rows[t], pen_ids + j0, pen_counts + j0, n, scratch);
  });
  return Status::ok();
}

}  // namespace cpu
}  // namespace moe
