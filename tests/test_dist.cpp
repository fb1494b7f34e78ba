// SPDX-License-Identifier: MIT
// The distributed optimizer over MPI against the single-process optimizer:
// bitwise the same weights and state at any rank count, for each gradient
// mode; non-finite checks agreed by every rank; checkpoints saved on P ranks
// loaded on P, on sub-communicators of fewer ranks and by muon::Optimizer.
// Run by ctest under mpiexec with 1, 2, 3 and 4 ranks.
#define CATCH_CONFIG_RUNNER
#include "catch.hpp"

#include <mpi.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include <muon/distributed/cost_model.hpp>
#include <muon/distributed/mpi.hpp>
#include <muon/distributed/optimizer.hpp>
#include <muon/optimizer.hpp>

#include "option_samples.hpp"
#include "test_support.hpp"

namespace {

using muon::dist::GradMode;

int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
int world_size() {
  int s = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &s);
  return s;
}

// Deterministic values in [-0.5, 0.5), from (seed, index).
float value(std::uint64_t seed, std::uint64_t i) {
  std::uint64_t x = (seed + 1) * 0x9E3779B97F4A7C15ull + i * 0xBF58476D1CE4E5B9ull;
  x ^= x >> 31;
  x *= 0x94D049BB133111EBull;
  x ^= x >> 29;
  return float(double(x >> 40) / double(1ull << 24)) - 0.5f;
}

struct Tensor {
  std::string name;
  std::vector<std::ptrdiff_t> shape;
  muon::ParamOptions options;
  std::vector<float> w, g;
  std::size_t numel() const {
    std::size_t n = 1;
    for (auto d : shape) n *= std::size_t(d);
    return n;
  }
};

muon::ParamView<float> view(float* data, const std::vector<std::ptrdiff_t>& d) {
  switch (d.size()) {
    case 1:
      return {data, {d[0]}};
    case 2:
      return {data, {d[0], d[1]}};
    case 3:
      return {data, {d[0], d[1], d[2]}};
    default:
      return {data, {d[0], d[1], d[2], d[3]}};
  }
}

// Every kind of parameter: matrices (wide, tall, square), a fused QKV split,
// a 3-D batch, a conv filter, an embedding, biases.
struct Model {
  std::vector<Tensor> t;
  Model() {
    auto add = [this](std::string name, std::vector<std::ptrdiff_t> shape,
                      std::vector<std::ptrdiff_t> split = {}) {
      Tensor x;
      x.name = std::move(name);
      x.shape = std::move(shape);
      x.options.split = std::move(split);
      x.w.resize(x.numel());
      x.g.resize(x.numel());
      for (std::size_t i = 0; i < x.w.size(); ++i) x.w[i] = 0.2f * value(t.size(), i);
      t.push_back(std::move(x));
    };
    add("embed.weight", {50, 24});
    add("h0.qkv.weight", {72, 24}, {24, 24, 24});
    add("h0.qkv.bias", {72});
    add("h0.proj.weight", {24, 24});
    add("h0.fc.weight", {96, 24});
    add("h0.fc.bias", {96});
    add("h0.out.weight", {24, 96});
    add("experts", {3, 16, 24});
    add("conv.weight", {8, 3, 3, 3});
    add("norm.weight", {24});
  }
  // This rank's gradient at step k (rank < 0: the same on every rank), with
  // exponents spread over 2^-8 .. 2^7 so that sums depend on their order.
  void fill_grads(int k, int rank) {
    for (std::size_t j = 0; j < t.size(); ++j)
      for (std::size_t i = 0; i < t[j].g.size(); ++i) {
        const std::uint64_t seed = 1000 + 97 * std::uint64_t(k) + 13 * std::uint64_t(rank + 1) + j;
        const int exponent = int((value(seed + 7, i) + 0.5f) * 16.0f) - 8;
        t[j].g[i] = std::ldexp(value(seed, i), exponent);
      }
  }
  template <class Opt>
  void attach(Opt& opt) {
    for (Tensor& x : t)
      opt.add_param(x.name, view(x.w.data(), x.shape), view(x.g.data(), x.shape), x.options);
  }
};

// The gradient the single process sees: ranks' gradients added in rank order
// (and divided by the rank count for the mean), as docs/distributed.md
// states it. `absent(rank, j)`: that rank holds no gradient for tensor j
// (it adds zeros).
template <class Absent>
void reduced_grads(Model& m, int k, int ranks, GradMode mode, Absent&& absent) {
  if (mode == GradMode::reduced) {
    m.fill_grads(k, -1);
    return;
  }
  Model r;
  std::vector<std::vector<float>> sum(m.t.size());
  for (int rank = 0; rank < ranks; ++rank) {
    r.fill_grads(k, rank);
    for (std::size_t j = 0; j < m.t.size(); ++j) {
      sum[j].resize(m.t[j].g.size(), 0.0f);
      for (std::size_t i = 0; i < sum[j].size(); ++i)
        sum[j][i] += absent(rank, j) ? 0.0f : r.t[j].g[i];
    }
  }
  for (std::size_t j = 0; j < m.t.size(); ++j)
    for (std::size_t i = 0; i < sum[j].size(); ++i)
      m.t[j].g[i] = mode == GradMode::mean ? sum[j][i] / float(ranks) : sum[j][i];
}
void reduced_grads(Model& m, int k, int ranks, GradMode mode) {
  reduced_grads(m, k, ranks, mode, [](int, std::size_t) { return false; });
}

// The Muon family's variants run through the same share and checkpoint
// machinery (AdaMuon with the l2 form, which reads the weights at home).
muon::MuonGroupOptions muon_options(muon::MuonVariant variant = muon::MuonVariant::muon) {
  muon::MuonGroupOptions o;
  o.with_lr(0.05).with_weight_decay(0.1).with_variant(variant);
  if (variant == muon::MuonVariant::adamuon) o.with_weight_decay_form(muon::WeightDecayForm::l2);
  return o;
}
const muon::MuonVariant kVariants[] = {muon::MuonVariant::muon, muon::MuonVariant::normuon,
                                       muon::MuonVariant::adamuon};
muon::AdamWOptions adamw_options() {
  muon::AdamWOptions a;
  a.lr = 0.01;
  a.weight_decay = 0.05;
  return a;
}

bool same_weights(const Model& a, const Model& b) {
  bool same = true;
  for (std::size_t j = 0; j < a.t.size(); ++j) {
    const bool eq = a.t[j].w == b.t[j].w;
    if (!eq) UNSCOPED_INFO("differs: " << a.t[j].name);
    same = same && eq;
  }
  return same;
}

// Every rank agrees that a condition held on every rank.
bool everywhere(bool ok) {
  int v = ok ? 1 : 0, all = 0;
  MPI_Allreduce(&v, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  return all == 1;
}

// A temporary folder of the test's own that every rank of `comm` names:
// rank 0 makes it (muon_test::TempDir) and sends its path; it is removed
// after every rank is done with it.
class SharedTempDir {
 public:
  explicit SharedTempDir(MPI_Comm comm = MPI_COMM_WORLD) : comm_(comm) {
    int rank = 0;
    MPI_Comm_rank(comm_, &rank);
    if (rank == 0) {
      dir_ = std::make_unique<muon_test::TempDir>("dist");
      path_ = dir_->path().string();
    }
    int n = int(path_.size());
    MPI_Bcast(&n, 1, MPI_INT, 0, comm_);
    path_.resize(std::size_t(n));
    MPI_Bcast(&path_[0], n, MPI_CHAR, 0, comm_);
  }
  ~SharedTempDir() { MPI_Barrier(comm_); }  // then rank 0's dir_ goes
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  MPI_Comm comm_;
  std::unique_ptr<muon_test::TempDir> dir_;
  std::string path_;
};

using muon_test::contains;
using muon_test::error_message;

}  // namespace

TEST_CASE("bitwise the single-process optimizer, for every gradient mode and variant") {
  const int P = world_size();
  for (muon::MuonVariant variant : kVariants)
    for (GradMode mode : {GradMode::reduced, GradMode::sum, GradMode::mean}) {
      INFO("ranks " << P << ", mode " << int(mode) << ", " << muon::muon_variant_name(variant));
      muon::dist::MpiCommunicator comm(MPI_COMM_WORLD);
      Model dist_model, ref_model;
      muon::dist::Optimizer<float> opt(comm, mode, muon_options(variant), adamw_options());
      opt.set_ns_threads(1);
      opt.set_window(100);  // several rounds per exchange
      dist_model.attach(opt);
      muon::Optimizer<float> ref(muon_options(variant), adamw_options());
      ref.set_ns_threads(1);
      ref_model.attach(ref);
      for (int k = 0; k < 3; ++k) {
        dist_model.fill_grads(k, mode == GradMode::reduced ? -1 : world_rank());
        reduced_grads(ref_model, k, P, mode);
        const muon::StepReport& r = opt.step();
        ref.step();
        CHECK(r.status == muon::StepStatus::ok);
        CHECK(r.updated == dist_model.t.size());
      }
      CHECK(everywhere(same_weights(dist_model, ref_model)));
      CHECK(dist_model.t[1].w != Model().t[1].w);  // it did step
      CHECK(opt.step_count() == 3);
      // ZeRO-1: each rank holds a share of the state, all of it together.
      std::uint64_t bytes = opt.state_bytes(), total = 0;
      MPI_Allreduce(&bytes, &total, 1, MPI_UINT64_T, MPI_SUM, MPI_COMM_WORLD);
      CHECK(total == ref.state_bytes());
    }
}

TEST_CASE("Muon matrices get homes by Newton-Schulz cost, the same on every rank") {
  muon::dist::MpiCommunicator comm(MPI_COMM_WORLD);
  Model m;
  muon::dist::Optimizer<float> opt(comm, GradMode::sum);
  m.attach(opt);
  const int P = world_size();
  std::vector<int> homes;
  for (const Tensor& x : m.t) {
    if (opt.route(x.name) != muon::Route::muon) {
      CHECK(opt.home(x.name) == -1);
      continue;
    }
    const std::size_t blocks = x.options.split.empty()
                                   ? (x.shape.size() == 3 ? std::size_t(x.shape[0]) : 1)
                                   : x.options.split.size();
    for (std::size_t b = 0; b < blocks; ++b) homes.push_back(opt.home(x.name, b));
  }
  for (int h : homes) CHECK((h >= 0 && h < P));
  // The same plan on every rank: compare with rank 0's.
  std::vector<int> first = homes;
  MPI_Bcast(first.data(), int(first.size()), MPI_INT, 0, MPI_COMM_WORLD);
  CHECK(everywhere(first == homes));
  // With more than one rank, more than one rank is a home.
  if (P > 1) {
    bool spread = false;
    for (int h : homes) spread = spread || h != homes[0];
    CHECK(spread);
  }
}

TEST_CASE("a non-finite gradient: raise refuses on every rank, skip leaves it out everywhere") {
  const int P = world_size();
  muon::dist::MpiCommunicator comm(MPI_COMM_WORLD);
  Model dist_model, ref_model;
  muon::dist::Optimizer<float> opt(comm, GradMode::reduced, muon_options(), adamw_options());
  opt.set_ns_threads(1);
  dist_model.attach(opt);
  muon::Optimizer<float> ref(muon_options(), adamw_options());
  ref.set_ns_threads(1);
  ref_model.attach(ref);
  dist_model.fill_grads(0, -1);
  ref_model.fill_grads(0, -1);
  // The second block of the fused QKV: one block's home sees it.
  dist_model.t[1].g[24 * 24 + 5] = NAN;
  ref_model.t[1].g[24 * 24 + 5] = NAN;
  const Model before = dist_model;
  const std::string message = error_message([&] { opt.step(); });
  INFO(message);
  CHECK(everywhere(message.find("'h0.qkv.weight'") != std::string::npos));
  CHECK(everywhere(same_weights(dist_model, before)));
  opt.set_non_finite_policy(muon::NonFinitePolicy::skip);
  ref.set_non_finite_policy(muon::NonFinitePolicy::skip);
  const muon::StepReport& r = opt.step();
  ref.step();
  REQUIRE(r.skipped.size() == 1);
  CHECK(r.skipped[0].name == "h0.qkv.weight");
  CHECK(r.skipped[0].reason == muon::SkipReason::non_finite_grad);
  CHECK(dist_model.t[1].w == before.t[1].w);
  CHECK(everywhere(same_weights(dist_model, ref_model)));
  (void)P;
}

TEST_CASE("a parameter whose blocks fail differently is skipped for one process's reason") {
  // The reason is decided from the flags of the whole parameter, ORed over
  // its blocks and their homes, as one process decides it: the first in
  // SkipReason order. Here block 0 of the fused QKV overflows its
  // Newton-Schulz input (a finite gradient of 3e38; the sum form of
  // momentum with Nesterov feeds g + mu m = 1.95 g) and block 1 has a NaN
  // gradient: non_finite_grad (the homes' reports, merged by lowest block,
  // said non_finite_state).
  muon::dist::MpiCommunicator comm(MPI_COMM_WORLD);
  muon::MuonGroupOptions o = muon_options();
  o.with_momentum_kind(muon::MomentumKind::sum);
  Model dist_model, ref_model;
  muon::dist::Optimizer<float> opt(comm, GradMode::reduced, o, adamw_options());
  muon::Optimizer<float> ref(o, adamw_options());
  dist_model.attach(opt);
  ref_model.attach(ref);
  for (Model* m : {&dist_model, &ref_model}) {
    m->fill_grads(0, -1);
    m->t[1].g[5] = 3e38f;
    m->t[1].g[24 * 24 + 5] = NAN;
  }
  opt.set_non_finite_policy(muon::NonFinitePolicy::skip);
  ref.set_non_finite_policy(muon::NonFinitePolicy::skip);
  const muon::StepReport& r = opt.step();
  const muon::StepReport& expected = ref.step();
  REQUIRE(expected.skipped.size() == 1);
  REQUIRE(expected.skipped[0].reason == muon::SkipReason::non_finite_grad);
  CHECK(everywhere(r.skipped.size() == 1 && r.skipped[0].name == "h0.qkv.weight" &&
                   r.skipped[0].reason == expected.skipped[0].reason));
  CHECK(everywhere(same_weights(dist_model, ref_model)));
  // Under raise, the refusal is the gradient's, on every rank.
  opt.set_non_finite_policy(muon::NonFinitePolicy::raise);
  const std::string message = error_message([&] { opt.step(); });
  INFO(message);
  CHECK(everywhere(contains(message, "muon: grad: 'h0.qkv.weight' (")));
}

TEST_CASE("checkpoints load on any number of ranks and continue bitwise") {
  const int P = world_size();
  for (muon::MuonVariant variant : kVariants) {
    INFO(muon::muon_variant_name(variant));
    const SharedTempDir dir;
    const std::string path = dir.file("checkpoint.muon");
    muon::dist::MpiCommunicator comm(MPI_COMM_WORLD);
    Model saved_model, ref_model;
    muon::dist::Optimizer<float> opt(comm, GradMode::sum, muon_options(variant), adamw_options());
    opt.set_ns_threads(1);
    saved_model.attach(opt);
    muon::Optimizer<float> ref(muon_options(variant), adamw_options());
    ref.set_ns_threads(1);
    ref_model.attach(ref);
    for (int k = 0; k < 2; ++k) {
      saved_model.fill_grads(k, world_rank());
      reduced_grads(ref_model, k, P, GradMode::sum);
      opt.step();
      ref.step();
    }
    opt.save_file(path);
    MPI_Barrier(MPI_COMM_WORLD);
    // The reference continues one step.
    reduced_grads(ref_model, 2, P, GradMode::sum);
    ref.step();
    // Reload into fresh optimizers over the saved weights, on every split of
    // the world: all of it, halves, single ranks; each continues one step with
    // the same summed gradient (reduced mode: the sum is given).
    for (int parts : {1, 2, P}) {
      if (parts > P) continue;
      INFO("ranks " << P << ", groups of " << (P + parts - 1) / parts);
      MPI_Comm sub;
      MPI_Comm_split(MPI_COMM_WORLD, world_rank() % parts, world_rank(), &sub);
      {
        muon::dist::MpiCommunicator sub_comm(sub);
        Model m = saved_model;
        muon::dist::Optimizer<float> again(sub_comm, GradMode::reduced, muon_options(),
                                           adamw_options());
        again.set_ns_threads(1);
        m.attach(again);
        again.load_file(path);
        CHECK(again.step_count() == 2);
        reduced_grads(m, 2, P, GradMode::sum);
        again.step();
        CHECK(everywhere(same_weights(m, ref_model)));
      }
      MPI_Comm_free(&sub);
    }
    // And the single-process optimizer reads the same file.
    {
      Model m = saved_model;
      muon::Optimizer<float> single(muon_options(), adamw_options());
      single.set_ns_threads(1);
      m.attach(single);
      single.load_file(path);
      reduced_grads(m, 2, P, GradMode::sum);
      single.step();
      CHECK(everywhere(same_weights(m, ref_model)));
    }
  }
}

TEST_CASE("QK-Clip takes the largest maxima of all ranks and keeps the copies equal") {
  const int P = world_size(), rank = world_rank();
  muon::dist::MpiCommunicator comm(MPI_COMM_WORLD);
  const std::ptrdiff_t heads = 3, d = 2, width = 4;
  std::vector<float> q(std::size_t(heads * d * width)), k(q.size()), gq(q.size()), gk(q.size());
  for (std::size_t i = 0; i < q.size(); ++i) {
    q[i] = std::sin(float(i) + 1.0f);
    k[i] = std::cos(float(i) + 2.0f);
  }
  std::vector<float> q_single = q, k_single = k;
  muon::dist::Optimizer<float> opt(comm, GradMode::reduced);
  opt.add_param("q", view(q.data(), {heads * d, width}), view(gq.data(), {heads * d, width}));
  opt.add_param("k", view(k.data(), {heads * d, width}), view(gk.data(), {heads * d, width}));
  muon::QkClipHeads h;
  h.query = "q";
  h.key = "k";
  h.heads = heads;
  // Each rank saw other sequences: head 1's maximum is above tau on the
  // last rank only; the single process sees the maxima over all ranks.
  std::vector<double> mine = {10.0 + rank, rank == P - 1 ? 400.0 : 20.0, 120.0 - rank};
  std::vector<double> all = {10.0 + (P - 1), 400.0, 120.0};
  const muon::QkClipReport r = opt.qk_clip(h, mine);
  CHECK(r.clipped == 2);
  muon::Optimizer<float> single;
  single.add_param("q", view(q_single.data(), {heads * d, width}),
                   view(gq.data(), {heads * d, width}));
  single.add_param("k", view(k_single.data(), {heads * d, width}),
                   view(gk.data(), {heads * d, width}));
  single.qk_clip(h, all);
  CHECK(everywhere(q == q_single && k == k_single));
  // A NaN on one rank: every rank throws, naming the head; nothing written.
  std::vector<double> bad = mine;
  if (rank == 0) bad[2] = std::nan("");
  CHECK(everywhere(contains(error_message([&] { opt.qk_clip(h, bad); }), "max_logits[2]")));
  CHECK(everywhere(q == q_single && k == k_single));
}

TEST_CASE("bad input names the parameter and the problem") {
  muon::dist::MpiCommunicator comm(MPI_COMM_WORLD);
  Model m;
  muon::dist::Optimizer<float> opt(comm, GradMode::sum);
  std::vector<float> w(12), g(12);
  const std::string strided = error_message(
      [&] { opt.add_param("w", muon::ParamView<float>::matrix(w.data(), 3, 3, 4), {}); });
  CHECK(contains(strided, "'w'"));
  CHECK(contains(strided, "contiguous row-major"));
  m.attach(opt);
  opt.build();
  const std::string late = error_message([&] { opt.add_param("late", {w.data(), {3, 4}}, {}); });
  CHECK(contains(late, "before the first step"));
  // A block index past the parameter's blocks (it would read another
  // parameter's job).
  CHECK(opt.home("h0.qkv.weight", 2) >= 0);
  const std::string block = error_message([&] { opt.home("h0.qkv.weight", 3); });
  CHECK(contains(block, "block: 3 is out of range: 'h0.qkv.weight' has 3 block(s)"));
  CHECK(contains(error_message([&] { opt.home("h0.proj.weight", 1); }), "has 1 block(s)"));
  // Enum values that are none of the enumerators.
  CHECK(contains(error_message([&] { muon::dist::Optimizer<float> bad(comm, GradMode(7)); }),
                 "grad_mode: is not a GradMode value (7)"));
  CHECK(contains(error_message([&] { opt.set_non_finite_policy(muon::NonFinitePolicy(9)); }),
                 "is not a NonFinitePolicy value"));
  CHECK(opt.non_finite_policy() == muon::NonFinitePolicy::raise);
}

TEST_CASE("the cost model's bytes are the bytes a step moves") {
  const int P = world_size();
  muon::dist::MpiCommunicator mpi(MPI_COMM_WORLD);
  muon::dist::CountingCommunicator comm(mpi);
  Model m;
  muon::dist::Optimizer<float> opt(comm, GradMode::sum);
  opt.set_ns_threads(1);
  opt.set_window(64);
  m.attach(opt);
  m.fill_grads(0, world_rank());
  opt.build();
  comm.reset();
  opt.step();
  // The same model as the cost model sees it: Muon blocks and batch
  // entries as copies, in registration order; AdamW tensors by size.
  namespace cost = muon::dist::cost;
  const cost::Model model{"test",
                          {{"embed.weight", 50, 24, 1, false},
                           {"h0.qkv.weight", 24, 24, 3, true},
                           {"h0.qkv.bias", 1, 72, 1, false},
                           {"h0.proj.weight", 24, 24, 1, true},
                           {"h0.fc.weight", 96, 24, 1, true},
                           {"h0.fc.bias", 1, 96, 1, false},
                           {"h0.out.weight", 24, 96, 1, true},
                           {"experts", 16, 24, 3, true},
                           {"conv.weight", 8, 27, 1, true},
                           {"norm.weight", 1, 24, 1, false}}};
  const cost::RankCost predicted = cost::home_costs(model, P)[std::size_t(world_rank())];
  INFO("rank " << world_rank() << " of " << P);
  CHECK(double(comm.payload().sent) == predicted.sent);
  CHECK(double(comm.payload().received) == predicted.received);
  CHECK(double(opt.state_bytes()) == predicted.state);
  if (P == 1) CHECK(comm.payload().sent == 0);
}

TEST_CASE("ranks that registered different parameters are refused on every rank") {
  if (world_size() < 2) return;  // needs two ranks to differ (run at np 2..4)
  muon::dist::MpiCommunicator comm(MPI_COMM_WORLD);
  Model m;
  const Model before = m;
  muon::dist::Optimizer<float> opt(comm, GradMode::reduced);
  std::vector<float> extra(4, 1.0f), gextra(4, 1.0f);
  m.attach(opt);
  if (world_rank() == 1) opt.add_param("extra", {extra.data(), {4}}, {gextra.data(), {4}});
  m.fill_grads(0, -1);
  const std::string message = error_message([&] { opt.step(); });
  INFO(message);
  // Raised by the call that compared the registrations, naming the first
  // difference: here an eleventh parameter on rank 1 only.
  CHECK(everywhere(contains(message, "muon: step: rank(s) 1 registered other parameters")));
  CHECK(everywhere(contains(message,
                            "the first difference: parameter 10: rank 0 has none, "
                            "rank 1 has 'extra' (adamw, group 0, shape (4))")));
  CHECK(everywhere(same_weights(m, before)));
}

TEST_CASE("a registration difference names the first differing parameter, option or setting") {
  if (world_size() < 2) return;
  const int last = world_size() - 1;
  const bool odd_one = world_rank() == last;
  const std::string who = "rank " + std::to_string(last);
  muon::dist::MpiCommunicator comm(MPI_COMM_WORLD);
  struct Case {
    const char* what;
    std::function<void(muon::dist::Optimizer<float>&)> change;  // on the last rank only
    std::string expected;
  };
  const std::vector<Case> cases = {
      {"an option", [](auto& o) { o.set_option("lr", 0.5); },
       "group 0 option 'lr': rank 0 has 0.001, " + who + " has 0.5"},
      {"the window", [](auto& o) { o.set_window(100); },
       "window: rank 0 has default, " + who + " has 100"},
      {"the grad mode", [](auto& o) { o.set_grad_mode(GradMode::mean); },
       "grad mode: rank 0 has sum, " + who + " has mean"},
  };
  for (const Case& c : cases) {
    INFO(c.what);
    Model m;
    muon::dist::Optimizer<float> opt(comm, GradMode::sum);
    m.attach(opt);
    if (odd_one) c.change(opt);
    // Made by save(): the error says so.
    std::ostringstream os;
    const std::string message = error_message([&] { opt.save(os); });
    INFO(message);
    CHECK(everywhere(contains(message, "muon: save: rank(s) " + std::to_string(last) +
                                           " registered other parameters or options")));
    CHECK(everywhere(contains(message, "the first difference: " + c.expected)));
  }
  // Another split of one parameter.
  Model m;
  if (odd_one) m.t[1].options.split = {48, 24};
  muon::dist::Optimizer<float> opt(comm, GradMode::sum);
  m.attach(opt);
  const std::string message = error_message([&] { opt.home("h0.qkv.weight"); });
  INFO(message);
  CHECK(everywhere(contains(message, "muon: home: rank(s)")));
  CHECK(everywhere(contains(message,
                            "parameter 1: rank 0 has 'h0.qkv.weight' (muon, group 0, "
                            "shape (72, 24), blocks 24 24 24), " +
                                who +
                                " has 'h0.qkv.weight' (muon, group 0, shape (72, "
                                "24), blocks 48 24)")));
}

TEST_CASE("ranks that differ in any one option are refused on every rank, naming it") {
  // Every row of the option table (option_samples.hpp finds another valid
  // value for each): the last rank's group 0 differs in that row alone, and
  // every rank refuses before anything moves, naming the row's key and both
  // values. Each home would otherwise run its own options: the result would
  // depend on the rank layout.
  if (world_size() < 2) return;
  const int last = world_size() - 1;
  const bool odd_one = world_rank() == last;
  const std::string who = "rank " + std::to_string(last);
  muon::dist::MpiCommunicator comm(MPI_COMM_WORLD);
  const muon::GroupOptions defaults;
  std::size_t rows = 0;
  for (const muon::optim::OptionRow& row : muon::optim::option_table()) {
    INFO("option " << row.key);
    ++rows;
    const muon::GroupOptions other = muon_test::other_value(defaults, row);
    const muon::GroupOptions& mine = odd_one ? other : defaults;
    Model m;
    muon::dist::Optimizer<float> opt(comm, GradMode::sum, mine.muon, mine.adamw);
    m.attach(opt);
    std::ostringstream os;
    const std::string message = error_message([&] { opt.save(os); });
    INFO(message);
    CHECK(everywhere(contains(message, "muon: save: rank(s) " + std::to_string(last) +
                                           " registered other parameters or options")));
    CHECK(everywhere(contains(message, "the first difference: group 0 option '" +
                                           std::string(row.key) + "': rank 0 has " +
                                           row.text(defaults) + ", " + who + " has " +
                                           row.text(other))));
  }
  CHECK(rows == muon::optim::kOptionCount);
  // A schedule under the same name with one coefficient changed: its
  // coefficients are compared, not its name.
  muon::MuonGroupOptions typo;
  if (odd_one) typo.ns.schedule = muon::Schedule({{3.4445, -4.7750, 2.0316}}, 1.0, "jordan");
  Model m;
  muon::dist::Optimizer<float> opt(comm, GradMode::sum, typo);
  m.attach(opt);
  const std::string message = error_message([&] { (void)opt.home("h0.qkv.weight"); });
  INFO(message);
  CHECK(everywhere(contains(message, "group 0 option 'ns_coefficients': rank 0 has jordan")));
  CHECK(everywhere(contains(message, "2.0316")));
}

TEST_CASE(
    "step settings that differ between ranks are refused on every rank before anything moves") {
  if (world_size() < 2) return;
  const int last = world_size() - 1, rank = world_rank();
  const bool odd_one = rank == last;
  muon::dist::MpiCommunicator comm(MPI_COMM_WORLD);
  Model m;
  muon::dist::Optimizer<float> opt(comm, GradMode::sum, muon_options(), adamw_options());
  m.attach(opt);
  m.fill_grads(0, rank);
  opt.step();  // the plan is made with the settings alike
  const Model stepped = m;
  m.fill_grads(1, rank);
  const std::string ranks = "rank(s) " + std::to_string(last);
  // The non-finite policy: one rank raising while the others skip would
  // leave them in the weight exchange.
  if (odd_one) opt.set_non_finite_policy(muon::NonFinitePolicy::skip);
  std::string message = error_message([&] { opt.step(); });
  INFO(message);
  CHECK(everywhere(contains(
      message, "muon: step: the non-finite policy of " + ranks + " differs from rank 0's")));
  opt.set_non_finite_policy(muon::NonFinitePolicy::skip);
  // The lr schedule and the momentum warmup: homes would step on other lrs.
  if (odd_one) opt.set_lr_schedule(muon::LrSchedule::warmup_cosine(2, 10));
  message = error_message([&] { opt.step(); });
  CHECK(everywhere(contains(message, "the lr schedule of " + ranks + " differs")));
  opt.set_lr_schedule(muon::LrSchedule::warmup_cosine(2, 10));
  if (odd_one) opt.set_momentum_warmup(muon::MomentumWarmup{});
  message = error_message([&] { opt.step(); });
  CHECK(everywhere(contains(message, "the momentum warmup of " + ranks + " differs")));
  CHECK(everywhere(same_weights(m, stepped)));
  CHECK(opt.step_count() == 1);
  // Alike again: it steps.
  opt.set_momentum_warmup(muon::MomentumWarmup{});
  CHECK(opt.step().status == muon::StepStatus::ok);
}

TEST_CASE("the grad mode is a constructor argument, fixed once the plan is made") {
  // No constructor without it: a forgotten mode cannot compile.
  static_assert(!std::is_constructible_v<muon::dist::Optimizer<float>, muon::dist::Communicator&>);
  static_assert(!std::is_constructible_v<muon::dist::Optimizer<float>, muon::dist::Communicator&,
                                         muon::MuonGroupOptions>);
  const int P = world_size();
  muon::dist::MpiCommunicator comm(MPI_COMM_WORLD);
  Model dist_model, ref_model;
  muon::dist::Optimizer<float> opt(comm, GradMode::reduced, muon_options(), adamw_options());
  opt.set_ns_threads(1);
  opt.set_grad_mode(GradMode::mean);  // before the plan: allowed
  CHECK(opt.grad_mode() == GradMode::mean);
  dist_model.attach(opt);
  CHECK(opt.home("h0.proj.weight") >= 0);  // makes the plan
  // After it, the staging buffers and the homes' gradient views are made
  // for the mode: refused (it crashed, or read stale gradients).
  CHECK(contains(error_message([&] { opt.set_grad_mode(GradMode::sum); }),
                 "grad_mode: must be set before the first step"));
  CHECK(contains(error_message([&] { opt.set_grad_mode(GradMode::reduced); }),
                 "grad_mode: must be set before the first step"));
  CHECK(
      contains(error_message([&] { opt.set_grad_mode(GradMode(7)); }), "is not a GradMode value"));
  CHECK(opt.grad_mode() == GradMode::mean);
  muon::Optimizer<float> ref(muon_options(), adamw_options());
  ref.set_ns_threads(1);
  ref_model.attach(ref);
  for (int k = 0; k < 2; ++k) {
    dist_model.fill_grads(k, world_rank());
    reduced_grads(ref_model, k, P, GradMode::mean);
    opt.step();
    ref.step();
  }
  CHECK(everywhere(same_weights(dist_model, ref_model)));
}

TEST_CASE("the mean is the rank-order sum divided by P (at P = 3 not the same as times 1/P)") {
  const int P = world_size(), rank = world_rank();
  muon::dist::MpiCommunicator comm(MPI_COMM_WORLD);
  // Gradients with exponents spread over 2^-8 .. 2^7 (as Model's).
  const auto grad = [](int r, std::size_t i) {
    const int exponent = int((value(500 + std::uint64_t(r), i) + 0.5f) * 16.0f) - 8;
    return std::ldexp(value(700 + std::uint64_t(r), i), exponent);
  };
  const std::size_t n = 8 * 6;
  std::vector<float> w(n, 0.1f), g(n);
  for (std::size_t i = 0; i < n; ++i) g[i] = grad(rank, i);
  // The sum form of momentum keeps the first step's gradient as it is
  // (m = mu * 0 + g): the home's buffer is the mean the step used.
  muon::dist::Optimizer<float> opt(comm, GradMode::mean);
  opt.set_option("momentum_kind", "sum");
  opt.add_param("w", {w.data(), {8, 6}}, {g.data(), {8, 6}});
  opt.step();
  // The reference, as docs/distributed.md states it: ((g0 + g1) + g2) + ...
  // in float, then divided by P.
  std::vector<float> expected(n);
  bool reciprocal_differs = false;
  for (std::size_t i = 0; i < n; ++i) {
    float sum = grad(0, i);
    for (int r = 1; r < P; ++r) sum += grad(r, i);
    expected[i] = sum / float(P);
    reciprocal_differs = reciprocal_differs || expected[i] != sum * (1.0f / float(P));
  }
  if (P == 3) CHECK(reciprocal_differs);  // the test can tell the two apart
  bool same = true;
  if (opt.home("w") == rank) {
    const auto& m = opt.momentum_buffer("w");
    REQUIRE(std::size_t(m.size()) == n);
    for (std::size_t i = 0; i < n; ++i) same = same && m.data()[i] == expected[i];
  }
  CHECK(everywhere(same));
}

TEST_CASE("a checkpoint rank 0 cannot write or read is refused on every rank") {
  const SharedTempDir dir;
  muon::dist::MpiCommunicator comm(MPI_COMM_WORLD);
  Model m;
  muon::dist::Optimizer<float> opt(comm, GradMode::sum);
  m.attach(opt);
  m.fill_grads(0, world_rank());
  opt.step();
  const std::string missing = dir.file("no/such/folder/checkpoint.muon");
  // It hung: rank 0 threw before the gather the others waited in.
  const std::string save = error_message([&] { opt.save_file(missing); });
  INFO(save);
  CHECK(everywhere(contains(save, "muon: path: cannot open '" + missing) &&
                   contains(save, "for writing (on rank 0)")));
  const std::string load = error_message([&] { opt.load_file(missing); });
  INFO(load);
  CHECK(everywhere(contains(load, "cannot open '" + missing + "' for reading (on rank 0)")));
  // The optimizer is unharmed: a good path saves and loads.
  const std::string good = dir.file("checkpoint.muon");
  CHECK_NOTHROW(opt.save_file(good));
  CHECK_NOTHROW(opt.load_file(good));
  CHECK(opt.step_count() == 1);
}

TEST_CASE("a QK-Clip call refused or different on one rank is refused on every rank") {
  if (world_size() < 2) return;
  const int odd = world_size() - 1, rank = world_rank();
  const std::string on = " (on rank " + std::to_string(odd) + ")";
  muon::dist::MpiCommunicator comm(MPI_COMM_WORLD);
  const std::ptrdiff_t heads = 3, d = 2, width = 4;
  std::vector<float> q(std::size_t(heads * d * width)), k(q.size()), g(q.size());
  for (std::size_t i = 0; i < q.size(); ++i) {
    q[i] = std::sin(float(i) + 1.0f);
    k[i] = std::cos(float(i) + 2.0f);
  }
  const std::vector<float> q0 = q, k0 = k;
  muon::dist::Optimizer<float> opt(comm, GradMode::reduced);
  opt.add_param("q", view(q.data(), {heads * d, width}), view(g.data(), {heads * d, width}));
  opt.add_param("k", view(k.data(), {heads * d, width}), view(g.data(), {heads * d, width}));
  muon::QkClipHeads h;
  h.query = "q";
  h.key = "k";
  h.heads = heads;
  const std::vector<double> maxima = {500.0, 20.0, 300.0}, four = {500.0, 20.0, 300.0, 1.0};
  // A count that is not `heads` on one rank (MPI aborted: MPI_ERR_TRUNCATE).
  std::string message = error_message([&] { opt.qk_clip(h, rank == odd ? four : maxima); });
  INFO(message);
  CHECK(everywhere(contains(message, "muon: max_logits: holds 4 values for 3 heads" + on)));
  // An unknown parameter on one rank (the others clipped: the copies differed).
  muon::QkClipHeads typo = h;
  if (rank == odd) typo.query = "q_typo";
  message = error_message([&] { opt.qk_clip(typo, maxima); });
  CHECK(
      everywhere(contains(message, "qk_clip query: 'q_typo' is not a registered parameter" + on)));
  // Valid everywhere, but another tau on one rank.
  muon::QkClipOptions options;
  if (rank == odd) options.tau = 50.0;
  message = error_message([&] { opt.qk_clip(h, maxima, options); });
  CHECK(everywhere(
      contains(message, "muon: qk_clip: rank(s) " + std::to_string(odd) + " passed other heads")));
  CHECK(everywhere(q == q0 && k == k0));
  // Alike: it clips.
  CHECK(opt.qk_clip(h, maxima).clipped == 2);
  CHECK(everywhere(q != q0));
}

TEST_CASE("a gradient some ranks lack: zeros under sum and mean, refused under reduced") {
  const int P = world_size(), rank = world_rank();
  muon::dist::MpiCommunicator comm(MPI_COMM_WORLD);
  for (GradMode mode : {GradMode::sum, GradMode::mean}) {
    INFO("mode " << muon::dist::grad_mode_name(mode) << ", ranks " << P);
    Model dist_model, ref_model;
    muon::dist::Optimizer<float> opt(comm, mode, muon_options(), adamw_options());
    opt.set_ns_threads(1);
    opt.set_window(100);
    dist_model.attach(opt);
    muon::Optimizer<float> ref(muon_options(), adamw_options());
    ref.set_ns_threads(1);
    ref_model.attach(ref);
    // The experts (a 3-D batch, blocks on several homes) get no token on the
    // odd ranks at step 0 and on none at step 2; the QKV bias (AdamW, cut
    // across ranks) has no gradient on rank 0 at step 1.
    for (int k = 0; k < 3; ++k) {
      const auto absent = [k](int r, std::size_t j) {
        return (j == 7 && ((k == 0 && r % 2 == 1) || k == 2)) || (j == 2 && k == 1 && r == 0);
      };
      dist_model.fill_grads(k, rank);
      reduced_grads(ref_model, k, P, mode, absent);
      for (std::size_t j = 0; j < dist_model.t.size(); ++j) {
        Tensor& x = dist_model.t[j];
        if (absent(rank, j))
          opt.clear_grad(x.name);
        else
          opt.set_grad(x.name, view(x.g.data(), x.shape));
        bool nowhere = true;
        for (int r = 0; r < P; ++r) nowhere = nowhere && absent(r, j);
        Tensor& y = ref_model.t[j];
        if (nowhere)
          ref.clear_grad(y.name);
        else
          ref.set_grad(y.name, view(y.g.data(), y.shape));
      }
      const muon::StepReport& r = opt.step();
      const muon::StepReport& expected = ref.step();
      INFO("step " << k);
      // The same report on every rank, and the single process's.
      CHECK(everywhere(r.status == expected.status && r.updated == expected.updated &&
                       r.skipped.size() == expected.skipped.size()));
      for (std::size_t s = 0; s < std::min(r.skipped.size(), expected.skipped.size()); ++s)
        CHECK((r.skipped[s].name == expected.skipped[s].name &&
               r.skipped[s].reason == muon::SkipReason::no_grad));
    }
    CHECK(everywhere(same_weights(dist_model, ref_model)));
  }
  if (P < 2) return;
  // Reduced: the gradients are the same everywhere, so are their presence.
  Model m;
  m.fill_grads(0, -1);
  const Model before = m;
  muon::dist::Optimizer<float> opt(comm, GradMode::reduced);
  m.attach(opt);
  if (rank == P - 1) opt.clear_grad("experts");
  const std::string message = error_message([&] { opt.step(); });
  INFO(message);
  std::string with;
  for (int r = 0; r < P - 1; ++r) with += (r ? ", " : "") + std::to_string(r);
  CHECK(everywhere(contains(message, "muon: step: 'experts': rank(s) " + with +
                                         " hold a gradient, rank(s) " + std::to_string(P - 1) +
                                         " none")));
  CHECK(everywhere(same_weights(m, before)));
  opt.set_grad("experts", view(m.t[7].g.data(), m.t[7].shape));
  CHECK(opt.step().status == muon::StepStatus::ok);
}

TEST_CASE("a non-finite gradient under sum names the rank(s) it came from") {
  if (world_size() < 2) return;
  const int P = world_size(), rank = world_rank();
  muon::dist::MpiCommunicator comm(MPI_COMM_WORLD);
  Model m;
  muon::dist::Optimizer<float> opt(comm, GradMode::sum, muon_options(), adamw_options());
  m.attach(opt);
  const Model before = m;
  const int home = opt.home("h0.proj.weight"), bad = (home + 1) % P;
  const std::string prefix = "muon: grad: 'h0.proj.weight' (";
  // From one rank that is not the home (the error named the home).
  m.fill_grads(0, rank);
  if (rank == bad) m.t[3].g[5] = NAN;
  std::string message = error_message([&] { opt.step(); });
  INFO(message);
  CHECK(everywhere(contains(message, prefix + "in the gradient from rank " + std::to_string(bad) +
                                         ") contains NaN or Inf (nothing was updated)")));
  // From two ranks (an Inf and a NaN, in different elements).
  if (P >= 3) {
    const int other = (home + 2) % P;
    m.fill_grads(0, rank);
    if (rank == bad) m.t[3].g[5] = NAN;
    if (rank == other) m.t[3].g[9] = INFINITY;
    message = error_message([&] { opt.step(); });
    CHECK(everywhere(contains(message, prefix + "in the gradients from ranks " +
                                           std::to_string(std::min(bad, other)) + ", " +
                                           std::to_string(std::max(bad, other)))));
  }
  // Finite everywhere, but their sum overflows: no rank to blame.
  m.fill_grads(0, rank);
  m.t[3].g[7] = 3e38f;
  message = error_message([&] { opt.step(); });
  CHECK(everywhere(contains(
      message, prefix + "their sum over ranks overflowed, found on rank " + std::to_string(home))));
  CHECK(everywhere(same_weights(m, before)));
}

TEST_CASE("a checkpoint after steps some parameters missed is muon::Optimizer's, byte for byte") {
  const int P = world_size(), rank = world_rank();
  muon::dist::MpiCommunicator comm(MPI_COMM_WORLD);
  for (muon::MuonVariant variant : kVariants) {
    INFO(muon::muon_variant_name(variant) << ", ranks " << P);
    Model dist_model, ref_model;
    muon::dist::Optimizer<float> opt(comm, GradMode::sum, muon_options(variant), adamw_options());
    opt.set_ns_threads(1);
    dist_model.attach(opt);
    muon::Optimizer<float> ref(muon_options(variant), adamw_options());
    ref.set_ns_threads(1);
    ref_model.attach(ref);
    // Step 1 without gradients for a Muon matrix, a split block's parameter
    // and an AdamW bias: their own step counts fall behind the optimizer's.
    const std::vector<std::size_t> idle = {1, 5, 7};
    for (int k = 0; k < 3; ++k) {
      dist_model.fill_grads(k, rank);
      reduced_grads(ref_model, k, P, GradMode::sum);
      for (std::size_t j : idle) {
        Tensor &x = dist_model.t[j], &y = ref_model.t[j];
        if (k == 1) {
          opt.clear_grad(x.name);
          ref.clear_grad(y.name);
        } else {
          opt.set_grad(x.name, view(x.g.data(), x.shape));
          ref.set_grad(y.name, view(y.g.data(), y.shape));
        }
      }
      opt.step();
      ref.step();
    }
    REQUIRE(ref.param_steps("experts") == 2);
    REQUIRE(ref.step_count() == 3);
    std::ostringstream dist_bytes, ref_bytes;
    opt.save(dist_bytes);
    ref.save(ref_bytes);
    CHECK(everywhere(rank != 0 || dist_bytes.str() == ref_bytes.str()));
  }
}

TEST_CASE("two parameters over the same memory are refused, naming both") {
  // Each step would update the shared elements twice (the core's check,
  // shared with muon::Optimizer: include/muon/optim/registry.hpp).
  muon::dist::MpiCommunicator comm(MPI_COMM_WORLD);
  muon::dist::Optimizer<float> opt(comm, GradMode::sum);
  std::vector<float> w(24), g(24);
  opt.add_param("a", {w.data(), {4, 6}}, {g.data(), {4, 6}});
  CHECK(contains(error_message([&] {
                   opt.add_param("b", {w.data() + 6, {2, 6}}, {g.data(), {2, 6}});
                 }),
                 "'b' shares memory with 'a'"));
  CHECK(opt.param_count() == 1);
}

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  const int rc = Catch::Session().run(argc, argv);
  int worst = 0;
  MPI_Allreduce(&rc, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return worst;
}
