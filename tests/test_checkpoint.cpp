// SPDX-License-Identifier: MIT
// Checkpoints: round trip, bitwise resume, and every kind of bad file raising
// muon::Error while leaving the optimizer exactly as it was.

#include <muon/checkpoint.hpp>
#include <muon/extern_templates.hpp>  // the heavy templates: compiled once
#include <muon/optim/host_state.hpp>
#include <muon/optimizer.hpp>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "catch.hpp"
#include "test_support.hpp"

namespace {

// Overwrites in place: the optimizer holds views of these buffers, so they
// must never be reallocated (no move-assignment of a new vector).
template <class T>
void refill(std::vector<T>& dst, const std::vector<T>& src) {
  std::copy(src.begin(), src.end(), dst.begin());
}

using Index = Eigen::Index;

template <class T>
std::vector<T> gaussian(std::size_t n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<T> v(n);
  for (T& x : v) x = static_cast<T>(normal(rng));
  return v;
}

template <class T>
bool bitwise_equal(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

// A small hybrid model: Muon matrix, split QKV, conv filter, 3-D batch, AdamW bias.
template <class T>
struct Model {
  std::vector<T> w, qkv, conv, batch, bias;
  std::vector<T> gw, gqkv, gconv, gbatch, gbias;
  explicit Model(std::uint64_t seed)
      : w(gaussian<T>(6 * 10, seed)),
        qkv(gaussian<T>(12 * 4, seed + 1)),
        conv(gaussian<T>(4 * 2 * 3 * 3, seed + 2)),
        batch(gaussian<T>(2 * 3 * 5, seed + 3)),
        bias(gaussian<T>(6, seed + 4)),
        gw(w.size()),
        gqkv(qkv.size()),
        gconv(conv.size()),
        gbatch(batch.size()),
        gbias(bias.size()) {}

  template <class Opt>
  void attach(Opt& opt, Index w_cols = 10) {
    opt.add_param("w", {w.data(), {6, w_cols}}, {gw.data(), {6, w_cols}});
    muon::ParamOptions po;
    po.split = {4, 4, 4};
    opt.add_param("qkv", {qkv.data(), {12, 4}}, {gqkv.data(), {12, 4}}, po);
    opt.add_param("conv", {conv.data(), {4, 2, 3, 3}}, {gconv.data(), {4, 2, 3, 3}});
    opt.add_param("batch", {batch.data(), {2, 3, 5}}, {gbatch.data(), {2, 3, 5}});
    opt.add_param("bias", {bias.data(), {6}}, {gbias.data(), {6}});
  }
  void grads(int k) {
    refill(gw, gaussian<T>(gw.size(), 100 + k));
    refill(gqkv, gaussian<T>(gqkv.size(), 200 + k));
    refill(gconv, gaussian<T>(gconv.size(), 300 + k));
    refill(gbatch, gaussian<T>(gbatch.size(), 400 + k));
    refill(gbias, gaussian<T>(gbias.size(), 500 + k));
  }
  bool same(const Model& o) const {
    return bitwise_equal(w, o.w) && bitwise_equal(qkv, o.qkv) && bitwise_equal(conv, o.conv) &&
           bitwise_equal(batch, o.batch) && bitwise_equal(bias, o.bias);
  }
};

template <class T>
void configure(muon::Optimizer<T>& opt) {
  opt.set_option("lr", 0.02);
  opt.set_option("adamw_lr", 0.01);
  opt.set_lr_schedule(muon::LrSchedule::warmup_cosine(3, 12, 0.1));
  opt.set_momentum_warmup(muon::MomentumWarmup{0.8, 0.95, 6});
}

template <class T>
std::string save_bytes(const muon::Optimizer<T>& opt) {
  std::ostringstream os;
  opt.save(os);
  return os.str();
}

template <class T>
std::string load_error(muon::Optimizer<T>& opt, const std::string& bytes,
                       const muon::LoadOptions& options = muon::LoadOptions()) {
  std::istringstream is(bytes);
  try {
    opt.load(is, options);
  } catch (const muon::Error& e) {
    return e.what();
  }
  return "<loaded>";
}

// ---- the envelope, written out here from docs/optimizer.md ------------------
// "MUONCKPT" | u32 version | u64 payload size | payload | u32 CRC-32(payload),
// all little-endian. Tests that edit a payload re-seal it with a valid CRC,
// so that the payload's own checks, not the checksum, must catch the edit.

/// CRC-32 (IEEE, reflected, as zlib), bit by bit.
std::uint32_t reference_crc32(const std::string& bytes) {
  std::uint32_t crc = 0xFFFFFFFFu;
  for (unsigned char byte : bytes) {
    crc ^= byte;
    for (int bit = 0; bit < 8; ++bit) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
  }
  return ~crc;
}

void put_le(std::string& out, std::uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}

std::uint64_t get_le(const std::string& in, std::size_t at, int bytes) {
  std::uint64_t v = 0;
  for (int i = 0; i < bytes; ++i)
    v |= std::uint64_t(static_cast<unsigned char>(in.at(at + std::size_t(i)))) << (8 * i);
  return v;
}

std::string payload_of(const std::string& file) {
  REQUIRE(file.substr(0, 8) == "MUONCKPT");
  const std::uint64_t size = get_le(file, 12, 8);
  REQUIRE(file.size() == 20 + size + 4);
  return file.substr(20, size);
}

std::string seal(const std::string& payload) {
  std::string out = "MUONCKPT";
  put_le(out, 2, 4);
  put_le(out, payload.size(), 8);
  out += payload;
  put_le(out, reference_crc32(payload), 4);
  return out;
}

/// Offset just past the u32-length-prefixed string `name` in a payload (the
/// parameter record that follows it).
std::size_t after_name(const std::string& payload, const std::string& name) {
  std::string key;
  put_le(key, name.size(), 4);
  key += name;
  const std::size_t at = payload.find(key);
  REQUIRE(at != std::string::npos);
  return at + key.size();
}

void set_le(std::string& bytes, std::size_t at, std::uint64_t v, int n) {
  for (int i = 0; i < n; ++i) bytes[at + std::size_t(i)] = static_cast<char>((v >> (8 * i)) & 0xFF);
}

// The u32 version field sits right after the magic; CRC covers the payload only.
std::string with_u32_at(std::string bytes, std::size_t offset, std::uint32_t v) {
  for (int i = 0; i < 4; ++i)
    bytes[offset + static_cast<std::size_t>(i)] = static_cast<char>((v >> (8 * i)) & 0xFF);
  return bytes;
}

}  // namespace

TEST_CASE("CRC-32 matches the standard check value", "[checkpoint]") {
  const char* s = "123456789";
  REQUIRE(muon::checkpoint::crc32(reinterpret_cast<const unsigned char*>(s), 9) == 0xCBF43926u);
  REQUIRE(muon::checkpoint::crc32(nullptr, 0) == 0u);
  // Continuing a CRC over a split buffer equals one pass.
  const auto* u = reinterpret_cast<const unsigned char*>(s);
  REQUIRE(muon::checkpoint::crc32(u + 4, 5, muon::checkpoint::crc32(u, 4)) == 0xCBF43926u);
}

TEST_CASE("the header is little-endian: magic, version, size, payload, CRC", "[checkpoint]") {
  Model<float> m(1);
  muon::Optimizer<float> opt;
  m.attach(opt);
  const std::string bytes = save_bytes(opt);
  REQUIRE(bytes.substr(0, 8) == "MUONCKPT");
  REQUIRE(static_cast<unsigned char>(bytes[8]) == 2);  // version 2, LE
  REQUIRE(bytes[9] == 0);
  std::uint64_t size = 0;
  for (int i = 0; i < 8; ++i)
    size |= std::uint64_t(static_cast<unsigned char>(bytes[12 + i])) << (8 * i);
  REQUIRE(size + 8 + 4 + 8 + 4 == bytes.size());
  const auto* payload = reinterpret_cast<const unsigned char*>(bytes.data() + 20);
  std::uint32_t crc = 0;
  for (int i = 0; i < 4; ++i)
    crc |= std::uint32_t(static_cast<unsigned char>(bytes[20 + size + static_cast<std::size_t>(i)]))
           << (8 * i);
  REQUIRE(crc == muon::checkpoint::crc32(payload, size));
}

TEMPLATE_TEST_CASE("round trip restores buffers, step counts and group options", "[checkpoint]",
                   float, double, Eigen::bfloat16) {
  using T = TestType;
  Model<T> m(2);
  muon::Optimizer<T> a;
  m.attach(a);
  configure(a);
  a.set_option("adjust_lr", "match_rms_adamw");
  a.set_option("ns_coefficients", "polar_express");
  a.set_option("weight_decay", 0.25);
  muon::MuonGroupOptions with_method = a.muon_options();
  with_method.ns.method = muon::NsMethod::standard;
  a.set_muon_options(with_method);
  for (int k = 0; k < 3; ++k) {
    m.grads(k);
    if (k == 2) a.clear_grad("bias");
    a.step();
  }
  const std::string bytes = save_bytes(a);

  Model<T> m2(99);
  muon::Optimizer<T> b;
  m2.attach(b);
  std::istringstream is(bytes);
  b.load(is);
  REQUIRE(save_bytes(b) == bytes);  // everything saved came back
  REQUIRE(b.step_count() == 3);
  REQUIRE(b.param_steps("bias") == 2);
  REQUIRE(b.param_steps("w") == 3);
  REQUIRE(b.momentum_buffer("qkv") == a.momentum_buffer("qkv"));
  REQUIRE(b.exp_avg_sq("bias") == a.exp_avg_sq("bias"));
  REQUIRE(b.muon_options().adjust_lr == muon::LrAdjust::match_rms_adamw);
  REQUIRE(b.muon_options().ns.schedule.name() == "polar_express");
  REQUIRE(b.muon_options().ns.schedule.at(0).a == muon::Schedule::polar_express().at(0).a);
  REQUIRE(b.muon_options().weight_decay == 0.25);
  REQUIRE(b.muon_options().ns.method == muon::NsMethod::standard);
  REQUIRE(b.muon_options().ns.eps_mode == muon::EpsMode::max);
  REQUIRE(b.adamw_options().lr == 0.01);
}

TEMPLATE_TEST_CASE("resuming from a checkpoint is bitwise identical to never stopping",
                   "[checkpoint]", float, double) {
  using T = TestType;
  Model<T> straight(5);
  muon::Optimizer<T> opt;
  straight.attach(opt);
  configure(opt);
  for (int k = 0; k < 10; ++k) {
    straight.grads(k);
    opt.step();
  }

  Model<T> first(5);
  std::string bytes;
  {
    muon::Optimizer<T> half;
    first.attach(half);
    configure(half);
    for (int k = 0; k < 5; ++k) {
      first.grads(k);
      half.step();
    }
    bytes = save_bytes(half);
  }
  Model<T> resumed = first;  // copies of the parameters at step 5
  muon::Optimizer<T> fresh;
  resumed.attach(fresh);
  configure(fresh);
  std::istringstream is(bytes);
  fresh.load(is);
  for (int k = 5; k < 10; ++k) {
    resumed.grads(k);
    fresh.step();
  }
  REQUIRE(resumed.same(straight));
  // And resuming without the checkpoint does differ (the test can fail).
  Model<T> cold = first;
  muon::Optimizer<T> cold_opt;
  cold.attach(cold_opt);
  configure(cold_opt);
  for (int k = 5; k < 10; ++k) {
    cold.grads(k);
    cold_opt.step();
  }
  REQUIRE(!cold.same(straight));
}

TEST_CASE("file helpers round-trip", "[checkpoint]") {
  Model<float> m(6);
  muon::Optimizer<float> a;
  m.attach(a);
  m.grads(0);
  a.step();
  const muon_test::TempDir dir("checkpoint");
  const std::string path = dir.file("roundtrip.muonckpt");
  a.save_file(path);
  muon::Optimizer<float> b;
  Model<float> m2(6);
  m2.attach(b);
  b.load_file(path);
  REQUIRE(save_bytes(b) == save_bytes(a));
  REQUIRE(load_error(b, "") != "<loaded>");
  bool threw = false;
  try {
    b.load_file(dir.file("no/such/dir/x.muonckpt"));
  } catch (const muon::Error&) {
    threw = true;
  }
  REQUIRE(threw);
}

TEST_CASE("corrupt, truncated or mismatched checkpoints throw and change nothing", "[checkpoint]") {
  Model<float> src(7);
  muon::Optimizer<float> a;
  src.attach(a);
  for (int k = 0; k < 2; ++k) {
    src.grads(k);
    a.step();
  }
  const std::string good = save_bytes(a);

  Model<float> dst(8);
  muon::Optimizer<float> b;
  dst.attach(b);
  b.set_option("lr", 0.3);
  dst.grads(0);
  b.step();
  const std::string before = save_bytes(b);
  const auto unchanged = [&] { return save_bytes(b) == before && b.muon_options().lr == 0.3; };

  SECTION("every flipped byte is caught") {
    for (std::size_t i = 0; i < good.size(); ++i) {
      std::string bad = good;
      bad[i] = static_cast<char>(bad[i] ^ 0x5A);
      INFO("byte " << i);
      REQUIRE(load_error(b, bad) != "<loaded>");
      REQUIRE(unchanged());
    }
  }
  SECTION("truncation at any offset is caught") {
    for (std::size_t n = 0; n < good.size(); n += 7) {
      INFO("length " << n);
      REQUIRE(load_error(b, good.substr(0, n)).find("truncated") != std::string::npos);
      REQUIRE(unchanged());
    }
    REQUIRE(load_error(b, good.substr(0, good.size() - 1)) != "<loaded>");
  }
  SECTION("wrong magic and wrong version") {
    std::string bad = good;
    bad[0] = 'X';
    REQUIRE(load_error(b, bad).find("magic") != std::string::npos);
    REQUIRE(load_error(b, with_u32_at(good, 8, 3)).find("version 3") != std::string::npos);
    REQUIRE(load_error(b, with_u32_at(good, 8, 0)).find("version 0") != std::string::npos);
    REQUIRE(unchanged());
  }
  SECTION("a huge size field does not allocate it") {
    std::string bad = good;
    for (int i = 12; i < 20; ++i) bad[static_cast<std::size_t>(i)] = static_cast<char>(0x7F);
    REQUIRE(load_error(b, bad).find("truncated") != std::string::npos);
    REQUIRE(unchanged());
  }
  SECTION("mismatched shape, unknown parameter, other buffer dtype") {
    Model<float> other(9);
    muon::Optimizer<float> c;
    other.attach(c, 9);  // "w" is 6 x 9 instead of 6 x 10
    REQUIRE(load_error(c, good).find("shape differs") != std::string::npos);

    muon::Optimizer<float> d;
    std::vector<float> x(5 * 80), gx(60);  // each parameter in memory of its own
    d.add_param("renamed", {x.data(), {6, 10}}, {gx.data(), {6, 10}});
    muon::ParamOptions qkv_split;
    qkv_split.split = {4, 4, 4};
    d.add_param("qkv", {x.data() + 80, {12, 4}}, {gx.data(), {12, 4}}, qkv_split);
    d.add_param("conv", {x.data() + 160, {4, 2, 3, 3}}, {gx.data(), {4, 2, 3, 3}});
    d.add_param("batch", {x.data() + 240, {2, 3, 5}}, {gx.data(), {2, 3, 5}});
    d.add_param("bias", {x.data() + 320, {6}}, {gx.data(), {6}});
    const std::string d_before = save_bytes(d);
    // Every name missing on either side is listed, in one message.
    const std::string renamed = load_error(d, good);
    INFO(renamed);
    REQUIRE(renamed.find("not in the file: 'renamed'") != std::string::npos);
    REQUIRE(renamed.find("in the file only: 'w'") != std::string::npos);
    REQUIRE(renamed.find("checkpoint stream") != std::string::npos);
    REQUIRE(save_bytes(d) == d_before);
    // A rename map makes it load.
    REQUIRE(load_error(d, good, muon::LoadOptions::with_renames({{"w", "renamed"}})) == "<loaded>");
    REQUIRE(save_bytes(d) != d_before);

    muon::Optimizer<float> missing;
    Model<float> part(10);
    missing.add_param("w", {part.w.data(), {6, 10}}, {part.gw.data(), {6, 10}});
    const std::string extra = load_error(missing, good);
    INFO(extra);
    REQUIRE(extra.find("in the file only: 'qkv', 'conv', 'batch', 'bias'") != std::string::npos);

    Model<double> dm(11);
    muon::Optimizer<double> e;
    dm.attach(e);
    const std::string dtype = load_error(e, good);
    INFO(dtype);
    REQUIRE(dtype.find("holds float32 buffers, this optimizer keeps float64 buffers") !=
            std::string::npos);

    muon::Optimizer<float> more_groups;
    Model<float> sm(12);
    sm.attach(more_groups);
    more_groups.add_group(muon::MuonGroupOptions());
    REQUIRE(load_error(more_groups, good).find("groups") != std::string::npos);

    // The same parameters, but "qkv" split into other row blocks.
    muon::Optimizer<float> split_differs;
    Model<float> sd(15);
    split_differs.add_param("w", {sd.w.data(), {6, 10}}, {sd.gw.data(), {6, 10}});
    muon::ParamOptions po;
    po.split = {6, 6};
    split_differs.add_param("qkv", {sd.qkv.data(), {12, 4}}, {sd.gqkv.data(), {12, 4}}, po);
    split_differs.add_param("conv", {sd.conv.data(), {4, 2, 3, 3}},
                            {sd.gconv.data(), {4, 2, 3, 3}});
    split_differs.add_param("batch", {sd.batch.data(), {2, 3, 5}}, {sd.gbatch.data(), {2, 3, 5}});
    split_differs.add_param("bias", {sd.bias.data(), {6}}, {sd.gbias.data(), {6}});
    REQUIRE(load_error(split_differs, good).find("split differs") != std::string::npos);
  }
  SECTION("payload checks, each reached through a valid checksum") {
    const std::string payload = payload_of(good);
    REQUIRE(seal(payload) == good);  // the test's own envelope writer agrees
    // Payload: str "muon.optimizer" | u8 buffer dtype | u8 parameter dtype |
    // i64 step count | groups | parameters. Parameter record after its name:
    // u8 route | u32 group | u8 ndim | ndim x i64 shape | u8 column-major |
    // u32 blocks | blocks x i64 rows | i64 steps | u32 buffer count |
    // buffers (str name | u8 dtype | u64 count | data).
    const std::size_t header = 4 + 14;                     // the payload kind
    const std::size_t bias = after_name(payload, "bias");  // 1-D (6), AdamW
    const std::size_t bias_steps = bias + 1 + 4 + 1 + 8 + 1 + 4 + 8;
    const std::size_t qkv = after_name(payload, "qkv");  // 2-D (12, 4), split 4, 4, 4
    const std::size_t qkv_first_block = qkv + 1 + 4 + 1 + 2 * 8 + 1 + 4;
    const std::size_t exp_avg_sq = after_name(payload, "exp_avg_sq") + 1 + 8;
    struct Edit {
      const char* what;
      std::function<void(std::string&)> apply;
      const char* message;
    };
    const std::vector<Edit> edits = {
        {"route", [&](std::string& p) { p[bias] = 1; }, "route differs"},
        {"route out of range", [&](std::string& p) { p[bias] = 9; }, "route differs"},
        {"group", [&](std::string& p) { set_le(p, bias + 1, 3, 4); }, "group differs"},
        {"split", [&](std::string& p) { set_le(p, qkv_first_block, 5, 8); }, "split differs"},
        {"duplicate name", [&](std::string& p) { p.replace(bias - 4, 4, "conv"); },
         "appears twice"},
        {"negative parameter steps",
         [&](std::string& p) { set_le(p, bias_steps, std::uint64_t(-1), 8); },
         "step count out of range"},
        {"parameter steps near INT64_MAX",
         [&](std::string& p) { set_le(p, bias_steps, 0x7FFFFFFFFFFFFFFFu, 8); },
         "step count out of range"},
        {"negative optimizer steps",
         [&](std::string& p) { set_le(p, header + 2, std::uint64_t(-5), 8); },
         "step count out of range"},
        {"optimizer steps near INT64_MAX",
         [&](std::string& p) { set_le(p, header + 2, 0x7FFFFFFFFFFFFFFEu, 8); },
         "step count out of range"},
        {"column-major flag", [&](std::string& p) { p[qkv + 1 + 4 + 1 + 2 * 8] = 1; },
         "shape differs"},
        {"payload kind", [&](std::string& p) { p[4] = 'M'; }, "not an optimizer state"},
        {"NaN second moment", [&](std::string& p) { set_le(p, exp_avg_sq, 0x7FC00000u, 4); },
         "invalid value"},
        {"negative second moment", [&](std::string& p) { set_le(p, exp_avg_sq, 0xBF800000u, 4); },
         "invalid value"},
        {"infinite momentum",
         [&](std::string& p) {
           set_le(p, after_name(p, "momentum_buffer") + 1 + 8, 0x7F800000u, 4);
         },
         "invalid value"},
        {"trailing bytes", [&](std::string& p) { p.push_back('\0'); }, "trailing bytes"},
        {"buffer dtype", [&](std::string& p) { p[header] = 2; }, "float64 buffers"},
        {"unknown dtype", [&](std::string& p) { p[header] = 9; }, "unknown buffer dtype"},
    };
    for (const Edit& e : edits) {
      INFO(e.what);
      std::string edited = payload;
      e.apply(edited);
      const std::string message = load_error(b, seal(edited));
      INFO(message);
      CHECK(message.find(e.message) != std::string::npos);
      CHECK(unchanged());
    }
  }
  SECTION("a user adjust_lr_fn must be present to load a group saved with one") {
    Model<float> fm(13);
    muon::Optimizer<float> with_fn(muon::MuonGroupOptions().with_adjust_lr(
        muon::LrAdjustFn([](double lr, Eigen::Index, Eigen::Index) { return 2 * lr; })));
    fm.attach(with_fn);
    const std::string fn_bytes = save_bytes(with_fn);
    REQUIRE(load_error(b, fn_bytes).find("adjust_lr_fn") != std::string::npos);
    REQUIRE(unchanged());
    Model<float> fm2(14);
    muon::Optimizer<float> with_fn2(muon::MuonGroupOptions().with_adjust_lr(
        muon::LrAdjustFn([](double lr, Eigen::Index, Eigen::Index) { return 2 * lr; })));
    fm2.attach(with_fn2);
    REQUIRE(load_error(with_fn2, fn_bytes) == "<loaded>");
  }
}

namespace {

// The recipe tests/data/checkpoint_v1_{float,double}.muonckpt were written
// with by muon 0.1 (format version 1): this model, two groups, three steps.
template <class T>
struct V1Recipe {
  Model<T> m{1};
  muon::Optimizer<T> opt;
  V1Recipe() {
    // Model<T>(1) draws w, qkv, conv, batch, bias from seeds 1..5, as the
    // generator did.
    opt.add_group(
        muon::MuonGroupOptions().with_lr(0.05).with_momentum_kind(muon::MomentumKind::sum));
    opt.add_param("w", {m.w.data(), {6, 10}}, {m.gw.data(), {6, 10}});
    muon::ParamOptions po;
    po.split = {4, 4, 4};
    opt.add_param("qkv", {m.qkv.data(), {12, 4}}, {m.gqkv.data(), {12, 4}}, po);
    po.split.clear();
    po.group = 1;
    opt.add_param("conv", {m.conv.data(), {4, 2, 3, 3}}, {m.gconv.data(), {4, 2, 3, 3}}, po);
    opt.add_param("batch", {m.batch.data(), {2, 3, 5}}, {m.gbatch.data(), {2, 3, 5}});
    opt.add_param("bias", {m.bias.data(), {6}}, {m.gbias.data(), {6}});
  }
  void train() {
    opt.set_option("lr", 0.02);
    opt.set_option("adamw_lr", 0.01);
    opt.set_option("ns_coefficients", "polar_express");
    opt.set_option("adjust_lr", "match_rms_adamw", 1);
    for (int k = 0; k < 3; ++k) {
      m.grads(k);
      if (k == 2) opt.clear_grad("bias");
      opt.step();
    }
  }
};

std::string data_file(const char* name) { return std::string(MUON_TEST_DATA_DIR) + "/" + name; }

}  // namespace

TEMPLATE_TEST_CASE("checkpoints written by muon 0.1 (format version 1) still load", "[checkpoint]",
                   float, double) {
  using T = TestType;
  const std::string path =
      data_file(std::is_same<T, float>::value ? "checkpoint_v1_float.muonckpt"
                                              : "checkpoint_v1_double.muonckpt");
  V1Recipe<T> fresh;
  fresh.opt.load_file(path);
  REQUIRE(fresh.opt.step_count() == 3);
  REQUIRE(fresh.opt.param_steps("w") == 3);
  REQUIRE(fresh.opt.param_steps("bias") == 2);
  REQUIRE(fresh.opt.muon_options(0).lr == 0.02);
  REQUIRE(fresh.opt.muon_options(0).ns.schedule.name() == "polar_express");
  REQUIRE(fresh.opt.adamw_options(0).lr == 0.01);
  REQUIRE(fresh.opt.muon_options(1).lr == 0.05);
  REQUIRE(fresh.opt.muon_options(1).momentum_kind == muon::MomentumKind::sum);
  REQUIRE(fresh.opt.muon_options(1).adjust_lr == muon::LrAdjust::match_rms_adamw);
  REQUIRE(fresh.opt.muon_options(1).ns.eps_mode == muon::EpsMode::max);
  // The buffers are those the same three steps give today.
  V1Recipe<T> trained;
  trained.train();
  for (const char* name : {"w", "qkv", "conv", "batch"})
    REQUIRE((fresh.opt.momentum_buffer(name) - trained.opt.momentum_buffer(name))
                .cwiseAbs()
                .maxCoeff() <= 1e-6 * trained.opt.momentum_buffer(name).cwiseAbs().maxCoeff());
  REQUIRE((fresh.opt.exp_avg_sq("bias") - trained.opt.exp_avg_sq("bias")).cwiseAbs().maxCoeff() <=
          1e-6 * trained.opt.exp_avg_sq("bias").cwiseAbs().maxCoeff());
  // Saved again, it is a version 2 file that loads into the trained optimizer.
  const std::string v2 = save_bytes(fresh.opt);
  REQUIRE(static_cast<unsigned char>(v2[8]) == 2);
  REQUIRE(load_error(trained.opt, v2) == "<loaded>");
  REQUIRE(save_bytes(trained.opt) == v2);
  REQUIRE(muon::checkpoint_param_names(path) ==
          std::vector<std::string>{"w", "qkv", "conv", "batch", "bias"});
}

namespace {

// A user lr rule (a checkpoint stores only that the group had one).
double doubled_lr(double lr, Eigen::Index, Eigen::Index) { return 2 * lr; }

// The option sets of tests/data/checkpoint_option_sets.muonckpt, one group
// each: the defaults; every option away from its default; each variant with
// its defaults; and the rules by which some keys are stored only when not
// the default (or always in an AdaMuon group). The file was written by the
// hand-written writer that preceded the option table (optim/option_table.hpp):
// the table's writer must store the same bytes, and the reader read them.
std::vector<muon::GroupOptions> stored_option_sets() {
  std::vector<muon::GroupOptions> sets(7);
  sets[0] = muon::GroupOptions();  // the defaults
  muon::MuonGroupOptions& every = sets[1].muon;
  every.lr = 0.03;
  every.weight_decay = 0.2;
  every.weight_decay_form = muon::WeightDecayForm::palm;
  every.momentum = 0.8;
  every.nesterov = false;
  every.momentum_kind = muon::MomentumKind::sum;
  every.ns.schedule = muon::Schedule({{3.0, -3.2, 1.2}, {1.875, -1.25, 0.375}}, 1.02, "mine",
                                     muon::Schedule::PastEnd::cycle);
  every.ns.steps = 7;
  every.ns.eps = 1e-6;
  every.ns.eps_mode = muon::EpsMode::add;
  every.ns.norm_divisor = 1.05;
  every.ns.method = muon::NsMethod::standard;
  every.ns.normalization = muon::NsNormalization::aol;
  every.adjust_lr = muon::LrAdjust::match_rms_adamw;
  every.adjust_lr_fn = doubled_lr;
  every.cautious_weight_decay = true;
  every.lr_scale = 0.5;
  every.variant = muon::MuonVariant::adamuon;
  every.normuon_beta2 = 0.9;
  every.normuon_eps = 1e-9;
  every.adamuon_form = muon::AdaMuonForm::plain;
  every.adamuon_beta2 = 0.99;
  every.adamuon_eps = 1e-7;
  sets[1].adamw = muon::AdamWOptions{4e-4, 0.8, 0.95, 1e-10, 0.03};
  sets[2].muon = muon::MuonGroupOptions::normuon();
  sets[3].muon = muon::MuonGroupOptions::adamuon();  // form and beta2 stored though default
  // The plain form on a Muon group (stored: not the default), an lr scale
  // and the independent decay.
  sets[4].muon.adamuon_form = muon::AdaMuonForm::plain;
  sets[4].muon.lr_scale = 2.0;
  sets[4].muon.weight_decay_form = muon::WeightDecayForm::independent;
  // AdaMuon's plain form with beta2 at today's default.
  sets[5].muon = muon::MuonGroupOptions::adamuon().with_adamuon_form(muon::AdaMuonForm::plain);
  // A built-in schedule with its own divisor, L2 decay, NorMuon's eps.
  sets[6].muon.ns = muon::NewtonSchulzOptions(muon::Schedule::polar_express(), 6);
  sets[6].muon.ns.eps_mode = muon::EpsMode::max;
  sets[6].muon.weight_decay_form = muon::WeightDecayForm::l2;
  sets[6].muon.variant = muon::MuonVariant::normuon;
  sets[6].muon.normuon_eps = 1e-12;
  sets[6].adamw.beta2 = 0.95;
  return sets;
}

// An optimizer with one group per option set and no parameters.
muon::Optimizer<float> optimizer_of(const std::vector<muon::GroupOptions>& sets) {
  muon::Optimizer<float> opt(sets[0].muon, sets[0].adamw);
  for (std::size_t g = 1; g < sets.size(); ++g) opt.add_group(sets[g].muon, sets[g].adamw);
  return opt;
}

std::string read_bytes(const std::string& path) {
  std::ifstream is(path, std::ios::binary);
  REQUIRE(is.good());
  return std::string(std::istreambuf_iterator<char>(is), {});
}

}  // namespace

TEST_CASE("group options are stored byte for byte as before the option table; the file loads",
          "[checkpoint][options]") {
  const std::vector<muon::GroupOptions> sets = stored_option_sets();
  const std::string bytes = save_bytes(optimizer_of(sets));
  const std::string path = data_file("checkpoint_option_sets.muonckpt");
  // MUON_WRITE_TEST_DATA=1 wrote the file (once, with the hand-written writer).
  if (std::getenv("MUON_WRITE_TEST_DATA")) {
    std::ofstream os(path, std::ios::binary);
    os << bytes;
  }
  REQUIRE(bytes == read_bytes(path));
  // Read into an optimizer of default groups (group 1 with a user rule, as
  // a group saved with one needs): every set comes back, so it saves the
  // same bytes again.
  std::vector<muon::GroupOptions> defaults(sets.size());
  defaults[1].muon.adjust_lr_fn = [](double lr, Eigen::Index, Eigen::Index) { return lr; };
  muon::Optimizer<float> loaded = optimizer_of(defaults);
  loaded.load_file(path);
  CHECK(save_bytes(loaded) == bytes);
  CHECK(loaded.muon_options(1).ns.schedule.past_end() == muon::Schedule::PastEnd::cycle);
  CHECK(loaded.muon_options(1).adamuon_form == muon::AdaMuonForm::plain);
  CHECK(loaded.muon_options(3).adamuon_form == muon::AdaMuonForm::sign);
  CHECK(loaded.muon_options(6).ns.divisor() == 1.01);
  CHECK(loaded.adamw_options(1).eps == 1e-10);
}

TEST_CASE("checkpoint_param_names lists a file's parameters; rename maps them", "[checkpoint]") {
  Model<float> m(21);
  muon::Optimizer<float> a;
  m.attach(a);
  m.grads(0);
  a.step();
  const std::string bytes = save_bytes(a);
  std::istringstream is(bytes);
  REQUIRE(muon::checkpoint_param_names(is) ==
          std::vector<std::string>{"w", "qkv", "conv", "batch", "bias"});
  // A framework renamed every module: "model." prefixes.
  Model<float> m2(22);
  muon::Optimizer<float> b;
  b.add_param("model.w", {m2.w.data(), {6, 10}}, {m2.gw.data(), {6, 10}});
  muon::ParamOptions po;
  po.split = {4, 4, 4};
  b.add_param("model.qkv", {m2.qkv.data(), {12, 4}}, {m2.gqkv.data(), {12, 4}}, po);
  b.add_param("model.conv", {m2.conv.data(), {4, 2, 3, 3}}, {m2.gconv.data(), {4, 2, 3, 3}});
  b.add_param("model.batch", {m2.batch.data(), {2, 3, 5}}, {m2.gbatch.data(), {2, 3, 5}});
  b.add_param("model.bias", {m2.bias.data(), {6}}, {m2.gbias.data(), {6}});
  muon::LoadOptions prefix;
  prefix.rename = [](const std::string& n) { return "model." + n; };
  REQUIRE(load_error(b, bytes, prefix) == "<loaded>");
  REQUIRE(b.momentum_buffer("model.qkv") == a.momentum_buffer("qkv"));
  REQUIRE(b.exp_avg("model.bias") == a.exp_avg("bias"));
  REQUIRE(b.param_steps("model.w") == 1);
}

TEST_CASE("save_file replaces the old checkpoint atomically", "[checkpoint]") {
  Model<float> m(31);
  muon::Optimizer<float> a;
  m.attach(a);
  const muon_test::TempDir dir("checkpoint");
  const std::string path = dir.file("atomic.muonckpt");
  a.save_file(path);
  const auto read_all = [](const std::string& p) {
    std::ifstream is(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(is), {});
  };
  const std::string old = read_all(path);
  REQUIRE(old == save_bytes(a));
  // A writer that dies half way (a full disk, a killed job): the previous
  // checkpoint is intact and no temporary file is left behind.
  struct Injected {};
  REQUIRE_THROWS_AS(muon::detail::write_file_atomically(path,
                                                        [&](std::ostream& os) {
                                                          os << old.substr(0, old.size() / 2);
                                                          throw Injected{};
                                                        }),
                    Injected);
  REQUIRE(read_all(path) == old);
  // A stream that fails (the writer's own error path) likewise.
  REQUIRE_THROWS_AS(muon::detail::write_file_atomically(
                        path, [](std::ostream& os) { os.setstate(std::ios::badbit); }),
                    muon::Error);
  REQUIRE(read_all(path) == old);
  int files = 0;  // the checkpoint and no temporary file
  for (const auto& entry : std::filesystem::directory_iterator(dir.path())) {
    INFO(entry.path().string());
    CHECK(entry.path().string() == path);
    ++files;
  }
  REQUIRE(files == 1);
  // A directory that does not exist: a named error, nothing written.
  REQUIRE_THROWS_AS(a.save_file(dir.file("no/such/dir/x.muonckpt")), muon::Error);
  // A successful save replaces the content.
  m.grads(0);
  a.step();
  a.save_file(path);
  REQUIRE(read_all(path) == save_bytes(a));
  REQUIRE(read_all(path) != old);
}

TEST_CASE("a CPU checkpoint passes through the device optimizer's state path byte for byte",
          "[checkpoint]") {
  // muon::cuda::Optimizer keeps its buffers on the device; around the
  // copies, its save() and load() are this host code: the core's match,
  // optim::HostState (buffers as float arrays) and the core's save. Running
  // it here on a CPU checkpoint, with a core registered as the device
  // optimizer would register the same tensors, must give the same bytes.
  Model<float> m(41);
  muon::Optimizer<float> cpu;
  m.attach(cpu);
  configure(cpu);
  cpu.add_group(muon::MuonGroupOptions().with_lr(0.07));
  for (int k = 0; k < 3; ++k) {
    m.grads(k);
    cpu.step();
  }
  const std::string bytes = save_bytes(cpu);

  muon::optim::Core device_core;  // what muon::cuda::Optimizer<float> holds
  device_core.add_group(muon::MuonGroupOptions());
  for (const std::string& name : cpu.param_names()) {
    const muon::optim::ParamRecord& p = cpu.core().param(cpu.core().index(name));
    muon::ParamOptions po;
    po.route = p.route;
    po.group = p.group;
    if (p.blocks.size() > 1 && p.shape.ndim != 3) po.split.assign(p.blocks.begin(), p.blocks.end());
    device_core.add_param(name, p.shape, po);
  }
  std::istringstream in(bytes);
  muon::optim::Core::Matched matched =
      device_core.match(in, muon::checkpoint::Dtype::float32, muon::LoadOptions());
  const muon::optim::HostState host(device_core, matched);  // "uploaded"
  device_core.commit(matched);
  std::ostringstream out;
  host.save(out, device_core, muon::checkpoint::Dtype::float32);  // "downloaded" and saved
  REQUIRE(out.str() == bytes);
  REQUIRE(device_core.step_count() == 3);
  REQUIRE(device_core.group(1).muon.lr == 0.07);
}

// ---- what save writes, load reads -------------------------------------------------
// One set of limits (optim::limits, kMaxSteps) for writer and reader: a state
// within them round-trips, a state beyond them is refused by save, naming
// what is too large, before a byte is written. Never a file that cannot be
// read back.

namespace {

// save() and save_file() both refuse; the stream stays empty and the file
// already at the path is kept. Returns save()'s message.
std::string refused_save(const muon::Optimizer<float>& opt) {
  std::ostringstream os;
  const std::string message = muon_test::error_message([&] { opt.save(os); });
  CHECK(os.str().empty());
  const muon_test::TempDir dir("checkpoint_limits");
  const std::string path = dir.file("kept.muonckpt");
  std::ofstream(path) << "previous";
  CHECK_THROWS_AS(opt.save_file(path), muon::Error);
  std::ifstream is(path);
  CHECK(std::string(std::istreambuf_iterator<char>(is), {}) == "previous");
  return message;
}

// Saves `a`, loads the bytes into `b`, and checks b saves the same bytes.
void round_trip(const muon::Optimizer<float>& a, muon::Optimizer<float>& b) {
  const std::string bytes = save_bytes(a);
  INFO(load_error(b, bytes));
  REQUIRE(load_error(b, bytes) == "<loaded>");
  CHECK(save_bytes(b) == bytes);
}

}  // namespace

TEST_CASE("long schedules and schedule names round-trip", "[checkpoint][limits]") {
  std::vector<float> w(6 * 4), g(6 * 4);
  std::vector<muon::Coefficients> rows(5000, muon::Coefficients{1.875, -1.25, 0.375});
  rows[4999].a = 1.5;  // the last row is read back too
  muon::MuonGroupOptions o;
  o.ns.schedule = muon::Schedule(rows, 1.0, std::string(300, 's'));
  muon::Optimizer<float> a(o), b;
  a.add_param("w", {w.data(), {6, 4}}, {g.data(), {6, 4}});
  b.add_param("w", {w.data(), {6, 4}}, {g.data(), {6, 4}});
  round_trip(a, b);
  CHECK(b.muon_options().ns.schedule.rows().size() == 5000);
  CHECK(b.muon_options().ns.schedule.rows()[4999].a == 1.5);
  CHECK(b.muon_options().ns.schedule.name() == std::string(300, 's'));
  // Beyond the limits: refused by name.
  muon::Optimizer<float> c(muon::MuonGroupOptions().with_ns(muon::NewtonSchulzOptions(
      muon::Schedule(std::vector<muon::Coefficients>(muon::optim::limits::schedule_rows + 1,
                                                     muon::Coefficients{1.5, -0.5, 0.0})),
      5)));
  CHECK(muon_test::contains(refused_save(c), "schedule 'custom' has 65537 rows"));
  muon::Optimizer<float> d(muon::MuonGroupOptions().with_ns(muon::NewtonSchulzOptions(
      muon::Schedule({{1.5, -0.5, 0.0}}, 1.0, std::string(70000, 'n')), 5)));
  CHECK(muon_test::contains(refused_save(d), "the schedule name 'nnnn"));
}

TEST_CASE("many groups round-trip; more than a checkpoint holds are refused by save",
          "[checkpoint][limits]") {
  std::vector<float> w(6 * 4), g(6 * 4);
  muon::Optimizer<float> a, b;
  for (int k = 1; k < 4097; ++k) {
    a.add_group(muon::MuonGroupOptions().with_lr(1e-3 * k));
    b.add_group(muon::MuonGroupOptions());
  }
  REQUIRE(a.group_count() == 4097);
  muon::ParamOptions last;
  last.group = 4096;
  a.add_param("w", {w.data(), {6, 4}}, {g.data(), {6, 4}}, last);
  b.add_param("w", {w.data(), {6, 4}}, {g.data(), {6, 4}}, last);
  round_trip(a, b);
  CHECK(b.muon_options(4096).lr == a.muon_options(4096).lr);
  while (a.group_count() < muon::optim::limits::groups) a.add_group({});
  CHECK(save_bytes(a).size() > 0);  // exactly at the limit: written
  a.add_group({});
  CHECK(muon_test::contains(refused_save(a),
                            "65537 parameter groups; a checkpoint holds 1 to 65536"));
}

TEST_CASE("a parameter name longer than a checkpoint holds is refused by save, by name",
          "[checkpoint][limits]") {
  std::vector<float> w(6 * 4), g(6 * 4), v(6), gv(6);
  const std::string longest(muon::optim::limits::name_bytes, 'p');
  muon::Optimizer<float> a, b;
  a.add_param(longest, {w.data(), {6, 4}}, {g.data(), {6, 4}});
  b.add_param(longest, {w.data(), {6, 4}}, {g.data(), {6, 4}});
  round_trip(a, b);
  a.add_param("layer." + std::string(70000, 'x'), {v.data(), {6}}, {gv.data(), {6}});
  const std::string message = refused_save(a);
  INFO(message);
  CHECK(muon_test::contains(message, "parameter 'layer.xxxx"));
  CHECK(muon_test::contains(message,
                            "...' has 70006 bytes; a checkpoint holds names of up to 65536"));
  CHECK(message.size() < 300);  // the name itself is cut
}

TEST_CASE("a step count at the checkpoint's limit is refused by save, not written unreadable",
          "[checkpoint][limits]") {
  Model<float> m(71);
  muon::Optimizer<float> a;
  m.attach(a);
  m.grads(0);
  a.step();
  const std::string file = save_bytes(a);
  // The optimizer's count, and separately the bias's, one below the limit.
  const std::int64_t last = muon::optim::kMaxSteps - 1;
  std::string payload = payload_of(file);
  const std::size_t step_count_at = 4 + std::strlen(muon::optim::kStateKind) + 2;
  REQUIRE(get_le(payload, step_count_at, 8) == 1);
  set_le(payload, step_count_at, std::uint64_t(last), 8);
  // bias: route, group, ndim, 1 size, column-major flag, 1 block, then steps.
  const std::size_t bias_steps_at =
      after_name(payload_of(file), "bias") + 1 + 4 + 1 + 8 + 1 + 4 + 8;
  REQUIRE(get_le(payload, bias_steps_at, 8) == 1);
  std::string bias_only = payload_of(file);
  set_le(bias_only, bias_steps_at, std::uint64_t(last), 8);
  for (const bool optimizer_count : {true, false}) {
    INFO((optimizer_count ? "the optimizer's count" : "the bias's count"));
    Model<float> m2(72);
    muon::Optimizer<float> b;
    m2.attach(b);
    REQUIRE(load_error(b, seal(optimizer_count ? payload : bias_only)) == "<loaded>");
    CHECK(save_bytes(b).size() > 0);  // 2^62 - 1 is written
    m2.grads(1);
    b.step();  // now 2^62: a file with it would not load
    const std::string message = refused_save(b);
    INFO(message);
    CHECK(muon_test::contains(message, optimizer_count
                                           ? "the optimizer's step count 4611686018427387904"
                                           : "parameter 'bias''s step count 4611686018427387904"));
    CHECK(muon_test::contains(message, "outside the checkpoint's range [0, 2^62)"));
  }
}
