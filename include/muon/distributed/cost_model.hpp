// SPDX-License-Identifier: MIT
#pragma once
/// \file distributed/cost_model.hpp
/// \brief What one optimizer step costs each rank under the ways of
/// distributing Muon: bytes sent and received, Newton–Schulz flops on the
/// busiest rank, load imbalance, and optimizer state per rank — against
/// data-parallel AdamW. bench/dist_cost_model.cpp prints the tables;
/// tests/test_dist.cpp checks the "home" strategy's bytes against the
/// bytes dist::Optimizer moves through a counting communicator.
///
/// Strategies (P ranks, N parameter elements, of which N_m in Muon matrices,
/// b bytes per element):
///   replicated  every rank all-reduces the gradients (ring: 2 (P-1)/P N b
///               sent and received) and runs every Newton–Schulz; full state
///               (momentum N_m + two AdamW moments) on every rank.
///   home        this library (dist::Optimizer, GradMode::sum): each Muon
///               matrix has one home (longest-processing-time on
///               max(m,n) min(m,n)^2), AdamW parameters are cut into one
///               range per rank; rank r with share s_r sends N - s_r and
///               receives (P-1) s_r gradient elements, then sends (P-1) s_r
///               and receives N - s_r weight elements (direct exchanges);
///               state s_r's momentum and moments.
///   zero1       ZeRO-1 with gathers (as Moonlight/DeepSpeed shard Muon):
///               reduce-scatter the gradients, all-gather the momentum of
///               the Muon matrices so every rank can orthogonalize every
///               matrix, all-gather the new weights (each (P-1)/P of its
///               size, each way, by ring); every Newton–Schulz on every
///               rank; state 1/P.
///   adamw_dp    data-parallel AdamW: all-reduce (2 (P-1)/P N b each way),
///               no Newton–Schulz, two moments of everything on every rank.
/// Newton–Schulz flops: `steps` x (3 m^2 n + m^3) per matrix (m <= n;
/// symmetric X X^T and A^2, general B X), bench_step's count.

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "../optim/balance.hpp"

namespace muon {
namespace dist {
namespace cost {

/// `copies` matrices of rows x cols (a batch: layers, experts), Muon- or
/// AdamW-routed. An AdamW tensor of any rank is rows x cols elements.
struct Tensor {
  std::string name;
  std::int64_t rows = 1, cols = 1, copies = 1;
  bool muon = true;
  std::int64_t numel() const { return rows * cols * copies; }
};

struct Model {
  std::string name;
  std::vector<Tensor> tensors;
};

/// GPT-2 small (124M): 12 layers, d 768; embeddings, norms, biases on AdamW.
inline Model gpt2_small() {
  const std::int64_t L = 12, d = 768;
  return {"gpt2-small",
          {{"wte", 50257, d, 1, false},
           {"wpe", 1024, d, 1, false},
           {"c_attn", d, 3 * d, L, true},
           {"attn.c_proj", d, d, L, true},
           {"c_fc", d, 4 * d, L, true},
           {"mlp.c_proj", 4 * d, d, L, true},
           {"biases+norms", 1, 3 * d + d + 4 * d + d + 4 * d, L, false},
           {"ln_f", 1, 2 * d, 1, false}}};
}

/// A Llama-like model: `layers` blocks of width d, SwiGLU width f, kv width
/// (grouped-query attention), vocabulary v (embedding and head on AdamW).
inline Model llama(std::string name, std::int64_t layers, std::int64_t d, std::int64_t f,
                   std::int64_t kv, std::int64_t v) {
  return {std::move(name),
          {{"embed", v, d, 1, false},
           {"lm_head", v, d, 1, false},
           {"q_proj", d, d, layers, true},
           {"k_proj", kv, d, layers, true},
           {"v_proj", kv, d, layers, true},
           {"o_proj", d, d, layers, true},
           {"gate_proj", f, d, layers, true},
           {"up_proj", f, d, layers, true},
           {"down_proj", d, f, layers, true},
           {"norms", 1, 2 * d, layers, false},
           {"norm", 1, d, 1, false}}};
}
inline Model llama_7b() { return llama("llama-7b", 32, 4096, 11008, 4096, 32000); }
inline Model llama_70b() { return llama("llama-70b", 80, 8192, 28672, 1024, 32000); }

/// One Mixture-of-Experts layer bank: 64 SwiGLU experts of width 14336 on
/// d 4096 (192 matrices) and the router.
inline Model moe_bank() {
  return {"moe-bank-64x",
          {{"experts.gate", 14336, 4096, 64, true},
           {"experts.up", 14336, 4096, 64, true},
           {"experts.down", 4096, 14336, 64, true},
           {"router", 64, 4096, 1, true}}};
}

inline std::vector<Model> builtin_models() {
  return {gpt2_small(), llama_7b(), llama_70b(), moe_bank()};
}

inline double ns_flops(std::int64_t rows, std::int64_t cols, int steps) {
  const double m = double(std::min(rows, cols)), n = double(std::max(rows, cols));
  return double(steps) * (3 * m * m * n + m * m * m);
}

/// One rank's cost of one step.
struct RankCost {
  double sent = 0, received = 0;  ///< bytes
  double ns_flops = 0;
  double state = 0;  ///< bytes of momentum and moments
};

/// The "home" strategy's per-rank costs, with the homes dist::Optimizer
/// gives: the Muon matrices in order (each copy one job), by cost, longest
/// first; each AdamW tensor cut into P ranges. `elem` bytes per element of
/// the weights and gradients, `state_elem` per element of the state.
inline std::vector<RankCost> home_costs(const Model& model, int P, double elem = 4,
                                        double state_elem = 4, int steps = 5) {
  std::vector<double> share(std::size_t(P), 0), flops(std::size_t(P), 0), state(std::size_t(P), 0);
  std::vector<double> cost;
  std::vector<const Tensor*> of;
  double total = 0;
  for (const Tensor& t : model.tensors) {
    total += double(t.numel());
    if (t.muon) {
      for (std::int64_t c = 0; c < t.copies; ++c) {
        cost.push_back(optim::newton_schulz_cost(double(t.rows), double(t.cols)));
        of.push_back(&t);
      }
    } else {
      const std::int64_t n = t.numel();
      for (int r = 0; r < P; ++r) {
        const double part = double(n * (r + 1) / P - n * r / P);
        share[std::size_t(r)] += part;
        state[std::size_t(r)] += 2 * part;
      }
    }
  }
  const std::vector<int> home = optim::assign_longest_first(cost, P);
  for (std::size_t j = 0; j < home.size(); ++j) {
    const Tensor& t = *of[j];
    const std::size_t r = std::size_t(home[j]);
    share[r] += double(t.rows * t.cols);
    state[r] += double(t.rows * t.cols);
    flops[r] += ns_flops(t.rows, t.cols, steps);
  }
  std::vector<RankCost> out(static_cast<std::size_t>(P));
  for (int r = 0; r < P; ++r) {
    const double s = share[std::size_t(r)];
    // Gradients to the homes, then weights from them.
    out[std::size_t(r)].sent = ((total - s) + double(P - 1) * s) * elem;
    out[std::size_t(r)].received = (double(P - 1) * s + (total - s)) * elem;
    out[std::size_t(r)].ns_flops = flops[std::size_t(r)];
    out[std::size_t(r)].state = state[std::size_t(r)] * state_elem;
  }
  return out;
}

enum class Strategy { replicated, home, zero1, adamw_dp };
inline const char* strategy_name(Strategy s) {
  switch (s) {
    case Strategy::replicated:
      return "replicated";
    case Strategy::home:
      return "home (this library)";
    case Strategy::zero1:
      return "zero1 + gathers";
    case Strategy::adamw_dp:
      return "data-parallel AdamW";
  }
  return "?";
}

/// A strategy's step on P ranks: the worst rank's bytes and state, the
/// busiest rank's Newton–Schulz flops, and imbalance = busiest / mean.
struct Summary {
  double sent = 0, received = 0, busiest_flops = 0, imbalance = 1, state = 0;
};

inline Summary summarize(const Model& model, int P, Strategy s, double elem = 4,
                         double state_elem = 4, int steps = 5) {
  double total = 0, muon = 0, all_flops = 0;
  for (const Tensor& t : model.tensors) {
    total += double(t.numel());
    if (t.muon) {
      muon += double(t.numel());
      all_flops += double(t.copies) * ns_flops(t.rows, t.cols, steps);
    }
  }
  const double adamw = total - muon, ring = double(P - 1) / double(P);
  Summary out;
  switch (s) {
    case Strategy::replicated:
      out.sent = out.received = 2 * ring * total * elem;
      out.busiest_flops = all_flops;
      out.state = (muon + 2 * adamw) * state_elem;
      break;
    case Strategy::home: {
      const std::vector<RankCost> ranks = home_costs(model, P, elem, state_elem, steps);
      double sum_flops = 0;
      for (const RankCost& r : ranks) {
        out.sent = std::max(out.sent, r.sent);
        out.received = std::max(out.received, r.received);
        out.busiest_flops = std::max(out.busiest_flops, r.ns_flops);
        out.state = std::max(out.state, r.state);
        sum_flops += r.ns_flops;
      }
      out.imbalance = sum_flops > 0 ? out.busiest_flops / (sum_flops / double(P)) : 1;
      break;
    }
    case Strategy::zero1:
      out.sent = out.received = ring * (total + muon + total) * elem;
      out.busiest_flops = all_flops;
      out.state = (muon + 2 * adamw) / double(P) * state_elem;
      break;
    case Strategy::adamw_dp:
      out.sent = out.received = 2 * ring * total * elem;
      out.busiest_flops = 0;
      out.state = 2 * total * state_elem;
      break;
  }
  if (s == Strategy::replicated || s == Strategy::zero1) out.imbalance = 1;  // all do all
  return out;
}

}  // namespace cost
}  // namespace dist
}  // namespace muon
