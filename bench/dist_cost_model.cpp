// SPDX-License-Identifier: MIT
/// \file dist_cost_model.cpp
/// \brief Prints what one optimizer step costs each rank under each way of
/// distributing Muon (include/muon/distributed/cost_model.hpp), for the built-in
/// models (GPT-2 small, Llama-like 7B and 70B, a 64-expert MoE bank) and
/// rank counts: bytes sent and received by the worst rank, Newton–Schulz
/// flops on the busiest rank, load imbalance (busiest / mean), and optimizer
/// state per rank; fp32 weights, gradients and state, Jordan x 5.
///
///     dist_cost_model                  # every model, 8 to 1024 ranks
///     dist_cost_model llama-70b 16,512 # one model, chosen rank counts
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include <muon/distributed/cost_model.hpp>

namespace cost = muon::dist::cost;

int main(int argc, char** argv) {
  std::vector<cost::Model> models = cost::builtin_models();
  if (argc > 1) {
    std::vector<cost::Model> chosen;
    for (const cost::Model& m : models)
      if (m.name == argv[1]) chosen.push_back(m);
    if (chosen.empty()) {
      std::fprintf(stderr, "unknown model '%s' (gpt2-small, llama-7b, llama-70b, moe-bank-64x)\n",
                   argv[1]);
      return 2;
    }
    models = chosen;
  }
  std::vector<int> ranks = {8, 64, 256, 1024};
  if (argc > 2) {
    ranks.clear();
    std::stringstream list(argv[2]);
    for (std::string item; std::getline(list, item, ',');) ranks.push_back(std::atoi(item.c_str()));
  }
  const cost::Strategy strategies[] = {cost::Strategy::replicated, cost::Strategy::home,
                                       cost::Strategy::zero1, cost::Strategy::adamw_dp};
  for (const cost::Model& m : models) {
    double params = 0;
    for (const cost::Tensor& t : m.tensors) params += double(t.numel());
    std::printf("\n### %s (%.2f B parameters)\n\n", m.name.c_str(), params / 1e9);
    std::printf(
        "| ranks | strategy | sent GB | received GB | NS TFLOP (busiest) | imbalance | "
        "state GB / rank |\n|---|---|---|---|---|---|---|\n");
    for (int P : ranks) {
      if (P < 1) continue;
      for (cost::Strategy s : strategies) {
        const cost::Summary r = cost::summarize(m, P, s);
        std::printf("| %d | %s | %.3f | %.3f | %.2f | %.2f | %.3f |\n", P, cost::strategy_name(s),
                    r.sent / 1e9, r.received / 1e9, r.busiest_flops / 1e12, r.imbalance,
                    r.state / 1e9);
      }
    }
  }
  return 0;
}
