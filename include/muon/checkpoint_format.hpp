// SPDX-License-Identifier: MIT
#pragma once
/// \file checkpoint_format.hpp
/// \brief The checkpoint container: an endian-stable, versioned, checksummed
/// byte format, independent of what it holds. Needs neither Eigen nor CUDA,
/// so the CPU optimizer and the CUDA backend's optimizer share it
/// (checkpoint.hpp adds the Eigen scalar types).
///
/// Layout of a file (every integer and float little-endian, whatever the host):
///
///     "MUONCKPT"           8 bytes, magic
///     u32  format version  (checkpoint::format_version)
///     u64  payload size    in bytes
///     ...  payload
///     u32  CRC-32 of the payload (IEEE 802.3 polynomial, reflected, as zlib)
///
/// Optimizer<T>::save / load (optimizer.hpp) and muon::cuda::Optimizer<P>::save
/// / load (backend/cuda/optimizer.hpp) define their payloads; docs/optimizer.md
/// and docs/cuda.md spell them out field by field. The Reader below never
/// trusts a length it reads: every count is checked against the bytes that
/// remain before anything is allocated, so a corrupt or hostile file raises
/// muon::Error instead of exhausting memory or reading out of bounds.

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <istream>
#include <ostream>
#include <string>
#include <vector>

#include "error.hpp"

namespace muon {
namespace checkpoint {

/// The 8 bytes every checkpoint starts with.
inline constexpr char magic[8] = {'M', 'U', 'O', 'N', 'C', 'K', 'P', 'T'};
/// The only version this build writes and reads.
inline constexpr std::uint32_t format_version = 1;

/// Element type of a stored buffer (one byte in the file).
enum class Dtype : std::uint8_t { float32 = 1, float64 = 2, bfloat16 = 3, float16 = 4 };

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

/// Appends little-endian encodings to a byte string.
class Writer {
 public:
  void u8(std::uint8_t v) { bytes_.push_back(static_cast<char>(v)); }
  void u16(std::uint16_t v) { put(v, 2); }
  void u32(std::uint32_t v) { put(v, 4); }
  void u64(std::uint64_t v) { put(v, 8); }
  void i64(std::int64_t v) { put(static_cast<std::uint64_t>(v), 8); }
  void f64(double v) {
    std::uint64_t bits;
    std::memcpy(&bits, &v, 8);
    u64(bits);
  }
  void boolean(bool v) { u8(v ? 1 : 0); }
  void str(const std::string& s) {
    u32(static_cast<std::uint32_t>(s.size()));
    bytes_.append(s);
  }
  /// One scalar of a buffer, by its bit pattern.
  template <class S>
  void scalar(S v) {
    if constexpr (sizeof(S) == 8) {
      std::uint64_t bits;
      std::memcpy(&bits, &v, 8);
      u64(bits);
    } else if constexpr (sizeof(S) == 4) {
      std::uint32_t bits;
      std::memcpy(&bits, &v, 4);
      u32(bits);
    } else {
      static_assert(sizeof(S) == 2, "muon: checkpoint scalars are 2, 4 or 8 bytes");
      std::uint16_t bits;
      std::memcpy(&bits, &v, 2);
      u16(bits);
    }
  }
  const std::string& bytes() const { return bytes_; }

 private:
  void put(std::uint64_t v, int n) {
    for (int i = 0; i < n; ++i) bytes_.push_back(static_cast<char>((v >> (8 * i)) & 0xFFu));
  }
  std::string bytes_;
};

/// Reads little-endian encodings from a byte range; every read past the end
/// throws muon::Error("checkpoint: truncated ...").
class Reader {
 public:
  Reader(const unsigned char* data, std::size_t size) : data_(data), size_(size) {}

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
    detail::require(v <= 1, "checkpoint", std::string(field) + " is not a boolean byte");
    return v == 1;
  }
  std::string str(const char* field, std::size_t max_size = 1u << 16) {
    const std::uint32_t n = u32();
    detail::require(n <= max_size, "checkpoint", std::string(field) + " is implausibly long");
    need(n);
    std::string s(reinterpret_cast<const char*>(data_ + pos_), n);
    pos_ += n;
    return s;
  }
  template <class S>
  S scalar() {
    S v;
    if constexpr (sizeof(S) == 8) {
      const std::uint64_t bits = u64();
      std::memcpy(&v, &bits, 8);
    } else if constexpr (sizeof(S) == 4) {
      const std::uint32_t bits = u32();
      std::memcpy(&v, &bits, 4);
    } else {
      const std::uint16_t bits = u16();
      std::memcpy(&v, &bits, 2);
    }
    return v;
  }
  /// Throws unless `count` items of `item_size` bytes can still be read: the
  /// guard to call before allocating for a count read from the file.
  void require_items(std::uint64_t count, std::size_t item_size, const char* field) const {
    detail::require(item_size == 0 || count <= remaining() / item_size, "checkpoint",
                    std::string("truncated or corrupt: ") + field + " count exceeds the data");
  }
  std::size_t remaining() const { return size_ - pos_; }

 private:
  void need(std::size_t n) const {
    detail::require(n <= remaining(), "checkpoint", "truncated payload");
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
};

/// Writes the record that precedes a stored buffer's elements: str name,
/// u8 dtype, u64 element count.
inline void write_buffer_header(Writer& w, const char* name, Dtype dtype, std::uint64_t count) {
  w.str(name);
  w.u8(static_cast<std::uint8_t>(dtype));
  w.u64(count);
}

/// Reads a buffer record written by write_buffer_header and checks it against
/// what the loader expects; on return `count` elements of `element_size`
/// bytes are known to follow. `where` prefixes the messages ("parameter 'w': ").
inline void read_buffer_header(Reader& r, const char* name, Dtype dtype, std::uint64_t count,
                               std::size_t element_size, const std::string& where) {
  detail::require(r.str("buffer name") == name, "checkpoint",
                  where + "expected buffer '" + name + "'");
  detail::require(r.u8() == static_cast<std::uint8_t>(dtype), "checkpoint",
                  where + "buffer dtype differs");
  detail::require(r.u64() == count, "checkpoint",
                  where + "buffer size differs from the parameter's");
  r.require_items(count, element_size, "buffer element");
}

/// Writes magic, version, payload size, payload and its CRC-32.
/// Throws muon::Error when the stream fails.
inline void write_envelope(std::ostream& os, const std::string& payload) {
  Writer head;
  for (char c : magic) head.u8(static_cast<std::uint8_t>(c));
  head.u32(format_version);
  head.u64(payload.size());
  Writer tail;
  tail.u32(crc32(reinterpret_cast<const unsigned char*>(payload.data()), payload.size()));
  os.write(head.bytes().data(), static_cast<std::streamsize>(head.bytes().size()));
  os.write(payload.data(), static_cast<std::streamsize>(payload.size()));
  os.write(tail.bytes().data(), static_cast<std::streamsize>(tail.bytes().size()));
  detail::require(static_cast<bool>(os), "checkpoint", "writing to the stream failed");
}

/// Reads and checks magic, version, size and CRC; returns the payload.
/// Throws muon::Error for a wrong magic, an unsupported version, a truncated
/// stream or a checksum mismatch. Reads in bounded chunks, so a corrupt size
/// field cannot make it allocate more than the stream actually holds.
inline std::vector<unsigned char> read_envelope(std::istream& is) {
  auto read_exact = [&is](unsigned char* dst, std::size_t n, const char* what) {
    is.read(reinterpret_cast<char*>(dst), static_cast<std::streamsize>(n));
    detail::require(static_cast<std::size_t>(is.gcount()) == n, "checkpoint",
                    std::string("truncated (") + what + ")");
  };
  unsigned char head[20];
  read_exact(head, 8, "magic");
  detail::require(std::memcmp(head, magic, 8) == 0, "checkpoint",
                  "not a muon checkpoint (bad magic)");
  read_exact(head + 8, 12, "header");
  Reader r(head + 8, 12);
  const std::uint32_t version = r.u32();
  detail::require(version == format_version, "checkpoint",
                  "unsupported format version " + std::to_string(version) + " (this build reads " +
                      std::to_string(format_version) + ")");
  const std::uint64_t size = r.u64();
  std::vector<unsigned char> payload;
  constexpr std::size_t chunk = 1u << 16;
  while (payload.size() < size) {
    const std::size_t n = static_cast<std::size_t>(
        std::min<std::uint64_t>(chunk, size - static_cast<std::uint64_t>(payload.size())));
    const std::size_t old = payload.size();
    payload.resize(old + n);
    read_exact(payload.data() + old, n, "payload");
  }
  unsigned char crc_bytes[4];
  read_exact(crc_bytes, 4, "checksum");
  const std::uint32_t stored = Reader(crc_bytes, 4).u32();
  detail::require(stored == crc32(payload.data(), payload.size()), "checkpoint",
                  "checksum mismatch (corrupt data)");
  return payload;
}

}  // namespace checkpoint
}  // namespace muon
