// SPDX-License-Identifier: MIT
#pragma once
/// \file optim/registry.hpp
/// \brief Which parameters an optimizer holds and how each is updated:
/// routing (Muon or AdamW, and why), the matrix Muon sees, its row blocks,
/// the routing report. Shared by every backend; free of Eigen and CUDA.

#include <algorithm>
#include <array>
#include <cctype>
#include <cstddef>
#include <cstdint>
#include <iomanip>
#include <limits>
#include <map>
#include <optional>
#include <ostream>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../detail/checked_size.hpp"
#include "../error.hpp"

namespace muon {

/// The memory order of a matrix given as rows x cols (rows = outputs).
enum class Layout : std::uint8_t {
  row_major,    ///< element (i, j) at i * stride + j (PyTorch's (out, in) weights; the default)
  column_major  ///< element (i, j) at i + j * stride (Eigen's default, cuBLAS)
};

// ---- routing ----------------------------------------------------------------------

/// Which update a parameter receives.
enum class Route : std::uint8_t {
  automatic = 0,  ///< decided by the routing rules (see RoutingRules)
  muon = 1,       ///< momentum + Newton–Schulz + shape-adjusted lr
  adamw = 2       ///< AdamW with the group's AdamW options
};

/// True for the three named Route values.
constexpr bool is_valid(Route r) {
  return r == Route::automatic || r == Route::muon || r == Route::adamw;
}

inline const char* route_name(Route r) {
  switch (r) {
    case Route::automatic:
      return "automatic";
    case Route::muon:
      return "muon";
    case Route::adamw:
      return "adamw";
  }
  return "invalid";
}

/// How Route::automatic decides.
struct RoutingRules {
  /// Case-insensitive substrings of a parameter name that send a parameter
  /// with >= 2 dimensions to AdamW: embeddings and output heads, which Muon's
  /// authors exclude. Default: embed, wte, wpe, tok_emb, lm_head,
  /// output_head, classifier.
  std::vector<std::string> adamw_name_patterns = {"embed",   "wte",         "wpe",       "tok_emb",
                                                  "lm_head", "output_head", "classifier"};
};

/// A route and the sentence a routing report prints for it.
struct RouteDecision {
  Route route = Route::automatic;
  std::string reason;
};

namespace detail {

// Byte-wise case folding (ASCII letters under the default "C" locale):
// parameter names are identifiers, not text to be collated.
inline std::string ascii_lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

}  // namespace detail

/// The route of a parameter named `name` with `ndim` dimensions of sizes
/// shape[0..ndim), and why.
///
/// `requested` other than Route::automatic always wins. Otherwise: fewer than
/// 2 dimensions go to AdamW; a name containing one of
/// rules.adamw_name_patterns (case-insensitively) goes to AdamW; every other
/// 2-D, 3-D or 4-D tensor goes to Muon (a 3-D tensor is a batch of shape[0]
/// matrices, a 4-D filter the (out, in*kh*kw) matrix). Throws muon::Error
/// naming "route" for a value that is not a Route, or "shape" for ndim
/// outside [0, 4].
inline RouteDecision decide_route(std::string_view name, int ndim,
                                  const std::array<std::ptrdiff_t, 4>& shape, Route requested,
                                  const RoutingRules& rules) {
  if (!is_valid(requested)) detail::fail("route", "is not a Route value");
  if (!(ndim >= 0 && ndim <= 4)) detail::fail("shape", "must have 0 to 4 dimensions");
  if (requested != Route::automatic) {
    RouteDecision d{requested, "explicit choice"};
    if (requested == Route::muon && ndim < 2) d.reason += " (a vector is a 1 x n matrix)";
    return d;
  }
  if (ndim < 2) return {Route::adamw, ndim == 1 ? "1-D (gain/bias)" : "scalar"};
  const std::string lname = detail::ascii_lower(name);
  for (const std::string& pattern : rules.adamw_name_patterns) {
    if (!pattern.empty() && lname.find(detail::ascii_lower(pattern)) != std::string::npos)
      return {Route::adamw, "name contains '" + pattern + "' (embedding/output head)"};
  }
  if (ndim == 2) return {Route::muon, "2-D matrix"};
  if (ndim == 3) return {Route::muon, "3-D: batch of " + std::to_string(shape[0]) + " matrices"};
  // The lr scale uses the flattened (out, in*kh*kw) shape Muon actually
  // orthogonalizes; some ports scale by kh/kw instead, which is wrong.
  return {Route::muon, "4-D filter as (out, in*kh*kw)"};
}

/// One row of a routing report.
struct RoutingEntry {
  std::string name;
  Route route = Route::automatic;
  std::string reason;
  std::string shape;        ///< the tensor's shape, e.g. "(64, 3, 3, 3)"
  std::ptrdiff_t rows = 0;  ///< out of the matrix Muon sees (per block for splits/batches)
  std::ptrdiff_t cols = 0;  ///< in of that matrix
  double lr_scale = 1.0;    ///< adjusted lr / lr for the group's current lr (first block)
  std::size_t group = 0;
};

/// The routing decisions of an optimizer, printable as a table.
struct RoutingReport {
  std::vector<RoutingEntry> entries;

  const RoutingEntry& at(const std::string& name) const {
    for (const auto& e : entries)
      if (e.name == name) return e;
    detail::fail("name", "no parameter named '" + name + "'");
  }

  std::string table() const {
    std::size_t w = 4;
    for (const auto& e : entries) w = std::max(w, e.name.size());
    std::ostringstream os;
    os << std::left << std::setw(static_cast<int>(w)) << "name"
       << "  " << std::setw(6) << "route"
       << "  " << std::setw(18) << "shape"
       << "  " << std::setw(14) << "matrix"
       << "  " << std::setw(8) << "lr scale"
       << "  reason\n";
    for (const auto& e : entries) {
      std::ostringstream matrix, scale;
      matrix << e.rows << "x" << e.cols;
      scale << std::setprecision(4) << e.lr_scale;
      os << std::setw(static_cast<int>(w)) << e.name << "  " << std::setw(6) << route_name(e.route)
         << "  " << std::setw(18) << e.shape << "  " << std::setw(14) << matrix.str() << "  "
         << std::setw(8) << scale.str() << "  " << e.reason << "\n";
    }
    return os.str();
  }
};

inline std::ostream& operator<<(std::ostream& os, const RoutingReport& r) {
  return os << r.table();
}

/// Per-parameter registration choices.
struct ParamOptions {
  /// Explicit route; automatic applies RoutingRules. An explicit choice always wins.
  Route route = Route::automatic;
  /// Parameter group index (0 = the group given to the constructor).
  std::size_t group = 0;
  /// Muon only, row-major 2-D or 4-D: sizes of row blocks orthogonalized
  /// separately (e.g. {d, d, d} for fused QKV rows). Must sum to the out
  /// dimension. Each block's lr is adjusted by its own (block rows, in) shape.
  std::vector<std::ptrdiff_t> split;
  /// Muon only, row-major 2-D or 4-D: per-head orthogonalization, the
  /// shorthand for `heads` equal row blocks (a (heads*d_head) x d attention
  /// projection as heads d_head x d blocks; a fused QKV weight: 3*heads).
  /// 0: none. The out dimension must divide evenly; not with `split`.
  std::int64_t heads = 0;
};

namespace optim {

/// A tensor as a backend describes it when registering it.
struct TensorShape {
  int ndim = 0;  ///< 0 (a scalar) to 4
  std::array<std::int64_t, 4> dims{{0, 0, 0, 0}};
  /// 2-D only: element (i, j) at i + j * rows (Eigen's default, cuBLAS)
  /// instead of the row-major i * cols + j (PyTorch).
  bool column_major = false;

  std::int64_t numel() const {
    std::int64_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= dims[static_cast<std::size_t>(i)];
    return n;
  }
  /// "(64, 3, 3, 3)", with " column-major" for a column-major matrix.
  std::string str() const {
    std::string s = "(";
    for (int i = 0; i < ndim; ++i) {
      if (i) s += ", ";
      s += std::to_string(dims[static_cast<std::size_t>(i)]);
    }
    return s + ")" + (column_major ? " column-major" : "");
  }
  bool operator==(const TensorShape& o) const {
    if (ndim != o.ndim || column_major != o.column_major) return false;
    for (int i = 0; i < ndim; ++i)
      if (dims[static_cast<std::size_t>(i)] != o.dims[static_cast<std::size_t>(i)]) return false;
    return true;
  }
  bool operator!=(const TensorShape& o) const { return !(*this == o); }
};

/// Where a parameter's elements lie in (host) memory: `lines` runs of
/// `line_bytes` bytes each, starting `stride` bytes apart, the first at
/// `base`. A contiguous tensor is one line; a 2-D view with a stride is one
/// line per row (per column when column-major). Unknown (lines == 0) for
/// memory the core is not shown: never compared then.
struct MemoryFootprint {
  std::uint64_t base = 0;
  std::uint64_t lines = 0;
  std::uint64_t line_bytes = 0;
  std::uint64_t stride = 0;  ///< between line starts; line_bytes for one line

  bool known() const { return lines > 0 && line_bytes > 0; }
  /// One past the last byte (made() checked that it fits).
  std::uint64_t end() const { return base + (lines - 1) * stride + line_bytes; }

  /// `lines` runs of `line_elements` elements of `element_size` bytes whose
  /// starts are `stride_elements` elements apart, from `data`. Throws
  /// muon::Error naming parameter `name` when the last byte would lie past
  /// the end of the address space (a shape no memory can hold).
  static MemoryFootprint strided(const std::string& name, const void* data, std::uint64_t lines,
                                 std::uint64_t line_elements, std::uint64_t stride_elements,
                                 std::uint64_t element_size) {
    MemoryFootprint f;
    if (data == nullptr || lines == 0 || line_elements == 0 || element_size == 0) return f;
    const auto line = detail::checked_mul(line_elements, element_size);
    const auto stride =
        detail::checked_mul(lines > 1 ? stride_elements : line_elements, element_size);
    const auto before_last = stride ? detail::checked_mul(lines - 1, *stride) : std::nullopt;
    const auto span = line && before_last ? detail::checked_add(*before_last, *line) : std::nullopt;
    const auto base = static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(data));
    const std::uint64_t last_address = std::numeric_limits<std::uintptr_t>::max();
    if (!span || *span - 1 > last_address - base)
      detail::fail("param", "'" + name + "' spans more bytes than the address space holds");
    f.base = base;
    f.lines = lines;
    f.line_bytes = *line;
    f.stride = *stride;
    if (f.stride == f.line_bytes) {  // contiguous: one line (span fits, checked above)
      f.line_bytes = *span;
      f.stride = *span;
      f.lines = 1;
    }
    return f;
  }
};

/// True when footprints x and y share a byte. Exact when one of them is a
/// single line or both have the same stride (row or column slices of one
/// matrix, whose address ranges interleave while their elements need not
/// meet); otherwise whether their address ranges meet (conservative).
inline bool overlaps(const MemoryFootprint& x, const MemoryFootprint& y) {
  if (!x.known() || !y.known()) return false;
  if (!(x.base < y.end() && y.base < x.end())) return false;
  if (!(x.lines == 1 || y.lines == 1 || x.stride == y.stride)) return true;
  const MemoryFootprint& a = x.base <= y.base ? x : y;  // the one that starts first
  const MemoryFootprint& b = x.base <= y.base ? y : x;
  const std::uint64_t s = a.lines > 1 ? a.stride : b.stride;  // the common stride
  // Relative to a.base, line i of a is [i s, i s + la) and line j of b is
  // [off + j s, off + j s + lb): they meet when k = i - j has
  // off - la < k s < off + lb, with i < a.lines and j < b.lines.
  const std::uint64_t off = b.base - a.base;
  if (off < a.line_bytes) return true;                       // b starts inside a's first line
  const std::uint64_t first = (off - a.line_bytes) / s + 1;  // the smallest such k (>= 1)
  const std::uint64_t last = (off + b.line_bytes - 1) / s;   // the largest
  return first <= last && first <= a.lines - 1;
}

/// What the optimizer core knows of one registered parameter.
///
/// The matrix a backend updates is row-major `rows` x `cols` in memory: the
/// tensor itself for 2-D, (b*r) x c for a 3-D batch, out x (in*kh*kw) for a
/// 4-D filter, 1 x n for a vector, 1 x 1 for a scalar. A column-major r x c
/// matrix is, in memory, the row-major c x r matrix W^T; Newton–Schulz
/// commutes with transposition (NS(W^T) = NS(W)^T), so the backend
/// orthogonalizes that memory as it is, while the lr scale keeps the
/// logical (out, in) = (r, c).
struct ParamRecord {
  std::string name;
  Route route = Route::adamw;
  std::string reason;
  std::size_t group = 0;
  TensorShape shape;
  std::int64_t rows = 1, cols = 1;
  /// Muon: the row counts of the blocks orthogonalized one by one (one block
  /// for a matrix, b of r rows for a batch, the split's sizes).
  std::vector<std::int64_t> blocks;
  /// Steps this parameter has taken (AdamW's bias-correction t).
  std::int64_t steps = 0;
  /// Where its elements lie (unknown for device memory): no two
  /// parameters' footprints overlap.
  MemoryFootprint memory;

  bool muon() const { return route == Route::muon; }
  std::int64_t numel() const { return rows * cols; }
  /// The logical (out, in) of block b, for the lr rule.
  std::int64_t block_out(std::size_t b) const { return shape.column_major ? cols : blocks[b]; }
  std::int64_t block_in() const { return shape.column_major ? rows : cols; }
};

/// Parameters by name, in registration order.
class Registry {
 public:
  /// Registers `name`, routing it by `options.route` or `rules`. Throws
  /// muon::Error for an empty or duplicate name, a shape with a size < 1 or
  /// more than 4 dimensions, a group index >= group_count, an invalid route,
  /// a bad split, or `memory` that overlaps a registered parameter's (the
  /// same elements would be updated twice per step); the registry is then
  /// unchanged. Returns the index.
  std::size_t add(const std::string& name, const TensorShape& shape, const ParamOptions& options,
                  std::size_t group_count, const RoutingRules& rules,
                  const MemoryFootprint& memory = MemoryFootprint()) {
    if (name.empty()) detail::fail("name", "must not be empty");
    if (index_.count(name))
      detail::fail("name", "a parameter named '" + name + "' is already registered");
    check_shape(name, shape);
    if (options.group >= group_count)
      detail::fail("group", "index " + std::to_string(options.group) + " out of range (" +
                                std::to_string(group_count) + " groups)");
    if (!is_valid(options.route)) detail::fail("route", "is not a Route value");

    ParamRecord p;
    p.name = name;
    p.group = options.group;
    p.shape = shape;
    p.memory = memory;
    std::array<std::ptrdiff_t, 4> dims{};
    for (std::size_t i = 0; i < 4; ++i) dims[i] = static_cast<std::ptrdiff_t>(shape.dims[i]);
    RouteDecision decision = decide_route(name, shape.ndim, dims, options.route, rules);
    p.route = decision.route;
    p.reason = std::move(decision.reason);
    const auto& d = shape.dims;
    switch (shape.ndim) {
      case 0:
        p.rows = p.cols = 1;
        break;
      case 1:
        p.rows = 1;
        p.cols = d[0];
        break;
      case 2:
        p.rows = shape.column_major ? d[1] : d[0];
        p.cols = shape.column_major ? d[0] : d[1];
        if (shape.column_major) p.reason += ", column-major (orthogonalized as its transpose)";
        break;
      case 3:
        p.rows = d[0] * d[1];
        p.cols = d[2];
        break;
      default:
        p.rows = d[0];
        p.cols = d[1] * d[2] * d[3];
        break;
    }
    std::vector<std::ptrdiff_t> split = options.split;
    if (options.heads != 0) {
      if (options.heads < 0) detail::fail("heads", "must be >= 0");
      if (!split.empty()) detail::fail("heads", "'" + name + "': give split or heads, not both");
      if (p.rows % options.heads != 0)
        detail::fail("heads", "'" + name + "' has " + std::to_string(p.rows) +
                                  " rows, not a multiple of " + std::to_string(options.heads) +
                                  " heads");
      split.assign(static_cast<std::size_t>(options.heads),
                   static_cast<std::ptrdiff_t>(p.rows / options.heads));
    }
    if (!split.empty()) {
      if (p.route != Route::muon) detail::fail("split", "applies to Muon-routed parameters only");
      if (!(shape.ndim == 2 || shape.ndim == 4))
        detail::fail("split", "applies to 2-D matrices and 4-D filters only");
      if (shape.column_major)
        detail::fail("split", "'" + name +
                                  "' is column-major: its row blocks are not contiguous; "
                                  "register the row-major (transposed) storage instead");
      std::int64_t total = 0;
      for (std::ptrdiff_t s : split) {
        if (s <= 0) detail::fail("split", "block sizes must be positive");
        if (s > p.rows - total)  // so the sum cannot wrap
          detail::fail("split", "block sizes sum to more than the " + std::to_string(p.rows) +
                                    " rows of '" + name + "'");
        total += s;
      }
      if (total != p.rows)
        detail::fail("split", "block sizes sum to " + std::to_string(total) + ", not the " +
                                  std::to_string(p.rows) + " rows of '" + name + "'");
      p.blocks.assign(split.begin(), split.end());
      p.reason += options.heads != 0
                      ? ", per head: " + std::to_string(options.heads) + " blocks of " +
                            std::to_string(p.rows / options.heads) + " rows"
                      : ", split into " + std::to_string(split.size()) + " row blocks";
    } else if (p.route == Route::muon && shape.ndim == 3) {
      p.blocks.assign(static_cast<std::size_t>(d[0]), d[1]);
    } else {
      p.blocks.assign(1, p.rows);
    }
    check_memory(name, memory, params_.size());  // last: the other problems first
    params_.push_back(std::move(p));
    try {
      index_.emplace(name, params_.size() - 1);
    } catch (...) {  // out of memory: as it was
      params_.pop_back();
      throw;
    }
    return params_.size() - 1;
  }

  /// Moves parameter i to other memory (a backend whose tensor storage was
  /// replaced). Throws muon::Error, changing nothing, when `memory` overlaps
  /// another parameter's.
  void set_memory(std::size_t i, const MemoryFootprint& memory) {
    check_memory(params_[i].name, memory, i);
    params_[i].memory = memory;
  }

  /// Throws muon::Error naming both parameters when `memory`, the memory of
  /// `name`, overlaps that of a registered parameter other than number
  /// `self`. One comparison per registered parameter.
  void check_memory(const std::string& name, const MemoryFootprint& memory,
                    std::size_t self) const {
    if (!memory.known()) return;
    for (std::size_t j = 0; j < params_.size(); ++j)
      if (j != self && overlaps(memory, params_[j].memory))
        detail::fail("param", "'" + name + "' shares memory with '" + params_[j].name +
                                  "': its elements would be updated twice per step (register "
                                  "each tensor once, tied weights as one parameter)");
  }

  /// Removes the most recent registration (a backend whose allocation
  /// failed right after add() undoes it).
  void remove_last() {
    if (params_.empty()) return;
    index_.erase(params_.back().name);
    params_.pop_back();
  }

  std::size_t size() const { return params_.size(); }
  bool empty() const { return params_.empty(); }
  const ParamRecord& operator[](std::size_t i) const { return params_[i]; }
  ParamRecord& operator[](std::size_t i) { return params_[i]; }
  const std::vector<ParamRecord>& all() const { return params_; }

  /// The index of `name`, if registered.
  std::optional<std::size_t> find(std::string_view name) const {
    const auto it = index_.find(name);
    if (it == index_.end()) return std::nullopt;
    return it->second;
  }
  /// The index of `name`; throws muon::Error naming "name" (and the nearest
  /// registered name) when there is none.
  std::size_t at(std::string_view name) const {
    if (const auto i = find(name)) return *i;
    std::string message = "no parameter named '" + std::string(name) + "'";
    const std::string near = nearest(name);
    if (!near.empty()) message += " (did you mean '" + near + "'?)";
    detail::fail("name", message);
  }
  /// Names in registration order.
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    out.reserve(params_.size());
    for (const auto& p : params_) out.push_back(p.name);
    return out;
  }

  /// Throws muon::Error naming the problem when `shape` cannot be registered.
  static void check_shape(const std::string& name, const TensorShape& shape) {
    if (!(shape.ndim >= 0 && shape.ndim <= 4))
      detail::fail("shape", "'" + name + "' must have 0 to 4 dimensions");
    if (shape.column_major && shape.ndim != 2)
      detail::fail("shape", "'" + name + "': only a 2-D matrix can be column-major");
    std::int64_t n = 1;
    for (int i = 0; i < shape.ndim; ++i) {
      const std::int64_t d = shape.dims[static_cast<std::size_t>(i)];
      if (d <= 0)
        detail::fail("shape", "'" + name + "' is empty or has a negative size: " + shape.str());
      if (n > std::numeric_limits<std::int64_t>::max() / d)
        detail::fail("shape", "'" + name + "' has too many elements");
      n *= d;
    }
  }

 private:
  std::string nearest(std::string_view name) const {
    std::string best;
    std::size_t best_score = std::numeric_limits<std::size_t>::max();
    for (const auto& p : params_) {
      // Cheap similarity: length of the common prefix and suffix.
      std::size_t pre = 0, suf = 0;
      while (pre < name.size() && pre < p.name.size() && name[pre] == p.name[pre]) ++pre;
      while (suf < name.size() - pre && suf < p.name.size() - pre &&
             name[name.size() - 1 - suf] == p.name[p.name.size() - 1 - suf])
        ++suf;
      const std::size_t differ = std::max(name.size(), p.name.size()) - pre - suf;
      if (differ < best_score) {
        best_score = differ;
        best = p.name;
      }
    }
    return best_score <= std::max<std::size_t>(2, name.size() / 3) ? best : std::string();
  }

  std::vector<ParamRecord> params_;
  std::map<std::string, std::size_t, std::less<>> index_;
};

}  // namespace optim
}  // namespace muon
