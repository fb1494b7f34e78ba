// SPDX-License-Identifier: MIT
// libFuzzer target: arbitrary bytes into Optimizer::load. The loader may only
// succeed or throw muon::Error, never crash, hang or read out of bounds; and
// when it throws, the optimizer must be exactly as before (checked by saving
// before and after and comparing the bytes). The step after a successful
// load obeys the same rule, and what a successful load accepted saves into
// a file that loads again.

#include <cstdint>
#include <cstdlib>
#include <sstream>
#include <string>

#include "fuzz_model.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzModel model;
  muon::Optimizer<float> opt;
  model.attach(opt);
  opt.step();  // non-zero buffers, so "unchanged" is a real check
  std::ostringstream before;
  opt.save(before);

  // Half of the inputs (odd first byte) are wrapped in a valid envelope (magic,
  // version, size, CRC), so the fuzzer reaches the payload parser instead of
  // stopping at the checksum; the rest go in raw.
  std::string bytes(reinterpret_cast<const char*>(data), size);
  if (size > 0 && (data[0] & 1u)) {
    const std::string payload = bytes.substr(1);
    std::ostringstream wrapped;
    muon::checkpoint::write(wrapped, [&payload](muon::checkpoint::Writer& w) {
      w.elements(payload.data(), payload.size(), 1);
    });
    bytes = wrapped.str();
  }
  std::istringstream input(bytes);
  try {
    opt.load(input);
  } catch (const muon::Error&) {
    std::ostringstream after;
    opt.save(after);
    if (after.str() != before.str()) std::abort();  // a failed load modified the optimizer
    return 0;
  }
  // A load that succeeded must leave a state that saves and steps; the step
  // may refuse (muon::Error: a loaded lr under which an update would
  // overflow, say), and then nothing may have changed.
  std::ostringstream again;
  opt.save(again);
  // What the reader accepted, the writer writes and the reader reads back:
  // writer and reader share one set of limits (optim::limits).
  {
    FuzzModel model2;
    muon::Optimizer<float> reloaded;
    model2.attach(reloaded);
    std::istringstream back(again.str());
    try {
      reloaded.load(back);
    } catch (const muon::Error&) {
      std::abort();  // a file save() wrote that load() refuses
    }
  }
  try {
    opt.step();
  } catch (const muon::Error&) {
    std::ostringstream after_step;
    opt.save(after_step);
    if (after_step.str() != again.str()) std::abort();  // a refused step modified the state
  }
  return 0;
}
