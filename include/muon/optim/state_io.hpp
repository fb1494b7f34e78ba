// SPDX-License-Identifier: MIT
#pragma once
/// \file optim/state_io.hpp
/// \brief The one checkpoint schema of every backend: what an optimizer's
/// state looks like inside the checkpoint envelope (checkpoint_format.hpp),
/// how it is written, and how a file is read back into a StoredState that
/// the core then matches against its parameters. Free of Eigen and CUDA.
///
/// Payload, format version 2 (little-endian; str = u32 length + bytes):
///
///     str  "muon.optimizer"        the payload kind
///     u8   buffer dtype            of every stored buffer (checkpoint::Dtype)
///     u8   parameter dtype         informational (the parameters are not stored)
///     i64  step count              steps the optimizer has taken
///     u32  group count, then per group:
///          u32 option count, then per option: str key | u8 kind | value
///            kind 0: f64;  kind 1: str;  kind 2: schedule =
///            str name | f64 norm divisor | u32 rows | rows x (f64 a, b, c)
///     u32  parameter count, then per parameter:
///          str name | u8 route (1 Muon, 2 AdamW) | u32 group |
///          u8 ndim | ndim x i64 size | u8 column-major |
///          u32 blocks | blocks x i64 rows | i64 steps |
///          u32 buffer count, then per buffer:
///            str name | u8 dtype | u64 count | count elements (little-endian)
///
/// Group options are the rows of the option table (option_table.hpp), in
/// its order, each under its key (the schedule under ns_schedule) and by
/// its rule: always, or only when not the default, so that files of default
/// groups stay readable by the readers from before the option. By type:
/// numbers, flags (0/1) and integers kind 0; names kind 1; the schedule
/// kind 2 (then ns_schedule_cycle = 1 when its rows cycle); adjust_lr_fn
/// kind 0, 1 when the group had a user rule (a checkpoint cannot hold the
/// function). A reader starts from the defaults and applies each key, so
/// options added later stay readable; an unknown key is refused. Version 1
/// files (muon 0.1) are read too.
///
/// An AdaMuon group always stores adamuon_form and adamuon_beta2: AdaMuon's
/// defaults changed (sign form, beta2 0.95, from plain and 0.999), and an
/// AdaMuon group written before that has no adamuon_form key. Such a group
/// is read with the defaults of its time (plain, and 0.999 unless the file
/// gives adamuon_beta2), so it continues as it was saved.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <istream>
#include <iterator>
#include <limits>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "../coefficients.hpp"
#include "../error.hpp"
#include "../ns_options.hpp"
#include "checkpoint_format.hpp"
#include "option_table.hpp"
#include "options.hpp"
#include "registry.hpp"

namespace muon {
namespace optim {

/// The payload kind of an optimizer state.
inline constexpr const char* kStateKind = "muon.optimizer";

/// A stored buffer: a view into the payload it came from.
struct StoredBuffer {
  std::string name;
  checkpoint::Dtype dtype = checkpoint::Dtype::float32;
  std::uint64_t count = 0;
  const unsigned char* data = nullptr;  ///< count elements, little-endian

  /// Element i widened to double (exact).
  double at(std::uint64_t i) const {
    return checkpoint::decode(dtype, data + i * checkpoint::dtype_size(dtype));
  }
};

/// A stored parameter record.
struct StoredParam {
  std::string name;
  Route route = Route::automatic;
  std::uint32_t group = 0;
  TensorShape shape;
  std::vector<std::int64_t> blocks;
  std::int64_t steps = 0;
  std::vector<StoredBuffer> buffers;
};

/// A whole checkpoint, read and structurally checked, not yet matched
/// against an optimizer (Core::match does that; the backends then decode
/// their buffers from the match and Core::commit takes it over).
struct StoredState {
  std::string origin;  ///< the file's path, or "stream"
  std::uint32_t version = 0;
  checkpoint::Dtype buffer_dtype = checkpoint::Dtype::float32;
  checkpoint::Dtype param_dtype = checkpoint::Dtype::float32;
  std::int64_t step_count = 0;
  std::vector<GroupOptions> groups;
  std::vector<bool> group_has_user_rule;  ///< saved with an adjust_lr_fn
  std::vector<StoredParam> params;
  std::vector<unsigned char> payload;  ///< owns the bytes the buffers point to

  StoredState() = default;
  StoredState(const StoredState&) = delete;  // the buffers point into payload
  StoredState& operator=(const StoredState&) = delete;
  StoredState(StoredState&&) = default;
  StoredState& operator=(StoredState&&) = default;
};

/// Step counts are refused from this value on, so a count loaded from a file
/// can be incremented for ever after without overflowing (2^62 steps).
inline constexpr std::int64_t kMaxSteps = std::int64_t(1) << 62;

/// The limits of the schema, one set for the writer and the reader:
/// read_state refuses a file beyond them (a corrupt or hostile length), and
/// the writer refuses a state beyond them by name, before writing a byte
/// (Core::save), so every file save() writes reads back. Step counts are
/// in [0, kMaxSteps). Every count is also bounded by the bytes a file holds:
/// the reader checks that before allocating.
namespace limits {
/// Bytes of a parameter name or a schedule name.
inline constexpr std::size_t name_bytes = std::size_t(1) << 16;
/// Bytes of the library's own words: the payload kind, option keys and text
/// values, buffer names.
inline constexpr std::size_t word_bytes = 256;
/// Parameter groups.
inline constexpr std::uint32_t groups = std::uint32_t(1) << 16;
/// Options stored per group.
inline constexpr std::uint32_t options = 256;
/// Rows of a group's Newton–Schulz schedule.
inline constexpr std::uint32_t schedule_rows = std::uint32_t(1) << 16;
/// Buffers per parameter.
inline constexpr std::uint32_t buffers = 16;
}  // namespace limits

// ---- writing ----------------------------------------------------------------------

namespace state_io {

/// AdaMuon's beta2 default before the sign form (files of that time omit it).
inline constexpr double kPlainAdaMuonBeta2 = 0.999;

/// Throws muon::Error("checkpoint: <what> (nothing was written)") unless
/// `ok`: a state the reader would refuse is not written.
inline void require_writable(bool ok, const std::string& what) {
  if (!ok) detail::fail("checkpoint", what + " (nothing was written)");
}

/// A name in a message: cut to its first 40 bytes when longer.
inline std::string shown_name(std::string_view name) {
  return "'" + std::string(name.substr(0, 40)) + (name.size() > 40 ? "...'" : "'");
}

inline void require_name(std::string_view name, const char* what) {
  require_writable(name.size() <= limits::name_bytes,
                   std::string(what) + " " + shown_name(name) + " has " +
                       std::to_string(name.size()) + " bytes; a checkpoint holds names of up to " +
                       std::to_string(limits::name_bytes));
}

inline void require_steps(std::int64_t steps, const std::string& whose) {
  require_writable(steps >= 0 && steps < kMaxSteps,
                   whose + " step count " + std::to_string(steps) +
                       " is outside the checkpoint's range [0, 2^62)");
}

/// The head of the state: step count and group count.
inline void write_head(checkpoint::Writer& w, std::int64_t step_count, std::size_t groups) {
  require_steps(step_count, "the optimizer's");
  require_writable(groups >= 1 && groups <= limits::groups,
                   std::to_string(groups) + " parameter groups; a checkpoint holds 1 to " +
                       std::to_string(limits::groups));
  w.i64(step_count);
  w.u32(static_cast<std::uint32_t>(groups));
}

/// The parameter count (a u32).
inline void write_param_count(checkpoint::Writer& w, std::size_t params) {
  require_writable(params <= std::numeric_limits<std::uint32_t>::max(),
                   std::to_string(params) + " parameters; a checkpoint holds up to 2^32 - 1");
  w.u32(static_cast<std::uint32_t>(params));
}

inline void write_schedule(checkpoint::Writer& w, const Schedule& s) {
  require_name(s.name(), "the schedule name");
  require_writable(s.rows().size() >= 1 && s.rows().size() <= limits::schedule_rows,
                   "schedule " + shown_name(s.name()) + " has " + std::to_string(s.rows().size()) +
                       " rows; a checkpoint holds 1 to " + std::to_string(limits::schedule_rows));
  w.str(s.name());
  w.f64(s.norm_divisor());
  w.u32(static_cast<std::uint32_t>(s.rows().size()));
  for (const Coefficients& c : s.rows()) {
    w.f64(c.a);
    w.f64(c.b);
    w.f64(c.c);
  }
}

// One stored option: str key | u8 kind | value, per type of value.
inline void write_number(checkpoint::Writer& w, const char* key, double v) {
  w.str(key);
  w.u8(0);
  w.f64(v);
}
inline void write_name(checkpoint::Writer& w, const char* key, const char* name) {
  w.str(key);
  w.u8(1);
  w.str(name);
}

/// The entries a value takes: one, none for an unset number, two for a
/// schedule whose rows cycle.
template <class T>
std::size_t entry_count(const T&) {
  return 1;
}
inline std::size_t entry_count(const std::optional<double>& v) { return v ? 1 : 0; }
inline std::size_t entry_count(const Schedule& s) {
  return s.past_end() == Schedule::PastEnd::cycle ? 2 : 1;
}

inline void write_entries(checkpoint::Writer& w, const char* key, double v) {
  write_number(w, key, v);
}
inline void write_entries(checkpoint::Writer& w, const char* key, bool v) {
  write_number(w, key, v ? 1.0 : 0.0);
}
inline void write_entries(checkpoint::Writer& w, const char* key, int v) {
  write_number(w, key, double(v));
}
inline void write_entries(checkpoint::Writer& w, const char* key, const std::optional<double>& v) {
  if (v) write_number(w, key, *v);
}
inline void write_entries(checkpoint::Writer& w, const char* key, const LrAdjustFn& f) {
  write_number(w, key, f ? 1.0 : 0.0);  // whether the group had a rule: the rule cannot be stored
}
template <class E, class = std::enable_if_t<std::is_enum<E>::value>>
void write_entries(checkpoint::Writer& w, const char* key, E v) {
  write_name(w, key, detail::name_of(v));
}
/// The cycling of a schedule is a key of its own after it: the reader
/// applies it to the schedule it has just read.
inline std::string cycle_key(const char* key) { return std::string(key) + "_cycle"; }
inline void write_entries(checkpoint::Writer& w, const char* key, const Schedule& s) {
  w.str(key);
  w.u8(2);
  write_schedule(w, s);
  if (s.past_end() == Schedule::PastEnd::cycle) write_number(w, cycle_key(key).c_str(), 1.0);
}

/// A group's options: every row the table's rule stores, in its order.
inline void write_group(checkpoint::Writer& w, const GroupOptions& g) {
  std::size_t count = 0;
  for_each_option([&](auto row) {
    using Row = decltype(row);
    if (is_stored(row, g)) count += entry_count(Row::of(g));
  });
  require_writable(count <= limits::options, "too many group options");
  w.u32(static_cast<std::uint32_t>(count));
  for_each_option([&](auto row) {
    using Row = decltype(row);
    if (is_stored(row, g)) write_entries(w, stored_key(row), Row::of(g));
  });
}

/// The record of one parameter, up to its buffer count.
inline void write_param(checkpoint::Writer& w, const ParamRecord& p, std::uint32_t buffers) {
  require_name(p.name, "parameter");
  require_steps(p.steps, "parameter " + shown_name(p.name) + "'s");
  require_writable(
      p.blocks.size() <= std::numeric_limits<std::uint32_t>::max() && buffers <= limits::buffers,
      "parameter " + shown_name(p.name) + " has too many blocks or buffers");
  w.str(p.name);
  w.u8(static_cast<std::uint8_t>(p.route));
  w.u32(static_cast<std::uint32_t>(p.group));
  w.u8(static_cast<std::uint8_t>(p.shape.ndim));
  for (int d = 0; d < p.shape.ndim; ++d) w.i64(p.shape.dims[static_cast<std::size_t>(d)]);
  w.boolean(p.shape.column_major);
  w.u32(static_cast<std::uint32_t>(p.blocks.size()));
  for (std::int64_t r : p.blocks) w.i64(r);
  w.i64(p.steps);
  w.u32(buffers);
}

/// One buffer: name, dtype, count, then `count` elements of host memory.
inline void write_buffer(checkpoint::Writer& w, std::string_view name, checkpoint::Dtype dtype,
                         std::uint64_t count, const void* data) {
  require_writable(name.size() <= limits::word_bytes,
                   "buffer name " + shown_name(name) + " too long");
  w.str(name);
  w.u8(static_cast<std::uint8_t>(dtype));
  w.u64(count);
  w.elements(data, static_cast<std::size_t>(count), checkpoint::dtype_size(dtype));
}

// ---- reading --------------------------------------------------------------------

inline checkpoint::Dtype read_dtype(checkpoint::Reader& r, const char* what) {
  const auto d = static_cast<checkpoint::Dtype>(r.u8());
  if (!checkpoint::is_valid(d)) r.fail(std::string("unknown ") + what + " dtype");
  return d;
}

inline TensorShape read_shape(checkpoint::Reader& r, const std::string& where, bool column_flag) {
  TensorShape s;
  const std::uint8_t ndim = r.u8();
  if (ndim > 4) r.fail(where + "more than 4 dimensions");
  s.ndim = ndim;
  for (int d = 0; d < s.ndim; ++d) s.dims[static_cast<std::size_t>(d)] = r.i64();
  if (column_flag) s.column_major = r.boolean("column-major flag");
  for (int d = 0; d < s.ndim; ++d)
    if (s.dims[static_cast<std::size_t>(d)] < 1) r.fail(where + "a size < 1");
  if (s.column_major && s.ndim != 2) r.fail(where + "column-major but not 2-D");
  return s;
}

/// A schedule as write_schedule stores it: name, norm divisor, row count,
/// then each row's a, b and c. `where` starts each message. A count of 0 is
/// refused as implausible when `refuse_zero_rows` (version 2); version 1
/// leaves it to Schedule's own check ("needs at least one (a, b, c) row").
inline Schedule read_schedule(checkpoint::Reader& r, const std::string& where,
                              bool refuse_zero_rows) {
  std::string name = r.str("schedule name", limits::name_bytes);
  const double divisor = r.f64();
  const std::uint32_t rows = r.u32();
  if ((rows == 0 && refuse_zero_rows) || rows > limits::schedule_rows)
    r.fail(where + "implausible schedule length");
  const unsigned char* bytes = r.items(rows, 24, "schedule row");
  std::vector<Coefficients> coefficients(rows);
  checkpoint::Reader cr(bytes, std::size_t(rows) * 24, r.origin());
  for (Coefficients& c : coefficients) {
    c.a = cr.f64();
    c.b = cr.f64();
    c.c = cr.f64();
  }
  try {
    return Schedule(std::move(coefficients), divisor, std::move(name));
  } catch (const Error& e) {
    r.fail(where + std::string(e.detail()));
  }
}

/// Structure of one parameter record, version 1 or 2.
inline StoredParam read_param(checkpoint::Reader& r, std::uint32_t version) {
  StoredParam p;
  p.name = r.str("parameter name", limits::name_bytes);
  const std::string where = "parameter '" + p.name + "': ";
  p.route = static_cast<Route>(r.u8());
  p.group = r.u32();
  p.shape = read_shape(r, where, version >= 2);
  const std::uint32_t blocks = r.u32();
  const unsigned char* block_bytes = r.items(blocks, 8, "block");
  for (std::uint32_t b = 0; b < blocks; ++b) {
    checkpoint::Reader br(block_bytes + 8 * b, 8, r.origin());
    p.blocks.push_back(br.i64());
  }
  p.steps = r.i64();
  const std::uint32_t buffers = r.u32();
  if (buffers > limits::buffers) r.fail(where + "implausible buffer count");
  for (std::uint32_t b = 0; b < buffers; ++b) {
    StoredBuffer buf;
    buf.name = r.str("buffer name", limits::word_bytes);
    buf.dtype = read_dtype(r, "buffer");
    buf.count = r.u64();
    buf.data = r.items(buf.count, checkpoint::dtype_size(buf.dtype), "buffer element");
    p.buffers.push_back(std::move(buf));
  }
  return p;
}

/// A group as the reader builds it.
struct ReadGroup {
  GroupOptions options;
  bool user_rule = false;  ///< saved with an adjust_lr_fn
  std::string where;       ///< "group <i>: ", for the messages
};

inline double read_flag(checkpoint::Reader& r, const ReadGroup& g, const std::string& key) {
  const double v = r.f64();
  if (!(v == 0.0 || v == 1.0)) r.fail(g.where + "option '" + key + "' is not 0 or 1");
  return v;
}

// One stored entry of a row into its member, per type of value (`valid`:
// the row's check, for the values that must be checked before they are
// converted).
template <class Valid>
void read_entry(checkpoint::Reader& r, ReadGroup&, const std::string&, double& field,
                const Valid&) {
  field = r.f64();
}
template <class Valid>
void read_entry(checkpoint::Reader& r, ReadGroup& g, const std::string& key, bool& field,
                const Valid&) {
  field = read_flag(r, g, key) == 1.0;
}
inline void read_entry(checkpoint::Reader& r, ReadGroup& g, const std::string& key, int& field,
                       const detail::Range& valid) {
  const double v = r.f64();
  if (!valid.contains(v))
    r.fail(g.where + "option '" + key + "' must be an integer " + valid.text() + ", got " +
           detail::number_text(v));
  field = static_cast<int>(v);
}
template <class Valid>
void read_entry(checkpoint::Reader& r, ReadGroup&, const std::string&, std::optional<double>& field,
                const Valid&) {
  field = r.f64();
}
template <class Valid>
void read_entry(checkpoint::Reader& r, ReadGroup& g, const std::string& key, LrAdjustFn&,
                const Valid&) {
  g.user_rule = read_flag(r, g, key) == 1.0;  // the rule itself is the loading group's
}
template <class E, class Valid, class = std::enable_if_t<std::is_enum<E>::value>>
void read_entry(checkpoint::Reader& r, ReadGroup& g, const std::string& key, E& field,
                const Valid&) {
  const std::string v = r.str("option value", limits::word_bytes);
  const std::optional<E> value = detail::from_name<E>(v);
  if (!value)
    r.fail(g.where + "option '" + key + "' has an unknown value '" + v + "' (expected " +
           detail::names_text<E>() + ")");
  field = *value;
}
template <class Valid>
void read_entry(checkpoint::Reader& r, ReadGroup& g, const std::string&, Schedule& field,
                const Valid&) {
  field = read_schedule(r, g.where, /*refuse_zero_rows=*/true);
}

/// The kind a value of type T is stored as.
template <class T>
constexpr std::uint8_t kind_of() {
  if constexpr (std::is_same<T, Schedule>::value) return 2;
  if constexpr (std::is_enum<T>::value) return 1;
  return 0;
}

/// Applies one stored group option (version 2) to `g`: the row stored
/// under `key` reads it, checked by kind.
inline void apply_group_option(checkpoint::Reader& r, ReadGroup& g, const std::string& key,
                               std::uint8_t kind) {
  bool found = false;
  for_each_option([&](auto row) {
    using Row = decltype(row);
    using T = typename Row::type;
    if (found) return;
    if constexpr (std::is_same<T, Schedule>::value) {
      if (key == cycle_key(stored_key(row))) {  // after the schedule: it cycles
        found = true;
        if (kind != 0) r.fail(g.where + "option '" + key + "' has kind " + std::to_string(kind));
        if (r.f64() != 1.0) r.fail(g.where + "option '" + key + "' is not 1");
        Row::of(g.options) = Row::of(g.options).with_past_end(Schedule::PastEnd::cycle);
        return;
      }
    }
    if (key != stored_key(row)) return;
    found = true;
    if (kind != kind_of<T>())
      r.fail(g.where + "option '" + key + "' has kind " + std::to_string(kind) + ", not " +
             std::to_string(kind_of<T>()));
    read_entry(r, g, key, Row::of(g.options), Row::check);
  });
  if (found) return;
  if (kind == 0)
    r.fail(g.where + "unknown numeric option '" + key + "' (written by a newer version?)");
  if (kind == 1) r.fail(g.where + "unknown option '" + key + "' (written by a newer version?)");
  r.fail(g.where + "option '" + key + "' has an unknown kind " + std::to_string(kind));
}

inline GroupOptions read_group_v2(checkpoint::Reader& r, std::size_t index, bool& user_rule) {
  ReadGroup g;
  g.where = "group " + std::to_string(index) + ": ";
  const std::uint32_t count = r.u32();
  if (count > limits::options) r.fail(g.where + "implausible option count");
  std::set<std::string> seen;
  for (std::uint32_t i = 0; i < count; ++i) {
    const std::string key = r.str("option key", limits::word_bytes);
    if (!seen.insert(key).second) r.fail(g.where + "option '" + key + "' appears twice");
    const std::uint8_t kind = r.u8();
    apply_group_option(r, g, key, kind);
  }
  // An AdaMuon group saved before the sign form became the default (the
  // writer stores adamuon_form for every AdaMuon group since): the plain
  // form, with the default beta2 of that time where the file left it out.
  MuonGroupOptions& m = g.options.muon;
  if (m.variant == MuonVariant::adamuon && seen.count(option::adamuon_form::key) == 0) {
    m.adamuon_form = AdaMuonForm::plain;
    if (seen.count(option::adamuon_beta2::key) == 0) m.adamuon_beta2 = kPlainAdaMuonBeta2;
  }
  user_rule = g.user_rule;
  return std::move(g.options);
}

// Version 1 (muon 0.1): fixed fields in a fixed order.
inline GroupOptions read_group_v1(checkpoint::Reader& r, bool& user_rule) {
  GroupOptions g;
  MuonGroupOptions& m = g.muon;
  m.lr = r.f64();
  m.weight_decay = r.f64();
  m.momentum = r.f64();
  m.nesterov = r.boolean("nesterov");
  const std::uint8_t kind = r.u8();
  if (kind > 1) r.fail("unknown momentum kind");
  m.momentum_kind = kind == 0 ? MomentumKind::ema : MomentumKind::sum;
  m.cautious_weight_decay = r.boolean("cautious_weight_decay");
  const std::uint8_t rule = r.u8();
  if (rule > static_cast<std::uint8_t>(LrAdjust::none)) r.fail("unknown adjust_lr rule");
  m.adjust_lr = static_cast<LrAdjust>(rule);
  user_rule = r.boolean("adjust_lr_fn");
  const std::uint32_t steps = r.u32();
  if (!kNsStepsRange.contains(steps)) r.fail("ns steps out of range");
  m.ns.steps = static_cast<int>(steps);
  m.ns.eps = r.f64();
  const std::uint8_t mode = r.u8();
  if (mode > 1) r.fail("unknown eps mode");
  m.ns.eps_mode = mode == 0 ? EpsMode::add : EpsMode::max;
  const std::uint8_t method = r.u8();
  if (method > static_cast<std::uint8_t>(NsMethod::gram)) r.fail("unknown Newton-Schulz method");
  m.ns.method = static_cast<NsMethod>(method);
  const bool has_divisor = r.boolean("has_norm_divisor");
  const double divisor = r.f64();
  if (has_divisor) m.ns.norm_divisor = divisor;
  m.ns.schedule = read_schedule(r, "", /*refuse_zero_rows=*/false);
  g.adamw.lr = r.f64();
  g.adamw.beta1 = r.f64();
  g.adamw.beta2 = r.f64();
  g.adamw.eps = r.f64();
  g.adamw.weight_decay = r.f64();
  return g;
}

}  // namespace state_io

/// Reads a checkpoint (format version 1 or 2) from `is` and checks its
/// structure: envelope, payload kind, enums, lengths, group options (each
/// group is validated), step counts in [0, 2^62), no bytes left over. Does
/// not look at an optimizer. Throws muon::Error whose message starts with
/// `origin` (a path, or "stream").
inline StoredState read_state(std::istream& is, const std::string& origin = "stream") {
  checkpoint::Envelope envelope = checkpoint::read_envelope(is, "checkpoint " + origin);
  StoredState s;
  s.origin = origin;
  s.version = envelope.version;
  s.payload = std::move(envelope.payload);
  checkpoint::Reader r(s.payload.data(), s.payload.size(), "checkpoint " + origin);
  if (s.version >= 2) {
    const std::string kind = r.str("payload kind", limits::word_bytes);
    if (kind != kStateKind) r.fail("holds a '" + kind + "' payload, not an optimizer state");
    s.buffer_dtype = state_io::read_dtype(r, "buffer");
    s.param_dtype = state_io::read_dtype(r, "parameter");
  } else {
    s.param_dtype = state_io::read_dtype(r, "parameter");
    s.buffer_dtype = state_io::read_dtype(r, "buffer");
  }
  s.step_count = r.i64();
  if (!(s.step_count >= 0 && s.step_count < kMaxSteps)) r.fail("step count out of range");
  const std::uint32_t groups = r.u32();
  if (groups == 0 || groups > limits::groups) r.fail("implausible group count");
  for (std::uint32_t i = 0; i < groups; ++i) {
    bool user_rule = false;
    GroupOptions g = s.version >= 2 ? state_io::read_group_v2(r, i, user_rule)
                                    : state_io::read_group_v1(r, user_rule);
    try {
      g.validate();
    } catch (const Error& e) {
      r.fail("group " + std::to_string(i) + " has invalid options (" + std::string(e.detail()) +
             ")");
    }
    s.groups.push_back(std::move(g));
    s.group_has_user_rule.push_back(user_rule);
  }
  const std::uint32_t count = r.u32();
  r.items(0, 0, "parameter");
  for (std::uint32_t i = 0; i < count; ++i) {
    if (r.remaining() == 0) r.fail("truncated payload");
    StoredParam p = state_io::read_param(r, s.version);
    const std::string where = "parameter '" + p.name + "': ";
    if (!(p.steps >= 0 && p.steps < kMaxSteps)) r.fail(where + "step count out of range");
    s.params.push_back(std::move(p));
  }
  if (r.remaining() != 0) r.fail("trailing bytes after the last parameter");
  return s;
}

/// The names of the parameters a checkpoint holds, in its order.
inline std::vector<std::string> checkpoint_param_names(std::istream& is,
                                                       const std::string& origin = "stream") {
  const StoredState s = read_state(is, origin);
  std::vector<std::string> names;
  for (const auto& p : s.params) names.push_back(p.name);
  return names;
}

}  // namespace optim
}  // namespace muon
