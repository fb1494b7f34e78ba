// SPDX-License-Identifier: MIT
// Proof that the hot paths allocate nothing: after the first call with a
// prebuilt Workspace and prebuilt options, orthogonalize_into and the pointer
// orthogonalize_batch perform no heap allocation at all; after its first
// step, neither does Optimizer::step (nor check()).
//
// Two independent witnesses:
//  1. every global operator new/delete of the program is replaced and counted
//     (tests/alloc_counter.hpp; this catches std::vector, std::function,
//     std::string, ...);
//  2. this file is compiled with EIGEN_RUNTIME_NO_MALLOC, and the calls run
//     with Eigen::internal::set_is_malloc_allowed(false): Eigen's own
//     allocations (malloc-based, invisible to witness 1) then trip an
//     eigen_assert, which this file turns into an exception so a violation
//     fails the test instead of aborting the run.
#include <stdexcept>
#include <string>
#include <type_traits>

#define MUON_TEST_DEFINE_ALLOC_COUNTER  // this program's operator new/delete
#include "alloc_counter.hpp"

namespace no_alloc_test {

/// What an eigen_assert failure becomes in this file.
struct EigenAssertion : std::logic_error {
  using std::logic_error::logic_error;
};
[[noreturn]] inline void eigen_assert_failed(const char* condition) {
  throw EigenAssertion(condition);
}

}  // namespace no_alloc_test

// Must precede every Eigen include of this translation unit.
#define eigen_assert(x) ((x) ? static_cast<void>(0) : no_alloc_test::eigen_assert_failed(#x))

#include <muon/muon.hpp>

#include <vector>

#include "catch.hpp"
#include "test_support.hpp"

namespace {

using Eigen::Index;
using muon::NewtonSchulzOptions;
using muon::Schedule;
namespace mt = muon_test;

/// What happened on the heap while `f` ran with Eigen's allocations forbidden.
struct HeapActivity {
  long news = 0, deletes = 0;
  std::string eigen_violation;  // empty unless Eigen tried to allocate
};

template <class F>
HeapActivity heap_activity_of(F&& f) {
  HeapActivity h;
  const mt::AllocScope scope;
  Eigen::internal::set_is_malloc_allowed(false);
  try {
    f();
  } catch (const no_alloc_test::EigenAssertion& e) {
    h.eigen_violation = e.what();
  }
  Eigen::internal::set_is_malloc_allowed(true);
  const mt::AllocCounts during = scope.counts();
  h.news = during.news;
  h.deletes = during.deletes;
  return h;
}

void require_no_heap_activity(const HeapActivity& h) {
  INFO("operator new calls: " << h.news << ", operator delete calls: " << h.deletes
                              << ", Eigen: " << h.eigen_violation);
  CHECK(h.news == 0);
  CHECK(h.deletes == 0);
  CHECK(h.eigen_violation.empty());
}

std::vector<NewtonSchulzOptions> prebuilt_options() {
  NewtonSchulzOptions torch_like;
  torch_like.with_eps(1e-7, muon::EpsMode::max);
  return {NewtonSchulzOptions(), NewtonSchulzOptions(Schedule::polar_express(), 6),
          NewtonSchulzOptions(Schedule::cubic(), 3), torch_like};
}

}  // namespace

TEST_CASE("the witnesses work: they see an allocation when there is one") {
  // Without this, the zero counts below could come from a broken probe.
  const HeapActivity by_new = heap_activity_of([] {
    auto* p = new std::vector<int>(100);
    delete p;
  });
  CHECK(by_new.news >= 2);
  CHECK(by_new.deletes >= 2);
  const Eigen::MatrixXf A = Eigen::MatrixXf::Ones(256, 256);
  Eigen::MatrixXf C(256, 256);
  // Eigen's expression product packs 256 x 256 floats: over the stack limit.
  const HeapActivity by_eigen = heap_activity_of([&] { C.noalias() = A * A; });
  INFO(by_eigen.eigen_violation);
  CHECK(!by_eigen.eigen_violation.empty());
}

TEMPLATE_TEST_CASE("orthogonalize_into allocates nothing after the first call", "", float, double,
                   Eigen::bfloat16) {
  using T = TestType;
  struct Shape {
    Index rows, cols;
  };
  std::vector<Shape> shapes = {{48, 130}, {130, 48}, {40, 40}, {1, 33}, {33, 1}};
  // Large enough that Eigen's products would heap-allocate packing buffers
  // (and that the backend may split them over threads). Few options there:
  // with eigen_assert active in this file, they are the slow part.
  const std::size_t first_large = shapes.size();
  if (!std::is_same<T, Eigen::bfloat16>::value) shapes.push_back({256, 512});
  if (std::is_same<T, float>::value) shapes.push_back({512, 256});
  std::uint64_t seed = 300;
  for (std::size_t s = 0; s < shapes.size(); ++s) {
    const Shape sh = shapes[s];
    const muon::Matrix<T> G = mt::gaussian(sh.rows, sh.cols, ++seed).template cast<T>();
    muon::Matrix<T> out(sh.rows, sh.cols), inplace = G;
    muon::Workspace<T> ws(sh.rows, sh.cols);
    auto options = prebuilt_options();
    if (s >= first_large) options.resize(2);
    using RowMajor = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    RowMajor row_major = G;
    Eigen::Map<RowMajor> row_major_map(row_major.data(), sh.rows, sh.cols);
    for (const auto& opt : options) {
      INFO(muon::scalar_traits<T>::name << " " << sh.rows << "x" << sh.cols << ", "
                                        << opt.schedule.name() << " x" << opt.steps << ", seed "
                                        << seed);
      muon::orthogonalize_into(G, out, ws, opt);  // first call: may set things up
      inplace = G;
      row_major = G;
      require_no_heap_activity(heap_activity_of([&] {
        muon::orthogonalize_into(G, out, ws, opt);
        muon::orthogonalize_into(inplace, inplace, ws, opt);
        muon::orthogonalize_into(row_major_map, row_major_map, ws, opt);
      }));
      // And the calls did their job: NS(G), as the textbook iteration in
      // double on the same (rounded) input gives it.
      const Eigen::MatrixXd want =
          mt::plain_newton_schulz(G.template cast<double>(), mt::paper(opt.schedule.name()),
                                  opt.steps, opt.eps, opt.eps_mode == muon::EpsMode::max);
      const double tol = std::is_same<T, double>::value  ? 1e-12
                         : std::is_same<T, float>::value ? 1e-4
                                                         : 2e-2;
      CHECK(muon::reference::relative_distance(out.template cast<double>(), want) < tol);
      CHECK(muon::reference::relative_distance(inplace.template cast<double>(), want) < tol);
      CHECK(muon::reference::relative_distance(row_major.template cast<double>(), want) < tol);
    }
    muon::orthogonalize_into(G, out, ws);  // the default-options overload
    require_no_heap_activity(heap_activity_of([&] { muon::orthogonalize_into(G, out, ws); }));
  }
}

TEMPLATE_TEST_CASE("orthogonalize_batch (pointer overload) allocates nothing after the first call",
                   "", float, double) {
  using T = TestType;
  struct Shape {
    Index rows, cols;
  };
  for (const Shape sh : {Shape{64, 160}, Shape{160, 64}}) {
    const Index batch = 3, size = sh.rows * sh.cols;
    std::vector<T> in(std::size_t(batch * size)), out(in.size());
    for (Index i = 0; i < batch; ++i)
      Eigen::Map<muon::Matrix<T>>(in.data() + i * size, sh.rows, sh.cols) =
          mt::gaussian(sh.rows, sh.cols, 400 + i).template cast<T>();
    muon::Workspace<T> ws(sh.rows, sh.cols);
    const NewtonSchulzOptions opt(Schedule::polar_express(), 6);
    INFO(sh.rows << "x" << sh.cols << ", seeds 400..402");
    muon::orthogonalize_batch(in.data(), out.data(), batch, size, ws, opt);
    require_no_heap_activity(heap_activity_of([&] {
      muon::orthogonalize_batch(in.data(), out.data(), batch, size, ws, opt);
      muon::orthogonalize_batch(out.data(), out.data(), batch, size, ws, opt);  // in place
    }));
    // Applied twice (the second call in place on the first's output).
    const double tol = std::is_same<T, double>::value ? 1e-12 : 1e-4;
    for (Index i = 0; i < batch; ++i) {
      const Eigen::MatrixXd G =
          Eigen::Map<const muon::Matrix<T>>(in.data() + i * size, sh.rows, sh.cols)
              .template cast<double>();
      const Eigen::MatrixXd once = mt::plain_newton_schulz(G, mt::paper_polar_express(), 6);
      const Eigen::MatrixXd twice = mt::plain_newton_schulz(once, mt::paper_polar_express(), 6);
      const Eigen::MatrixXd got =
          Eigen::Map<const muon::Matrix<T>>(out.data() + i * size, sh.rows, sh.cols)
              .template cast<double>();
      CHECK(muon::reference::relative_distance(got, twice) < tol);
    }
  }
}

TEST_CASE("after the first step, Optimizer::step and check allocate nothing, any variant") {
  // Every kind of parameter: a matrix, a bias, a conv filter, split rows, a
  // 3-D batch; with and without metrics.
  auto fill = [](std::vector<float>& v, unsigned seed) {
    for (std::size_t i = 0; i < v.size(); ++i)
      v[i] = float((i * 2654435761u + seed) % 97) / 97.0f - 0.5f;
  };
  // Two small matrices with enough work between them to run one per thread
  // at 2 threads.
  std::vector<float> w(6 * 10), gw(w.size()), b(6), gb(6), f(8 * 2 * 3 * 3), gf(f.size()),
      qkv(8 * 12), gqkv(qkv.size()), bat(3 * 8 * 4), gbat(bat.size()), h1(128 * 200),
      gh1(h1.size()), h2(200 * 96), gh2(h2.size());
  for (auto* v : {&w, &gw, &b, &gb, &f, &gf, &qkv, &gqkv, &bat, &gbat, &h1, &gh1, &h2, &gh2})
    fill(*v, unsigned(v->size()));
  const bool metrics = GENERATE(false, true);
  const int threads = GENERATE(1, 2);
  // The Muon family's variants (their second moments, NorMuon's row sums)
  // and the l2 form: their scratch is made at registration too.
  const muon::MuonVariant variant =
      GENERATE(muon::MuonVariant::muon, muon::MuonVariant::normuon, muon::MuonVariant::adamuon);
  INFO("metrics " << metrics << ", threads " << threads << ", "
                  << muon::muon_variant_name(variant));
  muon::MuonGroupOptions options;
  options.with_variant(variant);
  if (variant == muon::MuonVariant::adamuon)
    options.with_weight_decay_form(muon::WeightDecayForm::l2);
  muon::Optimizer<float> opt(options);
  opt.set_ns_threads(threads);
  opt.add_param("h1", {h1.data(), {128, 200}}, {gh1.data(), {128, 200}});
  opt.add_param("h2", {h2.data(), {200, 96}}, {gh2.data(), {200, 96}});
  REQUIRE(opt.threads_used_for_small() == threads);
  opt.add_param("w", {w.data(), {6, 10}}, {gw.data(), {6, 10}});
  opt.add_param("b", {b.data(), {6}}, {gb.data(), {6}});
  opt.add_param("f", {f.data(), {8, 2, 3, 3}}, {gf.data(), {8, 2, 3, 3}});
  muon::ParamOptions po;
  po.split = {3, 5};
  opt.add_param("qkv", {qkv.data(), {8, 12}}, {gqkv.data(), {8, 12}}, po);
  opt.add_param("batch", {bat.data(), {3, 8, 4}}, {gbat.data(), {3, 8, 4}});
  opt.enable_metrics(metrics);
  opt.step();  // first step: metrics scratch may be made here
  const auto w0 = w;
  require_no_heap_activity(heap_activity_of([&] {
    for (int k = 0; k < 3; ++k) opt.step();
    opt.check();
  }));
  CHECK(w != w0);  // the steps did step
}

// Run as the ctest entry test_no_alloc_bf16, behind a probe that reports it
// skipped on CPUs without AVX512-BF16.
TEST_CASE("the bf16 engine allocates nothing after the first call", "[bf16]") {
  using muon::eigen::Products;
  if (!muon::eigen::products_available(Products::bf16))
    MUON_SKIP("the CPU lacks AVX512-BF16 (or this is not an x86-64 build)");
  const int threads = GENERATE(1, 2);
  INFO("threads " << threads);
  // A workspace, standard and Gram forms, large enough for the pool.
  const muon::Matrix<float> G = mt::gaussian(256, 520, 7).cast<float>();
  muon::Matrix<float> out(256, 520);
  muon::Workspace<float> ws(256, 520, threads, Products::bf16);
  muon::NewtonSchulzOptions standard, gram;
  standard.with_method(muon::NsMethod::standard);
  gram.with_method(muon::NsMethod::gram);
  muon::orthogonalize_into(G, out, ws, standard);
  muon::orthogonalize_into(G, out, ws, gram);
  require_no_heap_activity(heap_activity_of([&] {
    muon::orthogonalize_into(G, out, ws, standard);
    muon::orthogonalize_into(G, out, ws, gram);
  }));
  // The optimizer's step with bf16 products: small matrices side by side.
  std::vector<float> a(128 * 200, 0.01f), ga(a.size(), 0.02f), b(200 * 96, 0.01f),
      gb(b.size(), -0.02f);
  muon::Optimizer<float> opt;
  opt.set_ns_threads(threads);
  opt.set_ns_products(Products::bf16);
  opt.add_param("a", {a.data(), {128, 200}}, {ga.data(), {128, 200}});
  opt.add_param("b", {b.data(), {200, 96}}, {gb.data(), {200, 96}});
  REQUIRE(opt.threads_used_for_small() == threads);
  opt.step();
  require_no_heap_activity(heap_activity_of([&] { opt.step(); }));
}
