// SPDX-License-Identifier: MIT
// Writes valid checkpoints of the fuzzer's model (the seed corpus):
//   fuzz_checkpoint_seed <dir>   ->  <dir>/seed_step0, seed_step3, seed_payload

#include <fstream>
#include <iostream>
#include <sstream>
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
  // The same payload behind an odd byte: the fuzzer wraps such inputs in a
  // valid envelope itself (see fuzz_checkpoint.cpp).
  std::ostringstream os;
  opt.save(os);
  const std::string file = os.str();
  const std::size_t header = 8 + 4 + 8, crc = 4;
  std::ofstream(dir + "/seed_payload", std::ios::binary)
      << '\x01' << file.substr(header, file.size() - header - crc);
  std::cout << "wrote " << dir << "/seed_step0, seed_step3 and seed_payload\n";
  return 0;
}
