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
#include <cstdio>
#include <string>
#include <vector>

#include <muon/dist/cost_model.hpp>
#include <muon/dist/mpi.hpp>
#include <muon/dist/optimizer.hpp>
#include <muon/optimizer.hpp>

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
// (and divided by the rank count for the mean).
void reduced_grads(Model& m, int k, int ranks, GradMode mode) {
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
      for (std::size_t i = 0; i < sum[j].size(); ++i) sum[j][i] += r.t[j].g[i];
    }
  }
  for (std::size_t j = 0; j < m.t.size(); ++j)
    for (std::size_t i = 0; i < sum[j].size(); ++i)
      m.t[j].g[i] = mode == GradMode::mean ? sum[j][i] * (1.0f / float(ranks)) : sum[j][i];
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

}  // namespace

TEST_CASE("bitwise the single-process optimizer, for every gradient mode and variant") {
  const int P = world_size();
  for (muon::MuonVariant variant : kVariants)
    for (GradMode mode : {GradMode::reduced, GradMode::sum, GradMode::mean}) {
      INFO("ranks " << P << ", mode " << int(mode) << ", " << muon::muon_variant_name(variant));
      muon::dist::MpiCommunicator comm(MPI_COMM_WORLD);
      Model dist_model, ref_model;
      muon::dist::Optimizer<float> opt(comm, muon_options(variant), adamw_options());
      opt.set_ns_threads(1);
      opt.set_grad_mode(mode);
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
  muon::dist::Optimizer<float> opt(comm);
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
  muon::dist::Optimizer<float> opt(comm, muon_options(), adamw_options());
  opt.set_ns_threads(1);
  opt.set_grad_mode(GradMode::reduced);
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
  std::string message;
  try {
    opt.step();
  } catch (const muon::Error& e) {
    message = e.what();
  }
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

TEST_CASE("checkpoints load on any number of ranks and continue bitwise") {
  const int P = world_size();
  for (muon::MuonVariant variant : kVariants) {
    INFO(muon::muon_variant_name(variant));
    const std::string path = "test_dist_checkpoint_np" + std::to_string(P) + ".muon";
    muon::dist::MpiCommunicator comm(MPI_COMM_WORLD);
    Model saved_model, ref_model;
    muon::dist::Optimizer<float> opt(comm, muon_options(variant), adamw_options());
    opt.set_ns_threads(1);
    opt.set_grad_mode(GradMode::sum);
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
        muon::dist::Optimizer<float> again(sub_comm, muon_options(), adamw_options());
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
    MPI_Barrier(MPI_COMM_WORLD);
    if (world_rank() == 0) std::remove(path.c_str());
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
  muon::dist::Optimizer<float> opt(comm);
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
  bool threw = false;
  try {
    opt.qk_clip(h, bad);
  } catch (const muon::Error& e) {
    threw = std::string(e.what()).find("max_logits[2]") != std::string::npos;
  }
  CHECK(everywhere(threw));
  CHECK(everywhere(q == q_single && k == k_single));
}

TEST_CASE("bad input names the parameter and the problem") {
  muon::dist::MpiCommunicator comm(MPI_COMM_WORLD);
  Model m;
  muon::dist::Optimizer<float> opt(comm);
  std::vector<float> w(12), g(12);
  auto message = [](auto&& f) {
    try {
      f();
    } catch (const muon::Error& e) {
      return std::string(e.what());
    }
    return std::string("<no error>");
  };
  const std::string strided =
      message([&] { opt.add_param("w", muon::ParamView<float>::matrix(w.data(), 3, 3, 4), {}); });
  CHECK(strided.find("'w'") != std::string::npos);
  CHECK(strided.find("contiguous row-major") != std::string::npos);
  m.attach(opt);
  opt.build();
  const std::string late = message([&] { opt.add_param("late", {w.data(), {3, 4}}, {}); });
  CHECK(late.find("before the first step") != std::string::npos);
}

TEST_CASE("the cost model's bytes are the bytes a step moves") {
  const int P = world_size();
  muon::dist::MpiCommunicator mpi(MPI_COMM_WORLD);
  muon::dist::CountingCommunicator comm(mpi);
  Model m;
  muon::dist::Optimizer<float> opt(comm);
  opt.set_ns_threads(1);
  opt.set_grad_mode(GradMode::sum);
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
  muon::dist::Optimizer<float> opt(comm);
  std::vector<float> extra(4, 1.0f), gextra(4, 1.0f);
  m.attach(opt);
  if (world_rank() == 1) opt.add_param("extra", {extra.data(), {4}}, {gextra.data(), {4}});
  m.fill_grads(0, -1);
  std::string message;
  try {
    opt.step();
  } catch (const muon::Error& e) {
    message = e.what();
  }
  INFO(message);
  CHECK(everywhere(message.find("rank(s) 1 registered other parameters") != std::string::npos));
  CHECK(everywhere(same_weights(m, before)));
}

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  const int rc = Catch::Session().run(argc, argv);
  int worst = 0;
  MPI_Allreduce(&rc, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return worst;
}
