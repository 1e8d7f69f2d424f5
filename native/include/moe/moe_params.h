// moe-kernels: the parameters of the MoE ops, declared once for every backend and for the CUDA
// launchers (native/backends/cuda/launchers.h takes MoeForwardParams as is). Plain structs over
// <cmath>/<cstdint> only, so that kernel sources may include it after cuda_compat.cuh.
#pragma once
#include <cstdint>

#include "moe/route_rng.h"
#include "moe/tensor.h"

namespace moe {

// ---- parameters ------------------------------------------------------------------------------
// Routing (all variants off by default: Mixtral top-k, renormalised). The random draws come from the
// counter-based generator of moe/route_rng.h, keyed by (seed, token index, expert), so a seed gives
// the same routing on every backend and every run.
struct RouteParams {
  int top_k = 2;
  bool normalize = true;  // renormalise the k kept probabilities to sum to one (Mixtral)
  // Noisy top-k gating (Shazeer et al. 2017) when noise_gate is present: W_noise [E,d], any float
  // dtype (an input tensor of the op). The routing logits become H[t,e] = logits[t,e] + N(0,1) *
  // softplus(x_t . W_noise[e]) (route_normal(noise_seed, t, e)); top-k and the softmax use H (with
  // normalize: the softmax over the k kept values of H). Reported logits and statistics use the
  // clean logits.
  TensorView noise_gate;
  uint64_t noise_seed = 0;
  // GShard random routing (top_k == 2 only): the second expert of each token is kept with
  // probability min(1, 2 * g2) (route_keep_second(random_seed, t, w0, w1)); a dropped second slot
  // gets id kNoExpert (-1) and weight 0, and the first keeps its weight.
  bool random_routing = false;
  uint64_t random_seed = 0;
};

// Capacity and phase of a forward.
struct MoeForwardParams {
  RouteParams route;
  int64_t capacity = -1;  // slots per expert; -1: from the capacity factors below
  // Expert capacity from a factor (moe/route_rng.h expert_capacity: ceil(T*k/E * factor)), used when
  // capacity < 0. A call is "decode" when decode == 1, or decode == -1 (auto) and T == 1 (one token:
  // a single sequence's generation step); it then uses eval_capacity_factor when that is > 0, else
  // capacity_factor. Every other call uses capacity_factor. A factor <= 0: dropless.
  double capacity_factor = 0;
  double eval_capacity_factor = 0;
  int decode = -1;
};

// Capacity that a forward applies for T tokens (-1: dropless), by the rule of MoeForwardParams.
inline int64_t moe_capacity(const MoeForwardParams& p, int64_t T, int E) {
  return forward_capacity(p.capacity, p.capacity_factor, p.eval_capacity_factor, p.decode, T, p.route.top_k, E);
}

// Router statistics, the `stats` output [2] f32 of route and moe_forward, from the clean f32 logits:
//   stats[0]  Switch load-balancing loss E * sum_e f_e * P_e as Hugging Face transformers'
//             load_balancing_loss_func computes it for top-k: f_e = (slots routed to e) / T, summed
//             over the k choices (so sum_e f_e = k, and uniform routing gives k), P_e = mean over
//             tokens of softmax(logits)[e]. Slots routed to no expert (random routing) count
//             nowhere; capacity drops still count (f_e is the router's choice, before capacity).
//   stats[1]  ST-MoE router z-loss: mean over tokens of logsumexp(logits_t)^2.
constexpr int kRouterStatsLen = 2;

}  // namespace moe
