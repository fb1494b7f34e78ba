// SPDX-License-Identifier: MIT
#pragma once
/// \file idx.hpp
/// \brief Reads the IDX files of (Fashion-)MNIST, gzipped or not, with zlib.
///
/// IDX layout (all integers big-endian): two zero bytes, a type code (0x08 =
/// unsigned byte), the number of dimensions, one 32-bit size per dimension,
/// then the data in row-major order. Images are 3-D (count, rows, cols),
/// labels 1-D (count). Every check names the file and what is wrong, so a
/// truncated download or a swapped file is reported, not silently trained on.

#include <zlib.h>

#include <Eigen/Core>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace fashion_mnist {

/// A data file is missing, unreadable or malformed; the message names the
/// file and the problem.
class DataError : public std::runtime_error {
 public:
  explicit DataError(const std::string& what) : std::runtime_error("fashion_mnist: " + what) {}
};

/// Where Debian's dataset-fashion-mnist package puts the files.
inline const char* debian_data_dir() { return "/usr/share/datasets/fashion-mnist"; }

/// $FASHION_MNIST_DIR when set, else the Debian location.
inline std::string default_data_dir() {
  const char* env = std::getenv("FASHION_MNIST_DIR");
  return (env && *env) ? std::string(env) : std::string(debian_data_dir());
}

/// Images as stored: `count` images of rows x cols bytes, image after image.
struct IdxImages {
  std::int64_t count = 0, rows = 0, cols = 0;
  std::vector<std::uint8_t> pixels;
};

/// Decompresses a whole file (gzread also passes plain, uncompressed files
/// through unchanged, so both forms are accepted).
inline std::vector<std::uint8_t> read_gzip_file(const std::string& path) {
  {
    // gzopen's failure says nothing useful; look first, so the message can
    // tell the user which package provides the file.
    std::ifstream probe(path, std::ios::binary);
    if (!probe)
      throw DataError("cannot open " + path +
                      " (install the Debian package dataset-fashion-mnist: "
                      "sudo apt-get install dataset-fashion-mnist, or point --data-dir / "
                      "FASHION_MNIST_DIR at a folder holding the IDX files)");
  }
  gzFile file = gzopen(path.c_str(), "rb");
  if (!file) throw DataError("zlib cannot open " + path);
  std::vector<std::uint8_t> bytes;
  std::vector<std::uint8_t> chunk(1 << 16);
  for (;;) {
    const int got = gzread(file, chunk.data(), static_cast<unsigned>(chunk.size()));
    if (got < 0) {
      int code = 0;
      const std::string reason = gzerror(file, &code);
      gzclose(file);
      throw DataError("corrupt gzip data in " + path + ": " + reason);
    }
    if (got == 0) break;
    bytes.insert(bytes.end(), chunk.begin(), chunk.begin() + got);
  }
  gzclose(file);
  return bytes;
}

namespace detail {

inline std::uint32_t big_endian_u32(const std::vector<std::uint8_t>& b, std::size_t at) {
  return (std::uint32_t{b[at]} << 24) | (std::uint32_t{b[at + 1]} << 16) |
         (std::uint32_t{b[at + 2]} << 8) | std::uint32_t{b[at + 3]};
}

/// Checks the header of an unsigned-byte IDX file with `want_dims` dimensions
/// and returns the sizes; `what` names the file in messages.
inline std::vector<std::int64_t> parse_header(const std::vector<std::uint8_t>& bytes, int want_dims,
                                              const std::string& what) {
  if (bytes.size() < 4) throw DataError(what + ": too short for an IDX header");
  if (bytes[0] != 0 || bytes[1] != 0 || bytes[2] != 0x08)
    throw DataError(what + ": bad magic number (not an unsigned-byte IDX file)");
  const int dims = bytes[3];
  if (dims != want_dims)
    throw DataError(what + ": expected " + std::to_string(want_dims) +
                    " dimensions (IDX magic 0x0000080" + std::to_string(want_dims) + "), found " +
                    std::to_string(dims));
  const std::size_t header = 4 + 4 * static_cast<std::size_t>(dims);
  if (bytes.size() < header) throw DataError(what + ": header truncated");
  std::vector<std::int64_t> sizes;
  std::int64_t total = 1;
  for (int d = 0; d < dims; ++d) {
    const std::int64_t n = big_endian_u32(bytes, 4 + 4 * static_cast<std::size_t>(d));
    if (n <= 0) throw DataError(what + ": dimension " + std::to_string(d) + " is zero");
    sizes.push_back(n);
    total *= n;
    if (total > (std::int64_t{1} << 34)) throw DataError(what + ": implausibly large sizes");
  }
  const auto expected = header + static_cast<std::size_t>(total);
  if (bytes.size() != expected)
    throw DataError(what + ": holds " + std::to_string(bytes.size() - header) +
                    " data bytes, the header announces " + std::to_string(total) +
                    (bytes.size() < expected ? " (truncated file?)" : " (trailing bytes)"));
  return sizes;
}

}  // namespace detail

/// Parses decompressed IDX image bytes (magic 0x00000803).
inline IdxImages parse_idx_images(const std::vector<std::uint8_t>& bytes, const std::string& what) {
  const auto sizes = detail::parse_header(bytes, 3, what);
  IdxImages images;
  images.count = sizes[0];
  images.rows = sizes[1];
  images.cols = sizes[2];
  images.pixels.assign(bytes.begin() + 16, bytes.end());
  return images;
}

/// Parses decompressed IDX label bytes (magic 0x00000801); every label must
/// be below `classes`.
inline std::vector<int> parse_idx_labels(const std::vector<std::uint8_t>& bytes,
                                         const std::string& what, int classes = 10) {
  detail::parse_header(bytes, 1, what);
  std::vector<int> labels(bytes.begin() + 8, bytes.end());
  for (std::size_t i = 0; i < labels.size(); ++i)
    if (labels[i] >= classes)
      throw DataError(what + ": label " + std::to_string(labels[i]) + " at index " +
                      std::to_string(i) + " is not below " + std::to_string(classes));
  return labels;
}

inline IdxImages read_idx_images(const std::string& path) {
  return parse_idx_images(read_gzip_file(path), path);
}

inline std::vector<int> read_idx_labels(const std::string& path, int classes = 10) {
  return parse_idx_labels(read_gzip_file(path), path, classes);
}

/// One split ready for training: one image per column (pixels scaled to
/// [0, 1]), labels alongside.
struct Dataset {
  Eigen::MatrixXf images;  ///< features x count
  std::vector<int> labels;
  Eigen::Index size() const { return images.cols(); }
};

/// Loads `<dir>/<prefix>-images-idx3-ubyte.gz` and the matching labels
/// (prefix "train" or "t10k"), checking that they agree.
inline Dataset load_split(const std::string& dir, const std::string& prefix) {
  const std::string image_path = dir + "/" + prefix + "-images-idx3-ubyte.gz";
  const std::string label_path = dir + "/" + prefix + "-labels-idx1-ubyte.gz";
  const IdxImages raw = read_idx_images(image_path);
  Dataset data;
  data.labels = read_idx_labels(label_path);
  if (static_cast<std::int64_t>(data.labels.size()) != raw.count)
    throw DataError(label_path + " holds " + std::to_string(data.labels.size()) + " labels but " +
                    image_path + " holds " + std::to_string(raw.count) + " images");
  const Eigen::Index features = raw.rows * raw.cols;
  using ByteMatrix = Eigen::Matrix<std::uint8_t, Eigen::Dynamic, Eigen::Dynamic>;
  // Row-major image bytes, image after image, are exactly a column-major
  // features x count matrix: one image per column, no shuffling needed.
  const Eigen::Map<const ByteMatrix> bytes(raw.pixels.data(), features, raw.count);
  data.images = bytes.cast<float>() / 255.0f;
  return data;
}

}  // namespace fashion_mnist
