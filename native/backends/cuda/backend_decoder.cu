// moe-kernels CUDA backend: device memory, linear weights, KV caches and the decoder ops on device
// tensors (device_ops.h), each enqueued on one stream without waiting. Host code only: the kernels are
// the launchers of token_ops.cu, grouped_gemm.cu (linear), attention.cu and sampling.cu. Differences
// from the CPU: rope's frequencies are f32 (HF's rounding), attention needs a head dim of 32, 64, 128
// or 256, add needs one type for a, b and out, and linear writes f32 or the weights' type.
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "device_ops.h"
#include "moe/sampling_rule.h"

namespace moe {
namespace cuda {

namespace {

int64_t rows_of(const TensorView& t) { return t.ndim == 0 ? 0 : t.numel() / t.dims[t.ndim - 1]; }
int64_t last_dim(const TensorView& t) { return t.ndim == 0 ? 0 : t.dims[t.ndim - 1]; }

bool overlaps(const TensorView& a, const TensorView& b) {
  const auto* pa = static_cast<const unsigned char*>(a.data);
  const auto* pb = static_cast<const unsigned char*>(b.data);
  return pa < pb + b.bytes() && pb < pa + a.bytes();
}

// A copy of `t` in `scratch` (enqueued), when `t` overlaps `out`: for ops whose kernels read their
// input while other blocks write the output.
Status unalias(const TensorView& t, const TensorView& out, Scratch& scratch, size_t off, TensorView* view, cudaStream_t s) {
  *view = t;
  if (!overlaps(t, out)) return Status::ok();
  view->data = scratch.at<void>(off);
  MOE_CUDA_TRY(cudaMemcpyAsync(view->data, t.data, t.bytes(), cudaMemcpyDeviceToDevice, s), "copying an aliased input");
  return Status::ok();
}

Status same_dtype(const char* op, const TensorView& a, const char* an, const TensorView& b, const char* bn) {
  if (a.dtype == b.dtype) return Status::ok();
  return Status::unsupported(std::string(op) + " on " + kName + " needs " + an + " and " + bn + " of one type, got " +
                             dtype_name(a.dtype) + " and " + dtype_name(b.dtype));
}

}  // namespace

// ---- memory ---------------------------------------------------------------------------------------
DeviceBuffer::~DeviceBuffer() {
  cudaStream_t s = nullptr;
  if (data && tensor_stream(&s).is_ok()) cudaFreeAsync(data, s);  // after the work enqueued on it
}

Status alloc(size_t bytes, std::shared_ptr<Buffer>* out) {
  cudaStream_t s = nullptr;
  MOE_RETURN_IF_ERROR(tensor_stream(&s));
  MOE_EMU_SERIAL;
  auto b = std::make_shared<DeviceBuffer>();
  if (bytes > 0) {
    cudaError_t e = cudaMallocAsync(&b->data, bytes, s);
    if (e != cudaSuccess) {
      b->data = nullptr;
      return from_cuda(e, ("allocating a " + std::to_string(bytes) + "-byte device tensor").c_str());
    }
    MOE_CUDA_TRY(cudaMemsetAsync(b->data, 0, bytes, s), "zeroing a device tensor");
  }
  b->bytes = bytes;
  *out = std::move(b);
  return Status::ok();
}

// ---- linear weights and KV caches -----------------------------------------------------------------
DeviceLinear::~DeviceLinear() {
  if (!ready().is_ok()) return;  // cudaFree waits for the device: runs when the last holder lets go
  if (w) cudaFree(w);
  if (bias) cudaFree(bias);
}

DeviceKvCache::~DeviceKvCache() {
  if (!ready().is_ok()) return;
  if (k) cudaFree(k);
  if (v) cudaFree(v);
}

DeviceKvPool::~DeviceKvPool() {
  if (!ready().is_ok()) return;
  if (k) cudaFree(k);
  if (v) cudaFree(v);
}

Status create_kv_pool(const KvPoolShape& sh, std::unique_ptr<KvPool>* out) {
  MOE_RETURN_IF_ERROR(ready());
  if (sh.num_blocks < 1 || sh.block_size < 1 || sh.num_kv_heads < 1 || sh.head_dim < 1 || !is_float(sh.dtype))
    return Status::invalid("create_kv_pool: invalid shape or type");
  if (sh.head_dim != 32 && sh.head_dim != 64 && sh.head_dim != 128 && sh.head_dim != 256)
    return Status::unsupported(std::string("the attention on ") + kName + " needs a head dim of 32, 64, 128 or 256, got " +
                               std::to_string(sh.head_dim));
  auto p = std::make_unique<DeviceKvPool>();
  p->num_blocks = sh.num_blocks;
  p->block_size = sh.block_size;
  p->num_kv_heads = sh.num_kv_heads;
  p->head_dim = sh.head_dim;
  p->dtype = sh.dtype;
  p->half_bytes = size_t(sh.num_blocks) * size_t(sh.block_size) * size_t(sh.num_kv_heads) * size_t(sh.head_dim) * dtype_size(sh.dtype);
  const std::string what = "allocating a " + std::to_string(2 * p->half_bytes) + "-byte KV pool";
  MOE_CUDA_TRY(cudaMalloc(&p->k, p->half_bytes), what.c_str());
  MOE_CUDA_TRY(cudaMalloc(&p->v, p->half_bytes), what.c_str());
  MOE_CUDA_TRY(cudaMemset(p->k, 0, p->half_bytes), "zeroing the KV pool");
  MOE_CUDA_TRY(cudaMemset(p->v, 0, p->half_bytes), "zeroing the KV pool");
  *out = std::move(p);
  return Status::ok();
}

Status pack_linear(const TensorView& w, const TensorView* bias, std::unique_ptr<PackedLinear>* out) {
  MOE_RETURN_IF_ERROR(ready());
  if (w.ndim != 2 || !(is_float(w.dtype) || is_quant(w.dtype)) || w.device)
    return Status::invalid("pack_linear: w must be a 2-d float or quantised host tensor");
  if (bias && (bias->ndim != 1 || bias->dims[0] != w.dims[0] || !is_float(bias->dtype) || bias->device))
    return Status::invalid("pack_linear: bias must be a float [out] host tensor");
  MOE_EMU_SERIAL;
  auto l = std::make_unique<DeviceLinear>();
  if (bias) {
    const std::vector<float> b32 = host_f32(*bias);
    l->has_bias = true;
    MOE_CUDA_TRY(cudaMalloc(reinterpret_cast<void**>(&l->bias), b32.size() * 4), "allocating a linear bias");
    MOE_CUDA_TRY(cudaMemcpy(l->bias, b32.data(), b32.size() * 4, cudaMemcpyHostToDevice), "uploading a linear bias");
  }
  l->out_features = w.dims[0];
  l->in_features = w.dims[1];
  l->dtype = w.dtype;
  if (is_quant(w.dtype)) {  // rows in quant_gemm.cu's device layout
    l->row = quant_device_row_bytes(w.dtype, w.dims[1]);
    if (l->row == 0) return Status::invalid(std::string("pack_linear: ") + dtype_name(w.dtype) + " weights need in features a multiple of the block");
    l->w_bytes = l->row * size_t(w.dims[0]);
    std::vector<unsigned char> host(l->w_bytes);
    const size_t src_row = row_bytes(w.dtype, w.dims[1]);
    for (int64_t r = 0; r < w.dims[0]; ++r)
      quant_repack_row(w.dtype, static_cast<const uint8_t*>(w.data) + size_t(r) * src_row, w.dims[1], host.data() + size_t(r) * l->row);
    MOE_CUDA_TRY(cudaMalloc(&l->w, l->w_bytes), ("allocating " + std::to_string(l->w_bytes) + " bytes of linear weights").c_str());
    MOE_CUDA_TRY(cudaMemcpy(l->w, host.data(), l->w_bytes, cudaMemcpyHostToDevice), "uploading linear weights");
    *out = std::move(l);
    return Status::ok();
  }
  l->w_bytes = w.bytes();
  MOE_CUDA_TRY(cudaMalloc(&l->w, l->w_bytes), ("allocating " + std::to_string(l->w_bytes) + " bytes of linear weights").c_str());
  MOE_CUDA_TRY(cudaMemcpy(l->w, w.data, l->w_bytes, cudaMemcpyHostToDevice), "uploading linear weights");
  *out = std::move(l);
  return Status::ok();
}

Status create_kv_cache(const KvCacheShape& sh, std::unique_ptr<KvCache>* out) {
  MOE_RETURN_IF_ERROR(ready());
  if (sh.max_seq < 1 || sh.num_kv_heads < 1 || sh.head_dim < 1 || !is_float(sh.dtype))
    return Status::invalid("create_kv_cache: invalid shape or type");
  if (sh.head_dim != 32 && sh.head_dim != 64 && sh.head_dim != 128 && sh.head_dim != 256)
    return Status::unsupported(std::string("the attention on ") + kName + " needs a head dim of 32, 64, 128 or 256, got " +
                               std::to_string(sh.head_dim));
  auto c = std::make_unique<DeviceKvCache>();
  c->max_seq = sh.max_seq;
  c->num_kv_heads = sh.num_kv_heads;
  c->head_dim = sh.head_dim;
  c->dtype = sh.dtype;
  c->half_bytes = size_t(sh.max_seq) * size_t(sh.num_kv_heads) * size_t(sh.head_dim) * dtype_size(sh.dtype);
  const std::string what = "allocating a " + std::to_string(2 * c->half_bytes) + "-byte KV cache";
  MOE_CUDA_TRY(cudaMalloc(&c->k, c->half_bytes), what.c_str());
  MOE_CUDA_TRY(cudaMalloc(&c->v, c->half_bytes), what.c_str());
  *out = std::move(c);
  return Status::ok();
}

// ---- ops --------------------------------------------------------------------------------------------
Status embedding(const EmbeddingArgs& a, cudaStream_t s) {
  MOE_EMU_SERIAL;
  return launched(launch_embedding(a.table.data, dev_dtype(a.table.dtype), a.table.dims[0], a.table.dims[1],
                                   a.ids.as<const int32_t>(), a.ids.dims[0], a.out.data, dev_dtype(a.out.dtype), nullptr, s),
                  "embedding");
}

Status rms_norm(const RmsNormArgs& a, cudaStream_t s) {
  MOE_EMU_SERIAL;
  // one row per block, read before it is written: out may alias x
  return launched(launch_rms_norm(a.x.data, dev_dtype(a.x.dtype), a.weight.data, dev_dtype(a.weight.dtype), rows_of(a.x),
                                  last_dim(a.x), a.eps, a.out.data, dev_dtype(a.out.dtype), s),
                  "rms_norm");
}

Status linear(const LinearArgs& a, cudaStream_t s) {
  const auto& w = static_cast<const DeviceLinear&>(*a.w);
  const TensorView& x = a.x;
  const TensorView& y = a.y;
  if (is_quant(w.dtype)) {  // x -> f32, y32 = x W^T + bias, -> y's type (x read fully before y is written)
    MOE_EMU_SERIAL;
    const int64_t T = rows_of(x);
    Scratch sc(s);
    const size_t o_x = sc.add(size_t(T) * size_t(w.in_features) * 4), o_y = sc.add(size_t(T) * size_t(w.out_features) * 4);
    MOE_RETURN_IF_ERROR(sc.allocate());
    MOE_RETURN_IF_ERROR(launched(launch_cast(x.data, dev_dtype(x.dtype), sc.at<void>(o_x), DevDType::kF32, T * w.in_features, s), "linear input"));
    MOE_RETURN_IF_ERROR(launched(launch_quant_gemv(sc.at<const float>(o_x), nullptr, 1, T, w.w, 0, w.row, w.dtype, w.in_features,
                                                   w.out_features, w.bias, sc.at<float>(o_y), s),
                                 "quantised linear"));
    return launched(launch_cast(sc.at<const float>(o_y), DevDType::kF32, y.data, dev_dtype(y.dtype), T * w.out_features, s), "linear output");
  }
  if (y.dtype != DType::kF32 && y.dtype != w.dtype)
    return Status::unsupported(std::string("linear on ") + kName + " writes float32 or the weights' type (" + dtype_name(w.dtype) +
                               "), got out type " + dtype_name(y.dtype));
  MOE_EMU_SERIAL;
  const int64_t T = rows_of(x);
  const bool convert = x.dtype != w.dtype;
  const size_t wsb = convert ? linear_workspace_bytes(T, w.in_features, dev_dtype(w.dtype)) : 0;
  // with a bias and a 16-bit y: x W^T in f32 first, then + bias rounded once (as the CPU's epilogue)
  const bool via_f32 = w.bias && y.dtype != DType::kF32;
  Scratch sc(s);
  const size_t o_ws = sc.add(wsb), o_x = sc.add(overlaps(x, y) ? x.bytes() : 0),
               o_y32 = sc.add(via_f32 ? size_t(T) * size_t(w.out_features) * 4 : 0);
  MOE_RETURN_IF_ERROR(sc.allocate());
  TensorView xin;
  MOE_RETURN_IF_ERROR(unalias(x, y, sc, o_x, &xin, s));
  void* y_gemm = via_f32 ? sc.at<void>(o_y32) : y.data;
  const DevDType yt = via_f32 ? DevDType::kF32 : dev_dtype(y.dtype);
  MOE_RETURN_IF_ERROR(launched(launch_linear(xin.data, dev_dtype(x.dtype), T, w.in_features, w.w, dev_dtype(w.dtype),
                                             w.out_features, y_gemm, yt, wsb ? sc.at<void>(o_ws) : nullptr, wsb, s),
                               "linear"));
  if (!w.bias) return Status::ok();
  return launched(launch_bias_add(static_cast<const float*>(y_gemm), w.bias, T, w.out_features, y.data, dev_dtype(y.dtype), s),
                  "linear bias");
}

Status rope(const RopeArgs& a, cudaStream_t s) {
  MOE_RETURN_IF_ERROR(same_dtype("rope", a.x, "x", a.out, "out"));
  MOE_EMU_SERIAL;
  const TensorView& x = a.x;
  if (a.out.data != x.data) {  // the kernel rotates in place: rotate a copy
    if (overlaps(x, a.out)) return Status::invalid("rope: out overlaps x without being x");
    MOE_CUDA_TRY(cudaMemcpyAsync(a.out.data, x.data, x.bytes(), cudaMemcpyDeviceToDevice, s), "copying x to out");
  }
  return launched(launch_rope(a.out.data, nullptr, dev_dtype(x.dtype), x.dims[0], int(x.dims[1]), 0, int(x.dims[2]),
                              a.positions.as<const int32_t>(), float(a.theta), s),
                  "rope");
}

Status attention(const AttentionArgs& a, cudaStream_t s) {
  MOE_RETURN_IF_ERROR(same_dtype("attention", a.k, "k", a.v, "v"));
  auto& c = static_cast<DeviceKvCache&>(*a.cache);
  MOE_EMU_SERIAL;
  const int64_t T = a.q.dims[0];
  const int hq = int(a.q.dims[1]), hkv = int(c.num_kv_heads), hd = int(c.head_dim);
  const size_t wsb = attention_workspace_bytes(T, hq, hd, c.max_seq);
  Scratch sc(s);
  const size_t o_ws = sc.add(wsb), o_q = sc.add(overlaps(a.q, a.out) ? a.q.bytes() : 0);
  MOE_RETURN_IF_ERROR(sc.allocate());
  TensorView qin;
  MOE_RETURN_IF_ERROR(unalias(a.q, a.out, sc, o_q, &qin, s));
  const DevDType cdt = dev_dtype(c.dtype);
  const AttentionParams& p = a.params;
  MOE_RETURN_IF_ERROR(launched(launch_kv_append(a.k.data, a.v.data, dev_dtype(a.k.dtype), T, hkv, hd, p.start_pos, c.k, c.v,
                                                cdt, c.max_seq, s),
                               "appending to the KV cache"));
  return launched(launch_attention(qin.data, dev_dtype(a.q.dtype), T, p.start_pos, hq, hkv, hd, p.sliding_window, c.k, c.v,
                                   cdt, c.max_seq, a.out.data, dev_dtype(a.out.dtype), sc.at<void>(o_ws), wsb, s),
                  "attention");
}

Status paged_attention(const PagedAttentionArgs& a, cudaStream_t s) {
  MOE_RETURN_IF_ERROR(same_dtype("paged_attention", a.k, "k", a.v, "v"));
  auto& pool = static_cast<DeviceKvPool&>(*a.pool);
  MOE_EMU_SERIAL;
  const int64_t T = a.q.dims[0];
  if (T == 0) return Status::ok();
  const int hq = int(a.q.dims[1]), hkv = int(pool.num_kv_heads), hd = int(pool.head_dim);
  const int max_blocks = int(a.block_tables.dims[1]), B = int(pool.block_size);
  const size_t wsb = paged_attention_workspace_bytes(T, hq, hd, a.max_position);
  if (wsb == 0) return Status::invalid("paged_attention: shape not supported on " + std::string(kName));
  Scratch sc(s);
  const size_t o_ws = sc.add(wsb), o_q = sc.add(overlaps(a.q, a.out) ? a.q.bytes() : 0);
  MOE_RETURN_IF_ERROR(sc.allocate());
  TensorView qin;
  MOE_RETURN_IF_ERROR(unalias(a.q, a.out, sc, o_q, &qin, s));
  const DevDType pdt = dev_dtype(pool.dtype);
  const int32_t* pos = a.positions.as<const int32_t>();
  const int32_t* seq = a.seq_of.as<const int32_t>();
  const int32_t* tables = a.block_tables.as<const int32_t>();
  MOE_RETURN_IF_ERROR(launched(launch_paged_kv_append(a.k.data, a.v.data, dev_dtype(a.k.dtype), T, hkv, hd, pos, seq, tables,
                                                      max_blocks, B, pool.k, pool.v, pdt, s),
                               "appending to the KV pool"));
  return launched(launch_paged_attention(qin.data, dev_dtype(a.q.dtype), T, pos, seq, tables, max_blocks, B, a.max_position, hq,
                                         hkv, hd, a.sliding_window, pool.k, pool.v, pdt, a.out.data, dev_dtype(a.out.dtype),
                                         sc.at<void>(o_ws), wsb, s),
                  "paged attention");
}

Status add(const AddArgs& a, cudaStream_t s) {
  MOE_RETURN_IF_ERROR(same_dtype("add", a.a, "a", a.b, "b"));
  MOE_RETURN_IF_ERROR(same_dtype("add", a.a, "a", a.out, "out"));
  MOE_EMU_SERIAL;
  return launched(launch_residual_add(a.a.data, a.b.data, a.out.data, dev_dtype(a.a.dtype), a.a.numel(), s), "add");
}

Status sample(const SampleArgs& a, cudaStream_t s) {
  MOE_EMU_SERIAL;
  const TensorView& l = a.logits;
  const int64_t V = l.dims[l.ndim - 1], T = l.ndim == 2 ? l.dims[0] : 1;
  if (T == 0) return Status::ok();
  const bool pen = a.penalty_offsets.present();
  const size_t wsb = sample_workspace_bytes(T, V, pen);
  if (wsb == 0) return Status::invalid("sample: V must be in [1, 2^23]");
  Scratch sc(s);
  const size_t o_ws = sc.add(wsb);
  MOE_RETURN_IF_ERROR(sc.allocate());
  return launched(launch_sample(l.as<const float>(), T, V, a.rows.as<const SampleRow>(), pen ? a.penalty_ids.as<const int32_t>() : nullptr,
                                pen ? a.penalty_counts.as<const int32_t>() : nullptr, pen ? a.penalty_offsets.as<const int32_t>() : nullptr,
                                pen ? a.penalty_ids.numel() : 0, sc.at<void>(o_ws), wsb, a.ids.as<int32_t>(), s),
                  "sampling");
}

Status cast(const CastArgs& a, cudaStream_t s) {
  if (a.src.dtype == a.dst.dtype) {
    if (a.src.bytes() == 0 || a.src.data == a.dst.data) return Status::ok();
    MOE_CUDA_TRY(cudaMemcpyAsync(a.dst.data, a.src.data, a.src.bytes(), cudaMemcpyDeviceToDevice, s), "copying on the device");
    return Status::ok();
  }
  if (overlaps(a.src, a.dst)) return Status::invalid("cast: dst overlaps src");
  MOE_EMU_SERIAL;
  return launched(launch_cast(a.src.data, dev_dtype(a.src.dtype), a.dst.data, dev_dtype(a.dst.dtype), a.src.numel(), s), "cast");
}

}  // namespace cuda
}  // namespace moe
