// CPU KV cache and causal grouped-query attention (moe/decoder_ops.h).
//
// The cache holds keys and values each as [Hkv, max_seq, hd] in its own dtype. attention() first
// writes the T new keys and values (converted to the cache's type), then computes every (token,
// query head): the query row in f32, scores against the visible keys read back from the
// cache, a max-subtracted softmax in f32 and the weighted sum of the values, all in a fixed order.
// The inner loops (scores, weighted sum of the values) stream one kv head's contiguous rows
// (attn_kernels.h: AVX-512, AVX2/FMA or portable, by the kernel table). A task's result depends
// only on its query and the cache contents, so a step-by-step decode gives the same bits as one
// pass, on any thread count.
#include <algorithm>
#include <cmath>
#include <vector>

#include "attn_kernels.h"
#include "cpu_features.h"
#include "cpu_ops.h"
#include "threadpool.h"
#include "panel_gemm.h"
#include "row_ops.h"

namespace moe {
namespace cpu {

namespace {
struct CpuKvCache final : KvCache {
  cpu::AlignedBuffer keys, values;
  size_t bytes() const override { return keys.size() + values.size(); }
  // element offset of (kv head h, position j)
  size_t at(int64_t h, int64_t j) const { return (size_t(h) * size_t(max_seq) + size_t(j)) * size_t(head_dim); }
};

// Per thread: the query row, the scores of one query and the output accumulator.
struct AttnScratch {
  std::vector<float> q, scores, acc;
};
AttnScratch& attn_scratch() {
  thread_local AttnScratch s;
  return s;
}

constexpr int64_t kKvBlockBytes = 64 << 10;  // keys (or values) of one block, kept in L2 for a group

// ---- portable inner loops (attn_kernels.h) ----
constexpr int64_t kRowBuf = 1024;  // head dims up to this widen into a stack row

void scores_portable(const float* q, const void* k, DType t, int64_t n, int64_t hd, float scale, float* out) {
  std::vector<float> heap;
  float stack[kRowBuf];
  float* row = hd <= kRowBuf ? stack : (heap.resize(size_t(hd)), heap.data());
  for (int64_t j = 0; j < n; ++j) {
    cpu::load_row(k, t, size_t(j) * size_t(hd), hd, row);
    out[j] = cpu::dot(q, row, hd) * scale;
  }
}

void weighted_sum_portable(const float* e, const void* v, DType t, int64_t n, int64_t hd, float* acc) {
  std::vector<float> heap;
  float stack[kRowBuf];
  float* row = hd <= kRowBuf ? stack : (heap.resize(size_t(hd)), heap.data());
  for (int64_t j = 0; j < n; ++j) {
    cpu::load_row(v, t, size_t(j) * size_t(hd), hd, row);
    for (int64_t i = 0; i < hd; ++i) acc[i] += e[j] * row[i];
  }
}

void weighted_sum_heads_portable(const float* e, int64_t e_stride, int heads, const void* v, DType t, int64_t n, int64_t hd,
                                 float* acc) {
  for (int g = 0; g < heads; ++g) weighted_sum_portable(e + g * e_stride, v, t, n, hd, acc + g * hd);
}

}  // namespace

const AttnKernels& attn_kernels() {
  switch (cpu_features().table) {
    case CpuKernel::kAvx512Bf16:  // attention keeps f32 activations on both AVX-512 tables
    case CpuKernel::kAvx512: return attn_avx512_kernels();
    case CpuKernel::kAvx2: return attn_avx2_kernels();
    default: return attn_portable_kernels();
  }
}

const AttnKernels& attn_portable_kernels() {
  static const AttnKernels k = {scores_portable, weighted_sum_portable, weighted_sum_heads_portable};
  return k;
}

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
  auto& c = static_cast<CpuKvCache&>(kv);  // CpuBackend passes only its own caches (create_kv_cache above)
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

  // 2. one task per (token, kv head), for the `group` query heads that share it: the keys and values
  //    are streamed in blocks that stay in L2 while every query of the group meets them, so the
  //    cache is read from memory once per step. Each query's arithmetic is the same whatever the
  //    blocking (scores per key; the weighted sum in increasing key order).
  const int64_t group = Hq / Hkv;
  const float scale = 1.0f / std::sqrt(float(hd));
  const cpu::AttnKernels& kern = attn_kernels();
  const size_t es = dtype_size(c.dtype);
  const int64_t block = std::max<int64_t>(16, kKvBlockBytes / (hd * int64_t(es)));
  parallel_for(T * Hkv, [&](int64_t task, int) {
    const int64_t t = task / Hkv, kvh = task % Hkv;
    const int64_t pos = p.start_pos + t;
    const int64_t lo = p.sliding_window > 0 ? std::max<int64_t>(0, pos - p.sliding_window + 1) : 0;
    const int64_t n = pos - lo + 1;
    AttnScratch& s = attn_scratch();
    s.q.resize(size_t(group * hd));
    s.acc.assign(size_t(group * hd), 0.f);
    s.scores.resize(size_t(group * n));
    const size_t q0 = size_t(t * Hq + kvh * group) * size_t(hd);  // the group's query heads are adjacent
    cpu::load_row(q.data, q.dtype, q0, group * hd, s.q.data());
    const uint8_t* keys = c.keys.as<const uint8_t>() + c.at(kvh, lo) * es;
    const uint8_t* values = c.values.as<const uint8_t>() + c.at(kvh, lo) * es;
    for (int64_t j0 = 0; j0 < n; j0 += block) {
      const int64_t nb = std::min(block, n - j0);
      for (int64_t g = 0; g < group; ++g)
        kern.scores(s.q.data() + g * hd, keys + size_t(j0 * hd) * es, c.dtype, nb, hd, scale, s.scores.data() + g * n + j0);
    }
    for (int64_t g = 0; g < group; ++g) {  // softmax numerators and their sum, in key order
      float* e = s.scores.data() + g * n;
      float mx = -INFINITY;
      for (int64_t j = 0; j < n; ++j) mx = std::max(mx, e[j]);
      float sum = 0.f;
      for (int64_t j = 0; j < n; ++j) sum += (e[j] = std::exp(e[j] - mx));
      s.q[size_t(g * hd)] = 1.0f / sum;  // the query row is no longer needed: keep 1/sum there
    }
    for (int64_t j0 = 0; j0 < n; j0 += block) {
      const int64_t nb = std::min(block, n - j0);
      kern.weighted_sum_heads(s.scores.data() + j0, n, int(group), values + size_t(j0 * hd) * es, c.dtype, nb, hd, s.acc.data());
    }
    for (int64_t g = 0; g < group; ++g) {
      float* acc = s.acc.data() + g * hd;
      const float inv = s.q[size_t(g * hd)];
      for (int64_t i = 0; i < hd; ++i) acc[i] *= inv;
    }
    cpu::store_row(out.data, out.dtype, q0, group * hd, s.acc.data());
  });
  return Status::ok();
}

}  // namespace cpu
}  // namespace moe
