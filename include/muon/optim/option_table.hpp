// SPDX-License-Identifier: MIT
#pragma once
/// \file optim/option_table.hpp
/// \brief THE option table: one row per option of a parameter group (its
/// key, type, member, range or names, checkpoint rule and documentation).
/// Everything that handles options by key reads it: validate(),
/// set_option and option_keys (here), the checkpoint writer and reader
/// (state_io.hpp), the distributed optimizer's "same on every rank" check
/// (distributed/optimizer.hpp), muon::torch::MuonOptions' accessors
/// (torch/options.hpp) and the option reference in docs/optimizer.md
/// (generated: tests/test_option_table.cpp).
///
/// Adding an option: its member (with its default) in MuonGroupOptions,
/// AdamWOptions or NewtonSchulzOptions, its row below, and the code that
/// uses it. A value of a new type needs a Codec (below) and, to be stored,
/// an entry writer in state_io.hpp; a new enum needs only its name list
/// (detail::Names). Rows are in checkpoint order: new rows go at the end,
/// and a row stored only when not the default keeps files of default groups
/// readable by older readers.
///
/// Included at the end of options.hpp; free of Eigen and CUDA.

#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "../coefficients.hpp"
#include "../detail/option_values.hpp"
#include "../error.hpp"
#include "../ns_options.hpp"
#include "options.hpp"

namespace muon {
namespace optim {

/// How a key of set_option takes its value.
enum class OptionType {
  number,   ///< a finite number in a range
  flag,     ///< 0 or 1
  integer,  ///< a whole number in a range
  name,     ///< one of a list of names
  function  ///< a C++ function: a member only, not a set_option key
};

/// When and under which key a row is stored in a checkpoint.
struct Stored {
  enum When : std::uint8_t {
    always,         ///< in every group
    unless_default  ///< only when not the default (files of default groups stay readable
                    ///< by the readers from before the option)
  };
  When when = always;
  /// The key in the file; nullptr: the option's key.
  const char* key = nullptr;
  /// Also stored at its default in a group for which this holds...
  bool (*also_in)(const GroupOptions&) = nullptr;
  /// ...said in words ("an AdaMuon group"), for the documentation.
  const char* also_in_words = nullptr;
};

/// The checkpoint rules the rows use.
namespace stored {
inline bool adamuon_group(const GroupOptions& g) { return g.muon.variant == MuonVariant::adamuon; }
constexpr Stored always{Stored::always, nullptr, nullptr, nullptr};
constexpr Stored unless_default{Stored::unless_default, nullptr, nullptr, nullptr};
/// AdaMuon's defaults changed (sign form, beta2 0.95): an AdaMuon group
/// always stores them, so that their absence marks a file from before.
constexpr Stored unless_default_or_adamuon{Stored::unless_default, nullptr, &adamuon_group,
                                           "an AdaMuon group"};
constexpr Stored always_as(const char* key) { return {Stored::always, key, nullptr, nullptr}; }
}  // namespace stored

/// What a row's value may be: a number's range, or the checks of the
/// other types.
namespace valid {
struct Flag {};      ///< 0 or 1
struct Named {};     ///< one of the type's names (an enum's name list, the built-in schedules)
struct Function {};  ///< anything (a function cannot be checked)
constexpr Flag flag{};
constexpr Named named{};
constexpr Function function{};
constexpr detail::Range at_least(double lo) { return detail::Range::at_least(lo); }
constexpr detail::Range above(double lo) { return detail::Range::above(lo); }
/// [0, 1): momentum and the second-moment decays.
constexpr detail::Range unit = detail::Range::from_until(0, 1);
}  // namespace valid

// clang-format off
/// The option table. One row per option of a group:
///   X(key, part, member, type, check, stored, doc)
/// key     set_option's key, muon::torch::MuonOptions' accessor, the field of
///         every error about it, the distributed check's line
/// part    muon (MuonGroupOptions) or adamw (AdamWOptions) of GroupOptions
/// member  the member of that part; its initializer is the default
/// type    the member's type (see Codec)
/// check   a number's range (valid::at_least/above/unit, kNsStepsRange, ...),
///         or valid::flag/named/function for the other types
/// stored  stored::always, stored::unless_default, ...: when it is written
///         to a checkpoint, under which key
/// doc     the meaning, for docs/optimizer.md (markdown, no '|')
/// (check and stored are read in namespace muon::optim.)
/// Rows are in the order a checkpoint stores them. The schedule has one key,
/// ns_coefficients (torch.optim.Muon's word; its built-in names by
/// set_option, any Schedule as a member); a checkpoint stores it whole under
/// ns_schedule, which is what every file since version 2 holds.
#define MUON_GROUP_OPTIONS(X)                                                                      \
  X(lr, muon, lr, double, valid::at_least(0), stored::always,                                      \
    "Muon's learning rate, before the shape adjustment")                                           \
  X(weight_decay, muon, weight_decay, double, valid::at_least(0), stored::always,                  \
    "λ: p ← p(1 − lr·λ) with the **unadjusted** lr, before the update (in the default "            \
    "`weight_decay_form`)")                                                                        \
  X(momentum, muon, momentum, double, valid::unit, stored::always, "μ")                            \
  X(nesterov, muon, nesterov, bool, valid::flag, stored::always,                                   \
    "Newton–Schulz input `lerp(g, m, μ)` (Nesterov's look-ahead) rather than m")                   \
  X(cautious_weight_decay, muon, cautious_weight_decay, bool, valid::flag, stored::always,         \
    "decay only where update and parameter share a sign (arXiv 2510.12402)")                       \
  X(adjust_lr_fn, muon, adjust_lr_fn, ::muon::LrAdjustFn, valid::function, stored::always,         \
    "your own rule `(lr, out, in) → lr`, replacing `adjust_lr` (a member and a muon::torch "       \
    "option, not a `set_option` key); a checkpoint stores only that the group had one, and a "     \
    "load needs one set on that group")                                                            \
  X(ns_steps, muon, ns.steps, int, kNsStepsRange, stored::always, "Newton–Schulz steps")           \
  X(ns_eps, muon, ns.eps, double, kNsEpsRange, stored::always,                                     \
    "eps of the normalization (see `ns_eps_mode`)")                                                \
  X(adamw_lr, adamw, lr, double, valid::at_least(0), stored::always, "AdamW's learning rate")      \
  X(adamw_beta1, adamw, beta1, double, valid::unit, stored::always, "AdamW's first-moment decay")  \
  X(adamw_beta2, adamw, beta2, double, valid::unit, stored::always, "AdamW's second-moment decay") \
  X(adamw_eps, adamw, eps, double, valid::above(0), stored::always,                                \
    "added to AdamW's bias-corrected RMS (an eps that underflows the compute type becomes its "    \
    "smallest normal number)")                                                                     \
  X(adamw_weight_decay, adamw, weight_decay, double, valid::at_least(0), stored::always,           \
    "AdamW's decoupled weight decay, times the AdamW lr")                                          \
  X(normuon_beta2, muon, normuon_beta2, double, valid::unit, stored::unless_default,               \
    "NorMuon's second-moment decay")                                                               \
  X(normuon_eps, muon, normuon_eps, double, valid::above(0), stored::unless_default,               \
    "NorMuon's floor of V under the square root")                                                  \
  X(adamuon_beta2, muon, adamuon_beta2, double, valid::unit, stored::unless_default_or_adamuon,    \
    "AdaMuon's second-moment decay (the authors' code uses the momentum; the plain form's "        \
    "paper value was 0.999)")                                                                      \
  X(adamuon_eps, muon, adamuon_eps, double, valid::above(0), stored::unless_default,               \
    "added to √V by AdaMuon (to the bias-corrected √V̂ in the plain form)")                        \
  X(variant, muon, variant, ::muon::MuonVariant, valid::named, stored::unless_default,             \
    "what is done with the Newton–Schulz output ([muon_family.md](muon_family.md)); a change "     \
    "gives the group's Muon parameters the new variant's state, zeroed")                           \
  X(adamuon_form, muon, adamuon_form, ::muon::AdaMuonForm, valid::named,                           \
    stored::unless_default_or_adamuon,                                                             \
    "`sign`: Newton–Schulz of sign(X), V without bias correction (the AdaMuon authors' code); "    \
    "`plain`: Newton–Schulz of X, V bias-corrected (the paper's first version; AdaMuon before "    \
    "this option: an AdaMuon group in a file without this key loads as `plain`, with "             \
    "`adamuon_beta2` 0.999 unless the file gives one) ([family/adamuon.md](family/adamuon.md))")   \
  X(ns_normalization, muon, ns.normalization, ::muon::NsNormalization, valid::named,               \
    stored::unless_default,                                                                        \
    "`frobenius`: X / (d‖X‖); `aol`: Turbo-Muon's AOL rescaling, pair it with `ns_steps` 4 "       \
    "([family/schedules.md](family/schedules.md#turbo-muon-aol-normalization))")                   \
  X(ns_norm_divisor, muon, ns.norm_divisor, std::optional<double>, kNormDivisorRange,              \
    stored::unless_default,                                                                        \
    "d in X / (d‖X‖ + eps); unset: the schedule's own (1.01 for Polar Express, else 1); the "      \
    "iteration must not diverge under it")                                                         \
  X(lr_scale, muon, lr_scale, double, valid::above(0), stored::unless_default,                     \
    "an extra factor on every block's shape-adjusted lr (the decay keeps the unadjusted lr)")      \
  X(weight_decay_form, muon, weight_decay_form, ::muon::WeightDecayForm, valid::named,             \
    stored::unless_default,                                                                        \
    "`decoupled` p(1 − ηλ) (torch, AdamW: arXiv 1711.05101); `independent` p(1 − s_t·λ), s_t "     \
    "the lr schedule's factor, not the lr's value (Wortsman et al., arXiv 2309.14322; λ is "       \
    "then per step, ~1e-4); `palm` p(1 − η²λ) (PaLM, arXiv 2204.02311); `l2` λp added to the "     \
    "gradient before the momentum, no decay of p "                                                 \
    "([family/weight_decay.md](family/weight_decay.md))")                                          \
  X(adjust_lr, muon, adjust_lr, ::muon::LrAdjust, valid::named, stored::always,                    \
    "the lr by shape (A = out, B = in): `original` √max(1, A/B); `match_rms_adamw` "               \
    "0.2·√max(A, B); `spectral` (alias `spectral_unclamped`) √(A/B); `none`. Setting it drops "    \
    "a user `adjust_lr_fn`")                                                                       \
  X(momentum_kind, muon, momentum_kind, ::muon::MomentumKind, valid::named, stored::always,        \
    "`ema` m ← lerp(m, g, 1−μ) (torch); `sum` m ← μm + g (Moonlight, Dion)")                       \
  X(ns_eps_mode, muon, ns.eps_mode, ::muon::EpsMode, valid::named, stored::always,                 \
    "`max`: X / max(d‖X‖, eps) (torch); `add`: X / (d‖X‖ + eps) (reference Muon)")                 \
  X(ns_method, muon, ns.method, ::muon::NsMethod, valid::named, stored::always,                    \
    "`automatic` (by aspect ratio), `standard`, `gram` (Gram Newton–Schulz; CPU only)")            \
  X(ns_coefficients, muon, ns.schedule, ::muon::Schedule, valid::named,                            \
    stored::always_as("ns_schedule"),                                                              \
    "the schedule (a, b, c per step; [family/schedules.md](family/schedules.md)): "                \
    "`deepseek_v4` wants 10 steps, `turbo_muon` 4 with `ns_normalization` `aol`, `cans` 9; "       \
    "the steps are not changed. Any `Schedule` as a member. Stored whole (name, divisor, rows) "   \
    "under the checkpoint key `ns_schedule`, with `ns_schedule_cycle` 1 after it when its rows "   \
    "cycle")
// clang-format on

/// One type per row, named by its key (option::lr, option::ns_steps, ...):
/// what the code that handles options by key is generic over.
namespace option {
#define MUON_OPTION_ROW_TYPE(KEY, PART, MEMBER, TYPE, CHECK, STORED, DOC) \
  struct KEY {                                                            \
    using type = TYPE;                                                    \
    using Part = decltype(GroupOptions::PART);                            \
    static constexpr const char* key = #KEY;                              \
    static constexpr const char* member = #PART "." #MEMBER;              \
    static constexpr const char* doc = DOC;                               \
    static constexpr auto check = CHECK;                                  \
    static constexpr Stored stored = STORED;                              \
    static TYPE& in(Part& p) { return p.MEMBER; }                         \
    static const TYPE& in(const Part& p) { return p.MEMBER; }             \
    static TYPE& of(GroupOptions& g) { return in(g.PART); }               \
    static const TYPE& of(const GroupOptions& g) { return in(g.PART); }   \
  };
MUON_GROUP_OPTIONS(MUON_OPTION_ROW_TYPE)
#undef MUON_OPTION_ROW_TYPE
}  // namespace option

/// Calls f(option::KEY{}) for every row, in the table's order.
template <class F>
void for_each_option(F&& f) {
#define MUON_OPTION_VISIT(KEY, ...) f(option::KEY{});
  MUON_GROUP_OPTIONS(MUON_OPTION_VISIT)
#undef MUON_OPTION_VISIT
}

/// The number of rows.
#define MUON_OPTION_COUNT_ONE(...) +1
inline constexpr std::size_t kOptionCount = 0 MUON_GROUP_OPTIONS(MUON_OPTION_COUNT_ONE);
#undef MUON_OPTION_COUNT_ONE

// ---- what each type of value does -------------------------------------------------

namespace keys {
[[noreturn]] inline void wrong_type(const char* key, OptionType type, const std::string& values) {
  const bool named = type == OptionType::name;
  detail::fail(key, std::string("takes ") + (named ? "a name" : "a number") + " (" + values +
                        "), not " + (named ? "a number" : "a string"));
}
}  // namespace keys

/// Codec<T>: how a value of type T is checked, set by key (set_number for
/// the number types, set_name for the named ones), set as a muon::torch
/// option (assign, from an Argument), described ("values": its range or
/// names) and written as text (exactly: the distributed check compares
/// these texts).
template <class T, class Enable = void>
struct Codec;

template <>
struct Codec<double> {
  static constexpr OptionType type = OptionType::number;
  using Argument = double;
  static void check(const char* key, double v, const detail::Range& range) {
    if (!range.contains(v)) range.check(key, v);
  }
  static std::string values(const detail::Range& range) { return range.text(); }
  static void set_number(const char*, double& field, double v, const detail::Range&) { field = v; }
  static void assign(const char*, double& field, double v, const detail::Range&) { field = v; }
  static std::string text(double v) { return detail::number_text(v); }
  static bool same(double a, double b) { return a == b; }
};

template <>
struct Codec<bool> {
  static constexpr OptionType type = OptionType::flag;
  using Argument = bool;
  static void check(const char*, bool, valid::Flag) {}
  static std::string values(valid::Flag) { return "0 or 1"; }
  static void set_number(const char* key, bool& field, double v, valid::Flag) {
    if (!(v == 0.0 || v == 1.0)) detail::fail(key, "must be 0 or 1, got " + detail::number_text(v));
    field = v == 1.0;
  }
  static void assign(const char*, bool& field, bool v, valid::Flag) { field = v; }
  static std::string text(bool v) { return v ? "1" : "0"; }
  static bool same(bool a, bool b) { return a == b; }
};

/// A whole number (ns_steps): checked as a number before it is converted.
template <>
struct Codec<int> {
  static constexpr OptionType type = OptionType::integer;
  /// muon::torch's setters take std::int64_t (libtorch's integers).
  using Argument = std::int64_t;
  static void check(const char* key, int v, const detail::Range& range) {
    if (!range.contains(v)) range.check(key, v);
  }
  static std::string values(const detail::Range& range) { return range.text(); }
  static void set_number(const char* key, int& field, double v, const detail::Range& range) {
    range.check(key, v);  // whole and in range before the conversion
    field = static_cast<int>(v);
  }
  static void assign(const char* key, int& field, std::int64_t v, const detail::Range& range) {
    if (v < std::numeric_limits<int>::min() || v > std::numeric_limits<int>::max())
      detail::fail(key, "must be an integer " + range.text() + ", got " + std::to_string(v));
    field = static_cast<int>(v);
  }
  static std::string text(int v) { return std::to_string(v); }
  static bool same(int a, int b) { return a == b; }
};

/// A number that may be unset (ns_norm_divisor: then the schedule's own).
template <>
struct Codec<std::optional<double>> {
  static constexpr OptionType type = OptionType::number;
  using Argument = std::optional<double>;
  static void check(const char* key, const std::optional<double>& v, const detail::Range& range) {
    if (v && !range.contains(*v)) range.check(key, *v);
  }
  static std::string values(const detail::Range& range) { return range.text(); }
  static void set_number(const char*, std::optional<double>& field, double v,
                         const detail::Range&) {
    field = v;
  }
  static void assign(const char*, std::optional<double>& field, const std::optional<double>& v,
                     const detail::Range&) {
    field = v;
  }
  static std::string text(const std::optional<double>& v) {
    return v ? detail::number_text(*v) : "unset";
  }
  static bool same(const std::optional<double>& a, const std::optional<double>& b) {
    return a == b;
  }
};

/// An enum: one of its names (its detail::Names list).
template <class E>
struct Codec<E, std::enable_if_t<std::is_enum<E>::value>> {
  static constexpr OptionType type = OptionType::name;
  using Argument = E;
  static void check(const char* key, E v, valid::Named) {
    if (!is_valid(v))
      detail::fail(key, "holds " + std::to_string(static_cast<long long>(v)) +
                            ", which is not one of " + detail::names_text<E>());
  }
  static std::string values(valid::Named) { return detail::names_text<E>(); }
  static std::vector<std::string> names() {
    std::vector<std::string> all;
    for (const auto& n : name_list(E{})) all.push_back(n.name);
    return all;
  }
  static void set_name(const char* key, const std::string& expected, E& field,
                       std::string_view name) {
    const std::optional<E> value = detail::from_name<E>(name);
    if (!value)
      detail::fail(key, "unknown value '" + std::string(name) + "' (expected " + expected + ")");
    field = *value;
  }
  static void assign(const char*, E& field, E v, valid::Named) { field = v; }
  static std::string text(E v) { return detail::name_of(v); }
  static bool same(E a, E b) { return a == b; }
};

/// A Newton–Schulz schedule: by key, a built-in one by name; as a member,
/// any. Its text holds every coefficient, exactly.
template <>
struct Codec<Schedule> {
  static constexpr OptionType type = OptionType::name;
  using Argument = Schedule;
  static void check(const char*, const Schedule&, valid::Named) {}  // checked when built
  static std::string values(valid::Named) { return Schedule::builtin_names_text(); }
  static std::vector<std::string> names() {
    std::vector<std::string> all;
    for (const Schedule::Builtin& b : Schedule::builtins()) all.push_back(b.name);
    return all;
  }
  static void set_name(const char* key, const std::string& expected, Schedule& field,
                       std::string_view name) {
    std::optional<Schedule> value = Schedule::from_name(name);
    if (!value)
      detail::fail(key, "unknown value '" + std::string(name) + "' (expected " + expected + ")");
    field = std::move(*value);
  }
  static void assign(const char*, Schedule& field, const Schedule& v, valid::Named) { field = v; }
  static std::string text(const Schedule& s) {
    std::string t = s.name() + " (divisor " + detail::number_text(s.norm_divisor()) +
                    (s.past_end() == Schedule::PastEnd::cycle ? ", cycling" : "") + "; rows";
    for (const Coefficients& c : s.rows())
      t += " " + detail::number_text(c.a) + " " + detail::number_text(c.b) + " " +
           detail::number_text(c.c) + ";";
    t.back() = ')';
    return t;
  }
  static bool same(const Schedule& a, const Schedule& b) { return text(a) == text(b); }
};

/// A user function: a member only; compared and stored as set or unset.
template <>
struct Codec<LrAdjustFn> {
  static constexpr OptionType type = OptionType::function;
  using Argument = LrAdjustFn;
  static void check(const char*, const LrAdjustFn&, valid::Function) {}
  static std::string values(valid::Function) { return "a function (lr, out, in) → lr"; }
  static void assign(const char*, LrAdjustFn& field, const LrAdjustFn& v, valid::Function) {
    field = v;
  }
  static std::string text(const LrAdjustFn& f) { return f ? "a user function" : "none"; }
  static bool same(const LrAdjustFn& a, const LrAdjustFn& b) { return bool(a) == bool(b); }
};

// ---- rows: the generic operations ---------------------------------------------------

/// What setting a row does besides its member: setting adjust_lr drops a
/// user adjust_lr_fn (as MuonGroupOptions::with_adjust_lr does), so the
/// named rule is the one that runs.
template <class Row>
void after_set(Row, GroupOptions&) {}
inline void after_set(option::adjust_lr, GroupOptions& g) { g.muon.adjust_lr_fn = nullptr; }

/// The key a row is stored under in a checkpoint.
template <class Row>
constexpr const char* stored_key(Row) {
  return Row::stored.key ? Row::stored.key : Row::key;
}

/// Whether a checkpoint of group `g` stores the row (its Stored rule).
template <class Row>
bool is_stored(Row, const GroupOptions& g) {
  if (Row::stored.when == Stored::always) return true;
  if (Row::stored.also_in && Row::stored.also_in(g)) return true;
  static const GroupOptions defaults;
  return !Codec<typename Row::type>::same(Row::of(g), Row::of(defaults));
}

/// The row's value in `g` as text, exactly (two groups whose texts agree on
/// every row run the same steps).
template <class Row>
std::string value_text(Row, const GroupOptions& g) {
  return Codec<typename Row::type>::text(Row::of(g));
}

/// Throws muon::Error naming the row's key when its value in `part` is out
/// of its range (or not one of its names).
template <class Row>
void check_row(Row, const typename Row::Part& part) {
  Codec<typename Row::type>::check(Row::key, Row::in(part), Row::check);
}

/// One row as data, for code that lists the options (the docs, the tests,
/// set_option's errors). The typed operations are the templates above.
struct OptionRow {
  const char* key;
  OptionType type;
  std::string values;              ///< the accepted range or names, as a user reads it
  std::vector<std::string> names;  ///< name rows: every accepted name (aliases included)
  detail::Range range;             ///< number and integer rows: the range
  const char* member;              ///< "muon.ns.steps": the part of GroupOptions, then the member
  std::string default_text;        ///< the default, as value_text writes it
  Stored stored;
  const char* stored_key;  ///< the key in a checkpoint
  const char* doc;
  std::string (*text)(const GroupOptions&);  ///< the value in a group, exactly (value_text)
};
/// The name set_option's documentation used for a row.
using OptionKey = OptionRow;

namespace detail_rows {
template <class Check>
detail::Range range_of(const Check&) {
  return detail::Range{};
}
inline detail::Range range_of(const detail::Range& r) { return r; }

template <class C, class = void>
struct HasNames : std::false_type {};
template <class C>
struct HasNames<C, std::void_t<decltype(C::names())>> : std::true_type {};

template <class Row>
OptionRow make(Row) {
  using C = Codec<typename Row::type>;
  OptionRow r{Row::key,
              C::type,
              C::values(Row::check),
              {},
              range_of(Row::check),
              Row::member,
              value_text(Row{}, GroupOptions{}),
              Row::stored,
              stored_key(Row{}),
              Row::doc,
              [](const GroupOptions& g) { return value_text(Row{}, g); }};
  if constexpr (HasNames<C>::value) r.names = C::names();
  return r;
}
}  // namespace detail_rows

/// Every row of the table, in its order (adjust_lr_fn included: a member,
/// not a key).
inline const std::vector<OptionRow>& option_table() {
  static const std::vector<OptionRow> rows = [] {
    std::vector<OptionRow> all;
    for_each_option([&all](auto row) { all.push_back(detail_rows::make(row)); });
    return all;
  }();
  return rows;
}

/// Every key set_option accepts: the rows but the function.
inline const std::vector<OptionKey>& option_keys() {
  static const std::vector<OptionKey> keys = [] {
    std::vector<OptionKey> settable;
    for (const OptionRow& r : option_table())
      if (r.type != OptionType::function) settable.push_back(r);
    return settable;
  }();
  return keys;
}

// ---- set_option: the string keys -------------------------------------------------

namespace keys {

// Levenshtein distance, for "did you mean".
inline std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diagonal = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = up;
    }
  }
  return row[b.size()];
}

inline const OptionKey* find_key(std::string_view key) {
  for (const OptionKey& k : option_keys())
    if (key == k.key) return &k;
  return nullptr;
}

// What other optimizers call our keys (torch.optim.Muon's own names among them).
inline const char* alias_of(std::string_view key) {
  static const std::pair<const char*, const char*> aliases[] = {{"learning_rate", "lr"},
                                                                {"wd", "weight_decay"},
                                                                {"mu", "momentum"},
                                                                {"beta", "momentum"},
                                                                {"eps", "ns_eps"},
                                                                {"adjust_lr_fn", "adjust_lr"},
                                                                {"beta1", "adamw_beta1"},
                                                                {"beta2", "adamw_beta2"},
                                                                {"steps", "ns_steps"},
                                                                {"coefficients", "ns_coefficients"},
                                                                {"ns_schedule", "ns_coefficients"},
                                                                {"nesterov_momentum", "nesterov"}};
  for (const auto& a : aliases)
    if (key == a.first) return a.second;
  return nullptr;
}

[[noreturn]] inline void unknown_key(std::string_view key) {
  const OptionKey* nearest = find_key(alias_of(key) ? alias_of(key) : "");
  std::size_t best = 0;
  std::string all;
  for (const OptionKey& k : option_keys()) {
    all += all.empty() ? "" : ", ";
    all += k.key;
    if (alias_of(key)) continue;
    const std::size_t d = edit_distance(key, k.key);
    // A key that contains the typed text, or is a few edits away, is the hint.
    const std::string_view name(k.key);
    const std::size_t score =
        (!key.empty() && (name.find(key) != name.npos || key.find(name) != key.npos)) ? 0 : d;
    if (!nearest || score < best) {
      nearest = &k;
      best = score;
    }
  }
  std::string message = "unknown key '" + std::string(key) + "'";
  if (nearest && best <= std::max<std::size_t>(3, key.size() / 3))
    message += " (did you mean '" + std::string(nearest->key) + "'?)";
  detail::fail("option", message + "; valid keys: " + all);
}

// The set_option key `key` (refused as unknown otherwise).
inline const OptionKey& settable(std::string_view key) {
  const OptionKey* k = find_key(key);
  if (!k) unknown_key(key);
  return *k;
}

}  // namespace keys

/// Sets `key` of `g` to a number. Throws muon::Error for an unknown key
/// (listing the valid ones, suggesting the nearest), a key that takes a name,
/// or a value out of range; `g` is then unchanged.
inline void set_option(GroupOptions& g, std::string_view key, double value) {
  const OptionKey& k = keys::settable(key);
  if (k.type == OptionType::name) keys::wrong_type(k.key, k.type, k.values);
  GroupOptions next = g;
  for_each_option([&](auto row) {
    using Row = decltype(row);
    using C = Codec<typename Row::type>;
    if constexpr (C::type != OptionType::name && C::type != OptionType::function)
      if (key == Row::key) {
        C::set_number(Row::key, Row::of(next), value, Row::check);
        after_set(row, next);
      }
  });
  next.validate();
  g = std::move(next);
}

/// Sets `key` of `g` to a name. Throws muon::Error for an unknown key, a key
/// that takes a number, or an unknown name (listing the names); `g` is then
/// unchanged.
inline void set_option(GroupOptions& g, std::string_view key, std::string_view value) {
  const OptionKey& k = keys::settable(key);
  if (k.type != OptionType::name) keys::wrong_type(k.key, k.type, k.values);
  GroupOptions next = g;
  for_each_option([&](auto row) {
    using Row = decltype(row);
    using C = Codec<typename Row::type>;
    if constexpr (C::type == OptionType::name)
      if (key == Row::key) {
        C::set_name(Row::key, k.values, Row::of(next), value);
        after_set(row, next);
      }
  });
  next.validate();
  g = std::move(next);
}

}  // namespace optim

// ---- validate(): each row's check, then the one check across rows ------------------

inline void MuonGroupOptions::validate() const {
  optim::for_each_option([this](auto row) {
    if constexpr (std::is_same<typename decltype(row)::Part, MuonGroupOptions>::value)
      optim::check_row(row, *this);
  });
  // Rows valid one by one: the schedule may still diverge under the divisor
  // and steps together. Named by the schedule's key.
  ns.check_growth("", optim::option::ns_coefficients::key);
}

inline void AdamWOptions::validate() const {
  optim::for_each_option([this](auto row) {
    if constexpr (std::is_same<typename decltype(row)::Part, AdamWOptions>::value)
      optim::check_row(row, *this);
  });
}

}  // namespace muon
