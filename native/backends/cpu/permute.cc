// CPU permute: a stable counting sort of the T*k routing slots by expert (histogram, exclusive
// scan, scatter). Index-only: no activation is copied. Slots with id kNoExpert go to no expert. Twin of native/backends/cuda/permute.cu.
#include <algorithm>
#include <vector>

#include "cpu_ops.h"

namespace moe {
namespace cpu {

Status permute(const int32_t* topk_ids, int64_t T, int k, int E, int64_t capacity,
               int32_t* expert_offsets, int32_t* sorted_rows, int32_t* row_of, int32_t* dropped) {
  if (T < 0 || k < 1 || E < 1) return Status::invalid("permute: need T >= 0, k >= 1, E >= 1");
  const int64_t S = T * k;
  std::vector<int64_t> count(size_t(E), 0);
  for (int64_t s = 0; s < S; ++s) {
    const int32_t e = topk_ids[s];
    if (e == kNoExpert) continue;  // random routing dropped this slot: no expert, no capacity drop
    if (e < 0 || e >= E)
      return Status::invalid("permute: topk_ids[" + std::to_string(s) + "] = " + std::to_string(e) +
                             " is not an expert index in [0, " + std::to_string(E) + ")");
    count[size_t(e)]++;
  }
  // exclusive scan of the kept counts
  expert_offsets[0] = 0;
  for (int e = 0; e < E; ++e) {
    const int64_t kept = capacity < 0 ? count[size_t(e)] : std::min<int64_t>(count[size_t(e)], capacity);
    expert_offsets[e + 1] = int32_t(expert_offsets[e] + kept);
  }
  if (dropped) std::fill(dropped, dropped + E, 0);
  std::fill(sorted_rows, sorted_rows + S, -1);
  // scatter in slot order: tokens ascending, so each expert's rows are in token order (stable)
  std::vector<int64_t> fill(size_t(E), 0);
  for (int64_t s = 0; s < S; ++s) {
    const int32_t e = topk_ids[s];
    if (e == kNoExpert) {
      row_of[s] = -1;
      continue;
    }
    const int64_t pos = fill[size_t(e)]++;
    if (capacity >= 0 && pos >= capacity) {
      row_of[s] = -1;
      if (dropped) dropped[e]++;
      continue;
    }
    const int32_t row = int32_t(expert_offsets[e] + pos);
    sorted_rows[row] = int32_t(s / k);
    row_of[s] = row;
  }
  return Status::ok();
}

}  // namespace cpu
}  // namespace moe
