// SPDX-License-Identifier: MIT
// The Fashion-MNIST example's pieces: the IDX reader (round trip through a
// gzip file written here, and every malformed-file error), the MLP's
// hand-written backward pass against central finite differences in double,
// and the hybrid optimizer's routing of each Muon-family variant.

#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "catch.hpp"
#include "idx.hpp"
#include "mlp.hpp"
#include "optimizers.hpp"

namespace {

namespace fm = fashion_mnist;

std::vector<std::uint8_t> idx_header(std::uint8_t dims, const std::vector<std::uint32_t>& sizes) {
  std::vector<std::uint8_t> bytes{0, 0, 0x08, dims};
  for (std::uint32_t n : sizes)
    for (int shift = 24; shift >= 0; shift -= 8)
      bytes.push_back(static_cast<std::uint8_t>((n >> shift) & 0xFF));
  return bytes;
}

/// A temporary file removed when the test ends.
struct TempFile {
  std::string path;
  explicit TempFile(const std::string& name)
      : path((std::filesystem::temp_directory_path() /
              ("muon_fmnist_" + std::to_string(::getpid()) + "_" + name))
                 .string()) {}
  ~TempFile() { std::remove(path.c_str()); }
};

void write_gzip(const std::string& path, const std::vector<std::uint8_t>& bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  REQUIRE(f != nullptr);
  REQUIRE(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())) ==
          static_cast<int>(bytes.size()));
  REQUIRE(gzclose(f) == Z_OK);
}

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const fm::DataError& e) {
    return e.what();
  }
  return "no error";
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

}  // namespace

TEST_CASE("IDX images and labels round-trip through gzip", "[fashion_mnist][idx]") {
  // 3 images of 2 x 4 pixels with distinct values, stored row-major.
  auto images = idx_header(3, {3, 2, 4});
  for (int i = 0; i < 24; ++i) images.push_back(static_cast<std::uint8_t>(10 * i));
  auto labels = idx_header(1, {3});
  for (std::uint8_t l : {7, 0, 9}) labels.push_back(l);
  TempFile dir_marker("split");
  const std::filesystem::path dir = dir_marker.path + "_dir";
  std::filesystem::create_directories(dir);
  write_gzip((dir / "train-images-idx3-ubyte.gz").string(), images);
  write_gzip((dir / "train-labels-idx1-ubyte.gz").string(), labels);

  const fm::IdxImages raw = fm::read_idx_images((dir / "train-images-idx3-ubyte.gz").string());
  CHECK(raw.count == 3);
  CHECK(raw.rows == 2);
  CHECK(raw.cols == 4);
  REQUIRE(raw.pixels.size() == 24);
  CHECK(raw.pixels[5] == 50);

  const fm::Dataset data = fm::load_split(dir.string(), "train");
  REQUIRE(data.images.rows() == 8);
  REQUIRE(data.images.cols() == 3);
  CHECK(data.labels == std::vector<int>{7, 0, 9});
  // Image 1, pixel (row 1, col 2) = byte 8 + 4 + 2 = 14 -> 140 / 255.
  CHECK(std::abs(data.images(6, 1) - 140.0f / 255.0f) < 1e-6f);
  std::filesystem::remove_all(dir);
}

TEST_CASE("IDX reader names the file and the problem", "[fashion_mnist][idx]") {
  TempFile file("bad.gz");

  SECTION("missing file points at the Debian package") {
    const std::string msg = error_of([] { fm::read_idx_labels("/nonexistent/t10k-labels.gz"); });
    CHECK(contains(msg, "/nonexistent/t10k-labels.gz"));
    CHECK(contains(msg, "dataset-fashion-mnist"));
  }
  SECTION("bad magic") {
    auto bytes = idx_header(1, {2});
    bytes[2] = 0x0D;  // float data, not unsigned bytes
    bytes.push_back(1);
    bytes.push_back(2);
    write_gzip(file.path, bytes);
    const std::string msg = error_of([&] { fm::read_idx_labels(file.path); });
    CHECK(contains(msg, file.path));
    CHECK(contains(msg, "magic"));
  }
  SECTION("labels where images are expected") {
    auto bytes = idx_header(1, {2});
    bytes.push_back(1);
    bytes.push_back(2);
    write_gzip(file.path, bytes);
    CHECK(contains(error_of([&] { fm::read_idx_images(file.path); }), "expected 3 dimensions"));
  }
  SECTION("truncated data") {
    auto bytes = idx_header(3, {2, 2, 2});
    bytes.resize(bytes.size() + 5);  // 8 announced
    write_gzip(file.path, bytes);
    CHECK(contains(error_of([&] { fm::read_idx_images(file.path); }), "truncated"));
  }
  SECTION("trailing bytes") {
    auto bytes = idx_header(1, {2});
    bytes.resize(bytes.size() + 3);
    write_gzip(file.path, bytes);
    CHECK(contains(error_of([&] { fm::read_idx_labels(file.path); }), "trailing"));
  }
  SECTION("label out of range") {
    auto bytes = idx_header(1, {2});
    bytes.push_back(3);
    bytes.push_back(10);
    write_gzip(file.path, bytes);
    CHECK(contains(error_of([&] { fm::read_idx_labels(file.path); }), "label 10 at index 1"));
  }
  SECTION("corrupt gzip stream") {
    const auto bytes = idx_header(1, {4});
    write_gzip(file.path, bytes);
    // Flip bytes in the middle of the deflate stream.
    std::FILE* f = std::fopen(file.path.c_str(), "r+b");
    REQUIRE(f != nullptr);
    std::fseek(f, 12, SEEK_SET);
    const unsigned char junk[6] = {0xFF, 0x00, 0xFF, 0x00, 0xFF, 0x00};
    std::fwrite(junk, 1, sizeof junk, f);
    std::fclose(f);
    CHECK(contains(error_of([&] { fm::read_idx_labels(file.path); }), file.path));
  }
}

TEST_CASE("MLP gradients match central finite differences", "[fashion_mnist][mlp]") {
  const std::uint64_t seed = 20260123;
  INFO("seed " << seed);
  const std::vector<int> sizes{7, 6, 5, 4};
  fm::Mlp<double> model(sizes, seed);
  // Non-zero biases so the bias gradients are exercised away from the init.
  std::mt19937_64 rng(seed + 1);
  std::normal_distribution<double> normal(0.0, 1.0);
  for (std::size_t l = 0; l < model.layers(); ++l)
    for (Eigen::Index i = 0; i < model.bias(l).size(); ++i) model.bias(l)(i) = 0.1 * normal(rng);
  const Eigen::Index batch = 5;
  Eigen::MatrixXd X(sizes.front(), batch);
  for (Eigen::Index j = 0; j < batch; ++j)
    for (Eigen::Index i = 0; i < X.rows(); ++i) X(i, j) = normal(rng);
  const std::vector<int> labels{0, 3, 1, 2, 3};

  model.loss_and_gradient(X, labels.data());
  const double h = 1e-6;
  double worst = 0;
  for (auto& p : model.parameters()) {
    INFO(p.name);
    // Copy: the next loss_and_gradient overwrites the model's gradients.
    const std::vector<double> analytic(p.grad, p.grad + p.rows * p.cols);
    for (Eigen::Index k = 0; k < p.rows * p.cols; ++k) {
      const double saved = p.value[k];
      p.value[k] = saved + h;
      const double up = model.loss_and_gradient(X, labels.data());
      p.value[k] = saved - h;
      const double down = model.loss_and_gradient(X, labels.data());
      p.value[k] = saved;
      const double numeric = (up - down) / (2 * h);
      const double a = analytic[static_cast<std::size_t>(k)];
      const double err = std::abs(a - numeric) / std::max(1e-3, std::abs(a) + std::abs(numeric));
      worst = std::max(worst, err);
      INFO("entry " << k << ": analytic " << a << ", numeric " << numeric);
      CHECK(err < 1e-5);
    }
  }
  INFO("worst relative error " << worst);
  CHECK(worst < 1e-5);
}

TEST_CASE("MLP loss, evaluation and bad input", "[fashion_mnist][mlp]") {
  fm::Mlp<double> model({3, 4, 2}, 7);
  Eigen::MatrixXd X = Eigen::MatrixXd::Random(3, 6);
  const std::vector<int> labels{0, 1, 1, 0, 1, 0};
  const double loss = model.loss_and_gradient(X, labels.data());
  const fm::Evaluation e = model.evaluate(X, labels, 4);  // two chunks
  CHECK(std::abs(e.loss - loss) < 1e-12 * std::max(1.0, loss));
  CHECK(e.accuracy >= 0.0);
  CHECK(e.accuracy <= 1.0);
  CHECK_THROWS_AS(model.forward(Eigen::MatrixXd::Zero(4, 2)), std::invalid_argument);
  CHECK_THROWS_AS(fm::Mlp<double>({3}, 1), std::invalid_argument);
  CHECK_THROWS_AS(fm::Mlp<double>({3, 0, 2}, 1), std::invalid_argument);
}

TEST_CASE("The hybrid runs the Muon variant it is given on the hidden matrix only",
          "[fashion_mnist][optimizers]") {
  const std::uint64_t seed = 20261130;
  INFO("seed " << seed);
  const std::vector<int> sizes{6, 8, 8, 3};
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  Eigen::MatrixXd X(sizes.front(), 5);
  for (Eigen::Index j = 0; j < X.cols(); ++j)
    for (Eigen::Index i = 0; i < X.rows(); ++i) X(i, j) = normal(rng);
  const std::vector<int> labels{0, 2, 1, 2, 0};

  // One step from the same weights and gradients per variant.
  struct After {
    fm::Mlp<double>::WeightMatrix input, hidden;
    double loss_before, loss_after;
  };
  auto one_variant = [&](muon::MuonVariant variant) {
    fm::Mlp<double> model(sizes, seed);
    const auto hidden_before = model.weight(1);
    const double loss_before = model.loss_and_gradient(X, labels.data());
    fm::LibraryOptimizer<double> optimizer(
        model.parameters(), muon::MuonGroupOptions{}.with_variant(variant).with_lr(0.02),
        muon::AdamWOptions{}, {fm::ParameterRole::hidden_matrix}, muon::LrSchedule{});
    const std::string routing = optimizer.routing_table();
    INFO(routing);
    CHECK(routing.find(std::string("muon route: variant ") + muon::muon_variant_name(variant)) !=
          std::string::npos);
    optimizer.step();
    CHECK((model.weight(1) - hidden_before).norm() > 0);
    return After{model.weight(0), model.weight(1), loss_before,
                 model.loss_and_gradient(X, labels.data())};
  };
  const After muon_step = one_variant(muon::MuonVariant::muon);
  for (auto variant : {muon::MuonVariant::normuon, muon::MuonVariant::adamuon}) {
    INFO(muon::muon_variant_name(variant));
    const After step = one_variant(variant);
    // The AdamW part does not see the variant; the Muon route does.
    CHECK(step.input == muon_step.input);
    CHECK((step.hidden - muon_step.hidden).norm() > 1e-6);
    CHECK(step.loss_after < step.loss_before);
  }
  CHECK(muon_step.loss_after < muon_step.loss_before);

  // Without Muon roles every parameter goes to AdamW and no variant is named.
  fm::Mlp<double> model(sizes, seed);
  fm::LibraryOptimizer<double> adamw(model.parameters(), muon::MuonGroupOptions::normuon(),
                                     muon::AdamWOptions{}, {}, muon::LrSchedule{});
  CHECK(adamw.routing_table().find("muon route") == std::string::npos);
}
