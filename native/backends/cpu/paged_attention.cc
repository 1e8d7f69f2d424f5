// CPU paged KV pool and the attention of a batch of tokens from many sequences over it
// (moe/decoder_ops.h, PagedAttentionArgs).
//
// The pool holds keys and values each as [num_blocks][Hkv][block_size][hd] in its own dtype: within
// a block, one kv head's rows are contiguous, as in the contiguous cache (attention.cc). A task is a
// (token, kv head) with the query heads of its group; it scores its keys block run by block run with
// the same inner loops (attn_kernels.h) and the same order as attention.cc: scores per key, the
// softmax in key order, the weighted sum in increasing key order (the kernels accumulate key by key,
// so where runs begin and end changes nothing). So a token's result is the bits the contiguous
// cache gives for its sequence, whatever else the batch holds and on any thread count.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "attn_kernels.h"
#include "cpu_ops.h"
#include "panel_gemm.h"
#include "row_ops.h"
#include "threadpool.h"

namespace moe {
namespace cpu {

namespace {

struct CpuKvPool final : KvPool {
  cpu::AlignedBuffer keys, values;
  size_t bytes() const override { return keys.size() + values.size(); }
  // element offset of (block b, kv head h, slot j)
  size_t at(int64_t b, int64_t h, int64_t j) const {
    return ((size_t(b) * size_t(num_kv_heads) + size_t(h)) * size_t(block_size) + size_t(j)) * size_t(head_dim);
  }
};

struct PagedScratch {
  std::vector<float> q, scores, acc;
};
PagedScratch& paged_scratch() {
  thread_local PagedScratch s;
  return s;
}

}  // namespace

Status create_kv_pool(const KvPoolShape& sh, std::unique_ptr<KvPool>* out) {
  if (sh.num_blocks < 1 || sh.block_size < 1 || sh.num_kv_heads < 1 || sh.head_dim < 1)
    return Status::invalid("create_kv_pool: empty shape");
  if (!is_float(sh.dtype)) return Status::unsupported(std::string("create_kv_pool: a pool of type ") + dtype_name(sh.dtype));
  auto p = std::make_unique<CpuKvPool>();
  p->num_blocks = sh.num_blocks;
  p->block_size = sh.block_size;
  p->num_kv_heads = sh.num_kv_heads;
  p->head_dim = sh.head_dim;
  p->dtype = sh.dtype;
  const size_t bytes = size_t(sh.num_blocks) * size_t(sh.block_size) * size_t(sh.num_kv_heads) * size_t(sh.head_dim) *
                       dtype_size(sh.dtype);
  if (!p->keys.reserve(bytes) || !p->values.reserve(bytes)) return Status::oom("create_kv_pool: cannot allocate the pool");
  std::memset(p->keys.as<void>(), 0, bytes);  // slots never written read as zeros, not garbage
  std::memset(p->values.as<void>(), 0, bytes);
  *out = std::move(p);
  return Status::ok();
}

Status paged_attention(const PagedAttentionArgs& a) {
  auto& pool = static_cast<CpuKvPool&>(*a.pool);  // CpuBackend passes only its own pools
  const int64_t hd = pool.head_dim, Hkv = pool.num_kv_heads, B = pool.block_size;
  const TensorView &q = a.q, &k = a.k, &v = a.v, &out = a.out;
  if (q.ndim != 3 || q.dims[2] != hd) return Status::invalid("paged_attention: q must be [T,Hq,hd]");
  const int64_t T = q.dims[0], Hq = q.dims[1];
  for (const TensorView* t : {&k, &v})
    if (t->ndim != 3 || t->dims[0] != T || t->dims[1] != Hkv || t->dims[2] != hd)
      return Status::invalid("paged_attention: k and v must be [T,Hkv,hd]");
  if (out.ndim != 3 || out.dims[0] != T || out.dims[1] != Hq || out.dims[2] != hd)
    return Status::invalid("paged_attention: out must be [T,Hq,hd]");
  if (Hq % Hkv != 0) return Status::invalid("paged_attention: Hq must be a multiple of Hkv");
  if (a.block_tables.ndim != 2) return Status::invalid("paged_attention: block_tables must be [S, max_blocks]");
  if (T == 0) return Status::ok();
  const int32_t* pos_of = a.positions.as<const int32_t>();
  const int32_t* seq_of = a.seq_of.as<const int32_t>();
  const int32_t* tables = a.block_tables.as<const int32_t>();
  const int64_t S = a.block_tables.dims[0], max_blocks = a.block_tables.dims[1];
  // The block of (token t, position j): the addon checked every entry a call reaches; checked again
  // here, where it touches memory.
  auto block_of = [&](int64_t t, int64_t j) -> int64_t {
    const int64_t b = j / B;
    if (seq_of[t] < 0 || seq_of[t] >= S || b >= max_blocks) return -1;
    const int32_t id = tables[seq_of[t] * max_blocks + b];
    return id >= 0 && id < pool.num_blocks ? id : -1;
  };
  for (int64_t t = 0; t < T; ++t)
    if (pos_of[t] < 0 || block_of(t, pos_of[t]) < 0 || (a.sliding_window <= 0 && block_of(t, 0) < 0))
      return Status::invalid("paged_attention: token " + std::to_string(t) + " has no block for its position");

  // 1. the new keys and values: row (t, h) -> pool (block of its position, h, slot)
  std::vector<float> row(static_cast<size_t>(hd));
  for (int64_t t = 0; t < T; ++t) {
    const int64_t pos = pos_of[t], b = block_of(t, pos), slot = pos % B;
    for (int64_t h = 0; h < Hkv; ++h) {
      const size_t src = size_t(t * Hkv + h) * size_t(hd), dst = pool.at(b, h, slot);
      cpu::load_row(k.data, k.dtype, src, hd, row.data());
      cpu::store_row(pool.keys.as<void>(), pool.dtype, dst, hd, row.data());
      cpu::load_row(v.data, v.dtype, src, hd, row.data());
      cpu::store_row(pool.values.as<void>(), pool.dtype, dst, hd, row.data());
    }
  }

  // 2. one task per (token, kv head), the group's query heads together, keys in block runs
  const int64_t group = Hq / Hkv;
  const float scale = 1.0f / std::sqrt(float(hd));
  const AttnKernels& kern = attn_kernels();
  const size_t es = dtype_size(pool.dtype);
  std::vector<uint8_t> bad(static_cast<size_t>(T * Hkv), 0);
  parallel_for(T * Hkv, [&](int64_t task, int) {
    const int64_t t = task / Hkv, kvh = task % Hkv;
    const int64_t pos = pos_of[t];
    const int64_t lo = a.sliding_window > 0 ? std::max<int64_t>(0, pos - a.sliding_window + 1) : 0;
    const int64_t n = pos - lo + 1;
    PagedScratch& s = paged_scratch();
    s.q.resize(size_t(group * hd));
    s.acc.assign(size_t(group * hd), 0.f);
    s.scores.resize(size_t(group * n));
    const size_t q0 = size_t(t * Hq + kvh * group) * size_t(hd);
    cpu::load_row(q.data, q.dtype, q0, group * hd, s.q.data());
    // runs of keys inside one block: [j, j_end)
    auto for_runs = [&](auto&& fn) {
      for (int64_t j = lo; j <= pos;) {
        const int64_t b = block_of(t, j), j_end = std::min(pos + 1, (j / B + 1) * B);
        if (b < 0) {
          bad[size_t(task)] = 1;
          return;
        }
        fn(j, j_end - j, pool.at(b, kvh, j % B) * es);
        j = j_end;
      }
    };
    for_runs([&](int64_t j, int64_t nb, size_t off) {
      for (int64_t g = 0; g < group; ++g)
        kern.scores(s.q.data() + g * hd, pool.keys.as<const uint8_t>() + off, pool.dtype, nb, hd, scale,
                    s.scores.data() + g * n + (j - lo));
    });
    if (bad[size_t(task)]) return;
    for (int64_t g = 0; g < group; ++g) {  // softmax numerators and their sum, in key order
      float* e = s.scores.data() + g * n;
      float mx = -INFINITY;
      for (int64_t j = 0; j < n; ++j) mx = std::max(mx, e[j]);
      float sum = 0.f;
      for (int64_t j = 0; j < n; ++j) sum += (e[j] = std::exp(e[j] - mx));
      s.q[size_t(g * hd)] = 1.0f / sum;  // the query row is no longer needed: keep 1/sum there
    }
    for_runs([&](int64_t j, int64_t nb, size_t off) {
      kern.weighted_sum_heads(s.scores.data() + (j - lo), n, int(group), pool.values.as<const uint8_t>() + off, pool.dtype, nb,
                              hd, s.acc.data());
    });
    for (int64_t g = 0; g < group; ++g) {
      float* acc = s.acc.data() + g * hd;
      const float inv = s.q[size_t(g * hd)];
      for (int64_t i = 0; i < hd; ++i) acc[i] *= inv;
    }
    cpu::store_row(out.data, out.dtype, q0, group * hd, s.acc.data());
  });
  for (uint8_t x : bad)
    if (x) return Status::invalid("paged_attention: a key position has no block in its sequence's table");
  return Status::ok();
}

}  // namespace cpu
}  // namespace moe
