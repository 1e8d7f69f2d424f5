// CPU token sampling (moe/decoder_ops.h): greedy argmax, or temperature + top-p by the exact integer
// rule of moe/sampling_rule.h with a Philox draw of (seed, step, row), the rule the CUDA kernel
// (native/backends/cuda/sampling.cu) follows, so both backends pick the same id from the same logits.
// One row per task; every sum is over integers in index order, so a row's id depends only on its
// logits, the parameters and (seed, step, row), never on the thread count.
#include <cmath>
#include <vector>

#include "cpu_ops.h"
#include "moe/sampling_rule.h"
#include "threadpool.h"

namespace moe {
namespace cpu {

namespace {
// argmax; ties to the lower index; NaN never wins; 0 when every value is NaN (launch_argmax's rule).
int32_t argmax(const float* l, int64_t V) {
  int64_t best = -1;
  for (int64_t i = 0; i < V; ++i)
    if (!std::isnan(l[i]) && (best < 0 || l[i] > l[best])) best = i;
  return int32_t(best < 0 ? 0 : best);
}
}  // namespace

Status sample(const float* logits, int64_t T, int64_t V, const SampleParams& p, int32_t* ids) {
  if (V < 1 || V > kSampleMaxVocab) return Status::invalid("sample: V must be in [1, 2^23]");
  if (!(p.temperature >= 0.f) || !(p.top_p > 0.f && p.top_p <= 1.f))
    return Status::invalid("sample: temperature must be >= 0 and top_p in (0, 1]");
  parallel_for(T, [&](int64_t t, int) {
    const float* row = logits + size_t(t) * size_t(V);
    if (!(p.temperature > 0.f)) {
      ids[t] = argmax(row, V);
      return;
    }
    thread_local std::vector<uint64_t> q;
    q.resize(size_t(V));
    ids[t] = sample_top_p_row(row, V, p.temperature, p.top_p, p.seed, p.step, uint64_t(t), q.data());
  });
  return Status::ok();
}

}  // namespace cpu
}  // namespace moe
