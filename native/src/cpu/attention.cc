// CPU KV cache and causal grouped-query attention (moe/model_ops.h).
//
// The cache holds keys and values each as [Hkv, max_seq, hd] in its own dtype. attention() first
// writes the T new keys and values (converted to the cache's type), then runs one task per
// (token, query head): the query row in f32, scores against the visible keys read back from the
// cache, a max-subtracted softmax in f32 and the weighted sum of the values, all in a fixed order.
// A task's result depends only on its query and the cache contents, so a step-by-step decode
// gives the same bits as one pass over the whole sequence, on any thread count.
#include <algorithm>
#include <cmath>
#include <vector>

#include "moe/model_ops.h"
#include "moe/threadpool.h"
#include "panel_gemm.h"
#include "row_ops.h"

namespace moe {

namespace {
struct CpuKvCache final : KvCache {
  cpu::AlignedBuffer keys, values;
  size_t bytes() const override { return keys.size() + values.size(); }
  // element offset of (kv head h, position j)
  size_t at(int64_t h, int64_t j) const { return (size_t(h) * size_t(max_seq) + size_t(j)) * size_t(head_dim); }
};

// Per thread: the query row, the scores of one query and the output accumulator.
struct AttnScratch {
  std::vector<float> q, scores, acc, kv;
};
AttnScratch& attn_scratch() {
  thread_local AttnScratch s;
  return s;
}
}  // namespace

Status create_kv_cache(int64_t max_seq, int64_t num_kv_heads, int64_t head_dim, DType dtype,
                       std::unique_ptr<KvCache>* out) {
  if (max_seq < 1 || num_kv_heads < 1 || head_dim < 1) return Status::invalid("create_kv_cache: empty shape");
  if (!is_float(dtype)) return Status::unsupported(std::string("create_kv_cache: cache of type ") + dtype_name(dtype));
  auto c = std::make_unique<CpuKvCache>();
  c->max_seq = max_seq;
  c->num_kv_heads = num_kv_heads;
  c->head_dim = head_dim;
  c->dtype = dtype;
  const size_t bytes = size_t(max_seq) * size_t(num_kv_heads) * size_t(head_dim) * dtype_size(dtype);
  if (!c->keys.reserve(bytes) || !c->values.reserve(bytes)) return Status::oom("create_kv_cache: cannot allocate the cache");
  std::memset(c->keys.as<void>(), 0, bytes);  // positions never written read as zeros, not garbage
  std::memset(c->values.as<void>(), 0, bytes);
  *out = std::move(c);
  return Status::ok();
}

Status attention(const TensorView& q, const TensorView& k, const TensorView& v, KvCache& kv,
                 const AttentionParams& p, const TensorView& out) {
  auto& c = static_cast<CpuKvCache&>(kv);  // made by create_kv_cache above
  const int64_t hd = c.head_dim, Hkv = c.num_kv_heads;
  if (q.ndim != 3 || q.dims[2] != hd) return Status::invalid("attention: q must be [T,Hq,hd]");
  const int64_t T = q.dims[0], Hq = q.dims[1];
  for (const TensorView* t : {&k, &v})
    if (t->ndim != 3 || t->dims[0] != T || t->dims[1] != Hkv || t->dims[2] != hd)
      return Status::invalid("attention: k and v must be [T,Hkv,hd]");
  if (out.ndim != 3 || out.dims[0] != T || out.dims[1] != Hq || out.dims[2] != hd)
    return Status::invalid("attention: out must be [T,Hq,hd]");
  if (Hq % Hkv != 0) return Status::invalid("attention: Hq must be a multiple of Hkv");
  if (p.start_pos < 0 || p.start_pos + T > c.max_seq || p.sliding_window < 0)
    return Status::invalid("attention: positions past the cache");
  if (T == 0) return Status::ok();

  // 1. append the new keys and values: row (t, h) -> cache (h, start_pos + t)
  std::vector<float> row(static_cast<size_t>(hd));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < Hkv; ++h) {
      const size_t src = size_t(t * Hkv + h) * size_t(hd), dst = c.at(h, p.start_pos + t);
      cpu::load_row(k.data, k.dtype, src, hd, row.data());
      cpu::store_row(c.keys.as<void>(), c.dtype, dst, hd, row.data());
      cpu::load_row(v.data, v.dtype, src, hd, row.data());
      cpu::store_row(c.values.as<void>(), c.dtype, dst, hd, row.data());
    }

  // 2. one task per (token, query head)
  const int64_t group = Hq / Hkv;
  const float scale = 1.0f / std::sqrt(float(hd));
  parallel_for(T * Hq, [&](int64_t task, int) {
    const int64_t t = task / Hq, h = task % Hq, kvh = h / group;
    const int64_t pos = p.start_pos + t;
    const int64_t lo = p.sliding_window > 0 ? std::max<int64_t>(0, pos - p.sliding_window + 1) : 0;
    const int64_t n = pos - lo + 1;
    AttnScratch& s = attn_scratch();
    s.q.resize(size_t(hd));
    s.acc.assign(size_t(hd), 0.f);
    s.kv.resize(size_t(hd));
    s.scores.resize(size_t(n));
    cpu::load_row(q.data, q.dtype, size_t(task) * size_t(hd), hd, s.q.data());
    const bool f32 = c.dtype == DType::kF32;
    const float* kbase = c.keys.as<const float>();
    float mx = -INFINITY;
    for (int64_t j = 0; j < n; ++j) {
      const size_t off = c.at(kvh, lo + j);
      const float* kr = kbase + off;
      if (!f32) {
        cpu::load_row(c.keys.as<const void>(), c.dtype, off, hd, s.kv.data());
        kr = s.kv.data();
      }
      const float sc = cpu::dot(s.q.data(), kr, hd) * scale;
      s.scores[size_t(j)] = sc;
      mx = std::max(mx, sc);
    }
    float sum = 0.f;
    const float* vbase = c.values.as<const float>();
    for (int64_t j = 0; j < n; ++j) {
      const float e = std::exp(s.scores[size_t(j)] - mx);
      sum += e;
      const size_t off = c.at(kvh, lo + j);
      const float* vr = vbase + off;
      if (!f32) {
        cpu::load_row(c.values.as<const void>(), c.dtype, off, hd, s.kv.data());
        vr = s.kv.data();
      }
      for (int64_t i = 0; i < hd; ++i) s.acc[size_t(i)] += e * vr[i];
    }
    const float inv = 1.0f / sum;
    for (int64_t i = 0; i < hd; ++i) s.acc[size_t(i)] *= inv;
    cpu::store_row(out.data, out.dtype, size_t(task) * size_t(hd), hd, s.acc.data());
  });
  return Status::ok();
}

}  // namespace moe
