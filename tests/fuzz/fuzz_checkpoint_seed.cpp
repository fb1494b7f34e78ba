// SPDX-License-Identifier: MIT
// Writes valid checkpoints of the fuzzer's model (the seed corpus):
//   fuzz_checkpoint_seed <dir>   ->  <dir>/seed_step0, <dir>/seed_step3

#include <iostream>
#include <string>

#include "fuzz_model.hpp"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: fuzz_checkpoint_seed <output directory>\n";
    return 2;
  }
  const std::string dir = argv[1];
  FuzzModel model;
  muon::Optimizer<float> opt;
  model.attach(opt);
  opt.save_file(dir + "/seed_step0");
  opt.set_option("adjust_lr", "match_rms_adamw");
  opt.set_option("ns_coefficients", "polar_express");
  for (int k = 0; k < 3; ++k) opt.step();
  opt.save_file(dir + "/seed_step3");
  std::cout << "wrote " << dir << "/seed_step0 and seed_step3\n";
  return 0;
}
