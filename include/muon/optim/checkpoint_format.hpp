// SPDX-License-Identifier: MIT
#pragma once
/// \file optim/checkpoint_format.hpp
/// \brief The checkpoint container: an endian-stable, versioned, checksummed
/// byte format, independent of what it holds. Free of Eigen and CUDA.
///
/// Layout of a file (every integer and float little-endian, whatever the host):
///
///     "MUONCKPT"           8 bytes, magic
///     u32  format version  (2; version 1 files are still read)
///     u64  payload size    in bytes
///     ...  payload         (optim/state_io.hpp; docs/optimizer.md, "Checkpoint format")
///     u32  CRC-32 of the payload (IEEE 802.3 polynomial, reflected, as zlib)
///
/// The Writer streams: a checkpoint is written in two passes over the same
/// emitting function, the first only counting bytes (the size goes in the
/// header), the second writing them, so a multi-gigabyte state is never held
/// twice in memory. The Reader never trusts a length it reads: every count
/// is checked against the bytes that remain before anything is allocated, so
/// a corrupt or hostile file raises muon::Error instead of exhausting memory
/// or reading out of bounds.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <istream>
#include <limits>
#include <ostream>
#include <string>
#include <string_view>
#include <vector>

#include "../error.hpp"

namespace muon {
namespace checkpoint {

/// The 8 bytes every checkpoint starts with.
inline constexpr char magic[8] = {'M', 'U', 'O', 'N', 'C', 'K', 'P', 'T'};
/// The version this build writes.
inline constexpr std::uint32_t format_version = 2;
/// The oldest version this build reads.
inline constexpr std::uint32_t oldest_readable_version = 1;

/// Element type of a stored buffer (one byte in the file).
enum class Dtype : std::uint8_t { float32 = 1, float64 = 2, bfloat16 = 3, float16 = 4 };

inline bool is_valid(Dtype d) {
  return d == Dtype::float32 || d == Dtype::float64 || d == Dtype::bfloat16 || d == Dtype::float16;
}

inline const char* dtype_name(Dtype d) {
  switch (d) {
    case Dtype::float32:
      return "float32";
    case Dtype::float64:
      return "float64";
    case Dtype::bfloat16:
      return "bfloat16";
    case Dtype::float16:
      return "float16";
  }
  return "unknown";
}

/// Bytes per element.
inline std::size_t dtype_size(Dtype d) {
  return d == Dtype::float64 ? 8 : d == Dtype::float32 ? 4 : 2;
}

/// The element at `p` (little-endian, `d`'s encoding) widened to double;
/// exact for every Dtype.
inline double decode(Dtype d, const unsigned char* p) {
  std::uint64_t bits = 0;
  for (std::size_t i = 0; i < dtype_size(d); ++i) bits |= std::uint64_t(p[i]) << (8 * i);
  switch (d) {
    case Dtype::float64: {
      double v;
      std::memcpy(&v, &bits, 8);
      return v;
    }
    case Dtype::float32: {
      const std::uint32_t b = static_cast<std::uint32_t>(bits);
      float v;
      std::memcpy(&v, &b, 4);
      return v;
    }
    case Dtype::bfloat16: {
      const std::uint32_t b = static_cast<std::uint32_t>(bits) << 16;
      float v;
      std::memcpy(&v, &b, 4);
      return v;
    }
    case Dtype::float16: {
      const unsigned sign = (bits >> 15) & 1u, exponent = (bits >> 10) & 0x1Fu,
                     mantissa = bits & 0x3FFu;
      double v;
      if (exponent == 0x1F)
        v = mantissa ? std::numeric_limits<double>::quiet_NaN()
                     : std::numeric_limits<double>::infinity();
      else if (exponent == 0)
        v = std::ldexp(double(mantissa), -24);
      else
        v = std::ldexp(double(mantissa | 0x400u), int(exponent) - 25);
      return sign ? -v : v;
    }
  }
  return std::numeric_limits<double>::quiet_NaN();
}

/// CRC-32 (polynomial 0xEDB88320, reflected, initial and final XOR 0xFFFFFFFF):
/// crc32("123456789") == 0xCBF43926. Pass a previous result as `crc` to continue.
inline std::uint32_t crc32(const unsigned char* data, std::size_t size, std::uint32_t crc = 0) {
  // The table of the byte-at-a-time algorithm, built once (thread-safe static init).
  static const std::array<std::uint32_t, 256> table = [] {
    std::array<std::uint32_t, 256> t{};
    for (std::uint32_t byte = 0; byte < 256; ++byte) {
      std::uint32_t r = byte;
      for (int bit = 0; bit < 8; ++bit) r = (r & 1u) ? (r >> 1) ^ 0xEDB88320u : r >> 1;
      t[byte] = r;
    }
    return t;
  }();
  crc = ~crc;
  for (std::size_t i = 0; i < size; ++i) crc = table[(crc ^ data[i]) & 0xFFu] ^ (crc >> 8);
  return ~crc;
}

/// Little-endian encodings, either counted only (a Writer made without a
/// stream: the sizing pass) or written to a stream with a running CRC-32.
class Writer {
 public:
  Writer() = default;
  explicit Writer(std::ostream& os) : os_(&os) { buffer_.reserve(kChunk); }
  Writer(const Writer&) = delete;
  Writer& operator=(const Writer&) = delete;
  ~Writer() = default;

  void u8(std::uint8_t v) { put(v, 1); }
  void u16(std::uint16_t v) { put(v, 2); }
  void u32(std::uint32_t v) { put(v, 4); }
  void u64(std::uint64_t v) { put(v, 8); }
  void i64(std::int64_t v) { put(static_cast<std::uint64_t>(v), 8); }
  void f64(double v) {
    std::uint64_t bits;
    std::memcpy(&bits, &v, 8);
    put(bits, 8);
  }
  void boolean(bool v) { u8(v ? 1 : 0); }
  void str(std::string_view s) {
    u32(static_cast<std::uint32_t>(s.size()));
    bytes(reinterpret_cast<const unsigned char*>(s.data()), s.size());
  }
  /// `count` elements of `size` bytes each, stored in host order at `data`,
  /// written little-endian.
  void elements(const void* data, std::size_t count, std::size_t size) {
    const auto* p = static_cast<const unsigned char*>(data);
    if (host_is_little_endian()) return bytes(p, count * size);
    for (std::size_t i = 0; i < count; ++i)
      for (std::size_t b = 0; b < size; ++b) bytes(p + i * size + (size - 1 - b), 1);
  }
  /// One scalar of a buffer, by its bit pattern (2, 4 or 8 bytes).
  template <class S>
  void scalar(S v) {
    static_assert(sizeof(S) == 2 || sizeof(S) == 4 || sizeof(S) == 8,
                  "muon: checkpoint scalars are 2, 4 or 8 bytes");
    elements(&v, 1, sizeof(S));
  }

  /// Bytes so far (both passes).
  std::uint64_t size() const { return size_; }
  /// CRC-32 of the bytes written so far (after flush()).
  std::uint32_t crc() const { return crc_; }
  /// Writes what is buffered; throws muon::Error when the stream failed.
  void flush() {
    if (!os_ || buffer_.empty()) return;
    crc_ = crc32(buffer_.data(), buffer_.size(), crc_);
    os_->write(reinterpret_cast<const char*>(buffer_.data()),
               static_cast<std::streamsize>(buffer_.size()));
    buffer_.clear();
    if (!*os_) detail::fail("checkpoint", "writing to the stream failed");
  }

  static bool host_is_little_endian() {
    const std::uint16_t one = 1;
    unsigned char first;
    std::memcpy(&first, &one, 1);
    return first == 1;
  }

 private:
  static constexpr std::size_t kChunk = std::size_t(1) << 16;
  void put(std::uint64_t v, int n) {
    unsigned char b[8];
    for (int i = 0; i < n; ++i) b[i] = static_cast<unsigned char>((v >> (8 * i)) & 0xFFu);
    bytes(b, static_cast<std::size_t>(n));
  }
  void bytes(const unsigned char* p, std::size_t n) {
    size_ += n;
    if (!os_) return;
    while (n > 0) {
      const std::size_t take = std::min(n, kChunk - buffer_.size());
      buffer_.insert(buffer_.end(), p, p + take);
      p += take;
      n -= take;
      if (buffer_.size() == kChunk) flush();
    }
  }
  std::ostream* os_ = nullptr;
  std::vector<unsigned char> buffer_;
  std::uint64_t size_ = 0;
  std::uint32_t crc_ = 0;
};

/// Reads little-endian encodings from a byte range; every read past the end
/// throws muon::Error("checkpoint: truncated ..."). `origin` (the file's path,
/// or "stream") starts every message.
class Reader {
 public:
  Reader(const unsigned char* data, std::size_t size, std::string origin = "checkpoint")
      : data_(data), size_(size), origin_(std::move(origin)) {}

  std::uint8_t u8() { return static_cast<std::uint8_t>(get(1)); }
  std::uint16_t u16() { return static_cast<std::uint16_t>(get(2)); }
  std::uint32_t u32() { return static_cast<std::uint32_t>(get(4)); }
  std::uint64_t u64() { return get(8); }
  std::int64_t i64() {
    const std::uint64_t u = get(8);
    std::int64_t v;
    std::memcpy(&v, &u, 8);  // two's complement, without implementation-defined casts
    return v;
  }
  double f64() {
    const std::uint64_t bits = get(8);
    double v;
    std::memcpy(&v, &bits, 8);
    return v;
  }
  bool boolean(const char* field) {
    const std::uint8_t v = u8();
    if (v > 1) fail(std::string(field) + " is not a boolean byte");
    return v == 1;
  }
  std::string str(const char* field, std::size_t max_size = 1u << 16) {
    const std::uint32_t n = u32();
    if (n > max_size) fail(std::string(field) + " is implausibly long");
    need(n);
    std::string s(reinterpret_cast<const char*>(data_ + pos_), n);
    pos_ += n;
    return s;
  }
  /// `count` items of `item_size` bytes, as a pointer into the data (checked
  /// to be there); the reader moves past them.
  const unsigned char* items(std::uint64_t count, std::size_t item_size, const char* field) {
    if (item_size != 0 && count > remaining() / item_size)
      fail(std::string("truncated or corrupt: ") + field + " count exceeds the data");
    const unsigned char* p = data_ + pos_;
    pos_ += static_cast<std::size_t>(count) * item_size;
    return p;
  }
  std::size_t remaining() const { return size_ - pos_; }
  std::size_t position() const { return pos_; }
  const std::string& origin() const { return origin_; }

  /// Throws muon::Error("<origin>: <problem>").
  [[noreturn]] void fail(const std::string& problem) const { detail::fail(origin_, problem); }

 private:
  void need(std::size_t n) const {
    if (n > remaining()) fail("truncated payload");
  }
  std::uint64_t get(int n) {
    need(static_cast<std::size_t>(n));
    std::uint64_t v = 0;
    for (int i = 0; i < n; ++i) v |= static_cast<std::uint64_t>(data_[pos_ + i]) << (8 * i);
    pos_ += static_cast<std::size_t>(n);
    return v;
  }
  const unsigned char* data_;
  std::size_t size_, pos_ = 0;
  std::string origin_;
};

/// Writes a whole checkpoint: `emit(Writer&)` writes the payload; it is
/// called twice (sizing, then writing) and must write the same bytes both
/// times. Throws muon::Error when the stream fails.
template <class Emit>
void write(std::ostream& os, Emit&& emit) {
  Writer sizing;
  emit(sizing);
  Writer head(os);
  for (char c : magic) head.u8(static_cast<std::uint8_t>(c));
  head.u32(format_version);
  head.u64(sizing.size());
  head.flush();
  Writer body(os);
  emit(body);
  body.flush();
  if (body.size() != sizing.size())
    detail::fail("checkpoint", "the payload changed between the sizing and writing passes");
  Writer tail(os);
  tail.u32(body.crc());
  tail.flush();
}

/// A checkpoint read into memory: its version and checked payload.
struct Envelope {
  std::uint32_t version = 0;
  std::vector<unsigned char> payload;
};

/// Reads and checks magic, version, size and CRC. Throws muon::Error
/// ("<origin>: ...") for a wrong magic, an unsupported version, a truncated
/// stream or a checksum mismatch. Reads in bounded chunks, so a corrupt size
/// field cannot make it allocate more than the stream actually holds.
inline Envelope read_envelope(std::istream& is, const std::string& origin = "checkpoint") {
  auto read_exact = [&is, &origin](unsigned char* dst, std::size_t n, const char* what) {
    is.read(reinterpret_cast<char*>(dst), static_cast<std::streamsize>(n));
    if (static_cast<std::size_t>(is.gcount()) != n)
      detail::fail(origin, std::string("truncated (") + what + ")");
  };
  unsigned char head[20];
  read_exact(head, 8, "magic");
  if (std::memcmp(head, magic, 8) != 0) detail::fail(origin, "not a muon checkpoint (bad magic)");
  read_exact(head + 8, 12, "header");
  Reader r(head + 8, 12, origin);
  Envelope e;
  e.version = r.u32();
  if (e.version < oldest_readable_version || e.version > format_version)
    detail::fail(origin, "unsupported format version " + std::to_string(e.version) +
                             " (this build reads " + std::to_string(oldest_readable_version) +
                             " to " + std::to_string(format_version) + ")");
  const std::uint64_t size = r.u64();
  constexpr std::size_t chunk = 1u << 16;
  while (e.payload.size() < size) {
    const std::size_t n = static_cast<std::size_t>(
        std::min<std::uint64_t>(chunk, size - static_cast<std::uint64_t>(e.payload.size())));
    const std::size_t old = e.payload.size();
    e.payload.resize(old + n);
    read_exact(e.payload.data() + old, n, "payload");
  }
  unsigned char crc_bytes[4];
  read_exact(crc_bytes, 4, "checksum");
  const std::uint32_t stored = Reader(crc_bytes, 4, origin).u32();
  if (stored != crc32(e.payload.data(), e.payload.size()))
    detail::fail(origin, "checksum mismatch (corrupt data)");
  return e;
}

}  // namespace checkpoint
}  // namespace muon
