// SPDX-License-Identifier: MIT
// The option table (optim/option_table.hpp), walked row by row: each row is
// set by its key, stored in a checkpoint by its rule and read back; values
// outside its range or names are refused naming it, by set_option,
// validate() and the checkpoint reader; every member of the option structs
// has a row; every enum's *_from_name keeps one contract; and the option
// reference in docs/optimizer.md is the table's. The values come from the
// rows themselves (option_samples.hpp), so a new row is walked as it is
// added. (muon::torch's accessors: test_torch; the distributed check:
// test_dist.)

#include <muon/checkpoint.hpp>
#include <muon/extern_templates.hpp>  // the heavy templates: compiled once
#include <muon/optimizer.hpp>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "catch.hpp"
#include "option_samples.hpp"
#include "test_support.hpp"

namespace {

using muon::GroupOptions;
using muon::optim::OptionRow;
using muon::optim::OptionType;
using muon_test::contains;
using muon_test::error_message;

const std::vector<OptionRow>& rows() { return muon::optim::option_table(); }

// A group saved by an optimizer with nothing but that group.
std::string saved(const GroupOptions& g) {
  muon::Optimizer<float> opt(g.muon, g.adamw);
  std::ostringstream os;
  opt.save(os);
  return os.str();
}

// What an optimizer of default options reads back from `bytes` (given a
// user lr rule when the file's group had one: a checkpoint cannot hold it).
GroupOptions loaded(const std::string& bytes, bool user_rule) {
  muon::MuonGroupOptions muon;
  if (user_rule) muon.adjust_lr_fn = muon_test::halved_lr;
  muon::Optimizer<float> opt(muon);
  std::istringstream is(bytes);
  opt.load(is);
  return GroupOptions{opt.muon_options(), opt.adamw_options()};
}

// Whether a checkpoint holds an option stored under `key`: its bytes, as the
// schema writes a key (u32 length, little-endian, then the key).
bool stores_key(const std::string& bytes, const std::string& key) {
  std::string entry(4, '\0');
  for (int i = 0; i < 4; ++i) entry[std::size_t(i)] = char((key.size() >> (8 * i)) & 0xFF);
  return bytes.find(entry + key) != std::string::npos;
}

// A checkpoint payload of one group, written by the table's writer without
// the optimizer's checks, read by the reader.
void read_one_group(const GroupOptions& g) {
  std::ostringstream os;
  muon::checkpoint::write(os, [&](muon::checkpoint::Writer& w) {
    w.str(muon::optim::kStateKind);
    w.u8(static_cast<std::uint8_t>(muon::checkpoint::Dtype::float32));
    w.u8(static_cast<std::uint8_t>(muon::checkpoint::Dtype::float32));
    muon::optim::state_io::write_head(w, 0, 1);
    muon::optim::state_io::write_group(w, g);
    muon::optim::state_io::write_param_count(w, 0);
  });
  std::istringstream is(os.str());
  (void)muon::optim::read_state(is);
}

}  // namespace

TEST_CASE("every row: set by its key, stored by its rule, loaded back; nothing else moves",
          "[option_table]") {
  const GroupOptions defaults;
  const std::string default_bytes = saved(defaults);
  GroupOptions adamuon;
  adamuon.muon = muon::MuonGroupOptions::adamuon();
  const std::string adamuon_bytes = saved(adamuon);
  REQUIRE(rows().size() == muon::optim::kOptionCount);
  for (const OptionRow& row : rows()) {
    INFO("option " << row.key);
    const GroupOptions changed = muon_test::other_value(defaults, row);
    CHECK(row.text(changed) != row.text(defaults));
    for (const OptionRow& other : rows())
      if (&other != &row) CHECK(other.text(changed) == other.text(defaults));
    // The checkpoint rule: a default group's file holds the rows stored
    // always (so the readers before a row still read default groups), the
    // others only once they differ, or in the group the rule names.
    const bool always = row.stored.when == muon::optim::Stored::always;
    CHECK(stores_key(default_bytes, row.stored_key) == always);
    if (row.stored.also_in) CHECK(stores_key(adamuon_bytes, row.stored_key));
    const std::string bytes = saved(changed);
    CHECK(stores_key(bytes, row.stored_key));
    CHECK(bytes != default_bytes);
    // Loaded into an optimizer of default options: every row as saved.
    const GroupOptions back = loaded(bytes, changed.muon.adjust_lr_fn != nullptr);
    for (const OptionRow& r : rows()) {
      INFO("reading back " << r.key);
      CHECK(r.text(back) == r.text(changed));
    }
  }
}

TEST_CASE("every key refuses values outside its range or names, naming it; nothing changes",
          "[option_table]") {
  for (const OptionRow& row : muon::optim::option_keys()) {
    for (const muon_test::BadValue& bad : muon_test::bad_values(row)) {
      GroupOptions g = muon_test::other_value(GroupOptions(), row);
      const std::string before = saved(g);
      const std::string message = error_message([&] {
        if (bad.is_name)
          muon::optim::set_option(g, row.key, bad.name);
        else
          muon::optim::set_option(g, row.key, bad.number);
      });
      INFO("option " << row.key << " = " << (bad.is_name ? bad.name : std::to_string(bad.number))
                     << ": " << message);
      CHECK(contains(message, std::string("muon: ") + row.key + ": "));
      CHECK(saved(g) == before);
      // An unknown name: the message lists every name the key takes.
      if (bad.is_name && row.type == OptionType::name)
        for (const std::string& name : row.names) CHECK(contains(message, name));
    }
  }
}

TEST_CASE("validate() and the checkpoint reader check each row as set_option does",
          "[option_table]") {
  // A member out of its range, set directly (not by its key): validate()
  // and the reader refuse it naming the key. Each number row gets a value
  // below its range; each enum row an unnamed value.
  std::size_t checked = 0;
  muon::optim::for_each_option([&](auto row) {
    using Row = decltype(row);
    using T = typename Row::type;
    GroupOptions g;
    if constexpr (std::is_same<T, double>::value || std::is_same<T, int>::value) {
      Row::of(g) = static_cast<T>(Row::check.lo - 1);
    } else if constexpr (std::is_same<T, std::optional<double>>::value) {
      Row::of(g) = Row::check.lo / 2;
    } else if constexpr (std::is_enum<T>::value) {
      Row::of(g) = static_cast<T>(97);
    } else {
      return;  // a flag, a schedule (checked when built) or a function: nothing out of range
    }
    INFO("option " << Row::key);
    ++checked;
    CHECK(contains(error_message([&] { g.validate(); }), std::string("muon: ") + Row::key + ": "));
    const std::string read = error_message([&] { read_one_group(g); });
    INFO(read);
    CHECK(contains(read, Row::key));
    CHECK(contains(read, "group 0"));
  });
  CHECK(checked >= 20);
  // The one check across rows: a schedule that diverges under its divisor
  // is named by the schedule's key.
  GroupOptions diverging;
  diverging.muon.ns.schedule = muon::Schedule({{3.4445, 4.7750, 2.0315}});
  CHECK(contains(error_message([&] { diverging.validate(); }), "muon: ns_coefficients: "));
  CHECK(contains(error_message([&] { read_one_group(diverging); }), "ns_coefficients: "));
}

TEST_CASE("the reader refuses an entry of another kind than its row's, naming the key",
          "[option_table]") {
  // A number row stored as a name, a name row as a number, the schedule as
  // a number: each refused naming the key (the value is not read as
  // another type's bytes).
  const std::pair<const char*, int> entries[] = {
      {"lr", 1}, {"momentum_kind", 0}, {"ns_schedule", 0}};
  for (const auto& [key, kind] : entries) {
    INFO(key << " as kind " << kind);
    std::ostringstream os;
    muon::checkpoint::write(os, [&, key = key, kind = kind](muon::checkpoint::Writer& w) {
      w.str(muon::optim::kStateKind);
      w.u8(static_cast<std::uint8_t>(muon::checkpoint::Dtype::float32));
      w.u8(static_cast<std::uint8_t>(muon::checkpoint::Dtype::float32));
      muon::optim::state_io::write_head(w, 0, 1);
      w.u32(1);
      w.str(key);
      w.u8(static_cast<std::uint8_t>(kind));
      if (kind == 0)
        w.f64(0.5);
      else
        w.str("ema");
      muon::optim::state_io::write_param_count(w, 0);
    });
    std::istringstream is(os.str());
    const std::string message = error_message([&] { (void)muon::optim::read_state(is); });
    INFO(message);
    CHECK(contains(message, std::string("option '") + key + "' has kind " + std::to_string(kind)));
  }
}

TEST_CASE("setting adjust_lr by its key drops a user adjust_lr_fn, as with_adjust_lr does",
          "[option_table]") {
  GroupOptions g;
  g.muon.adjust_lr_fn = muon_test::halved_lr;
  muon::optim::set_option(g, "adjust_lr", "spectral");
  CHECK(!g.muon.adjust_lr_fn);
  CHECK(g.muon.adjust_lr == muon::LrAdjust::spectral);
  // Any other key keeps it.
  g.muon.adjust_lr_fn = muon_test::halved_lr;
  muon::optim::set_option(g, "lr", 0.5);
  muon::optim::set_option(g, "momentum_kind", "sum");
  CHECK(g.muon.adjust_lr_fn);
  CHECK(!muon::MuonGroupOptions()
             .with_adjust_lr(muon::LrAdjustFn(muon_test::halved_lr))
             .with_adjust_lr(muon::LrAdjust::none)
             .adjust_lr_fn);
}

namespace {

// The number of members of an aggregate: the most initializers T{...}
// accepts (each member is a class or scalar that no initializer brace-elides
// into).
struct AnyMember {
  template <class T>
  operator T() const;  // NOLINT: implicit, declared only (unevaluated)
};
template <class T, class Seq, class = void>
struct BracesWith : std::false_type {};
template <class T, std::size_t... I>
struct BracesWith<T, std::index_sequence<I...>, std::void_t<decltype(T{(void(I), AnyMember())...})>>
    : std::true_type {};
template <class T, std::size_t N = 0>
constexpr std::size_t member_count() {
  if constexpr (BracesWith<T, std::make_index_sequence<N + 1>>::value)
    return member_count<T, N + 1>();
  else
    return N;
}

std::size_t rows_under(const std::string& prefix, const std::string& except = "\x01") {
  std::size_t n = 0;
  for (const OptionRow& r : rows()) {
    const std::string member(r.member);
    if (member.rfind(prefix, 0) == 0 && member.rfind(except, 0) != 0) ++n;
  }
  return n;
}

}  // namespace

TEST_CASE("every member of the option structs is a row of the table", "[option_table]") {
  static_assert(std::is_aggregate<muon::MuonGroupOptions>::value);
  static_assert(std::is_aggregate<muon::AdamWOptions>::value);
  // MuonGroupOptions: one row per member, and its `ns` through the rows
  // below it; AdamWOptions: one row per member.
  CHECK(rows_under("muon.", "muon.ns.") + 1 == member_count<muon::MuonGroupOptions>());
  CHECK(rows_under("adamw.") == member_count<muon::AdamWOptions>());
  // NewtonSchulzOptions has constructors (not an aggregate): its members,
  // counted here by hand, are schedule, steps, eps, eps_mode, norm_divisor,
  // method and normalization.
  CHECK(rows_under("muon.ns.") == 7);
  // Two groups that differ in one row store different bytes (above) and
  // differ in that row's text only; no two rows share a member or a key.
  for (std::size_t i = 0; i < rows().size(); ++i)
    for (std::size_t j = i + 1; j < rows().size(); ++j) {
      CHECK(std::string(rows()[i].member) != rows()[j].member);
      CHECK(std::string(rows()[i].key) != rows()[j].key);
      CHECK(std::string(rows()[i].stored_key) != rows()[j].stored_key);
    }
}

TEST_CASE("every enum's *_from_name reads its names back and nothing else", "[option_table]") {
  std::size_t enums = 0;
  muon::optim::for_each_option([&](auto row) {
    using T = typename decltype(row)::type;
    if constexpr (std::is_enum<T>::value) {
      INFO("option " << decltype(row)::key);
      ++enums;
      for (const muon::detail::Named<T>& n : name_list(T{})) {
        CHECK(muon::detail::from_name<T>(n.name) == n.value);
        CHECK(muon::is_valid(n.value));
        CHECK(muon::detail::from_name<T>(muon::detail::name_of(n.value)) == n.value);
      }
      for (const char* other : {"", "no_such_name", "Muon", " none"})
        CHECK(!muon::detail::from_name<T>(other));
      CHECK(!muon::is_valid(static_cast<T>(97)));
      CHECK(std::string(muon::detail::name_of(static_cast<T>(97))) == "invalid");
      const std::string message =
          error_message([] { (void)muon::parse_name<T>("no_such_name", "the_field"); });
      CHECK(contains(message, "muon: the_field: unknown name 'no_such_name' (expected " +
                                  muon::detail::names_text<T>() + ")"));
    }
  });
  CHECK(enums == 8);
  // The public names, one contract: nullopt for any other name.
  CHECK(muon::lr_adjust_from_name("spectral_unclamped") == muon::LrAdjust::spectral);
  CHECK(!muon::lr_adjust_from_name("Original"));
  CHECK(muon::momentum_kind_from_name("sum") == muon::MomentumKind::sum);
  CHECK(muon::weight_decay_form_from_name("l2") == muon::WeightDecayForm::l2);
  CHECK(muon::muon_variant_from_name("normuon") == muon::MuonVariant::normuon);
  CHECK(muon::adamuon_form_from_name("plain") == muon::AdaMuonForm::plain);
  CHECK(muon::eps_mode_from_name("add") == muon::EpsMode::add);
  CHECK(muon::ns_method_from_name("gram") == muon::NsMethod::gram);
  CHECK(muon::ns_normalization_from_name("aol") == muon::NsNormalization::aol);
  // Schedules: the built-in ones by name.
  for (const muon::Schedule::Builtin& b : muon::Schedule::builtins()) {
    const std::optional<muon::Schedule> s = muon::Schedule::from_name(b.name);
    REQUIRE(s);
    CHECK(s->name() == b.name);
  }
  CHECK(!muon::Schedule::from_name("newton"));
  CHECK(contains(error_message([] { (void)muon::Schedule::by_name("newton"); }),
                 "unknown name 'newton' (expected jordan, cubic,"));
}

// ---- the option reference in docs/optimizer.md ---------------------------------------

namespace {

const char* type_word(OptionType t) {
  switch (t) {
    case OptionType::number:
      return "number";
    case OptionType::flag:
      return "flag";
    case OptionType::integer:
      return "integer";
    case OptionType::name:
      return "name";
    case OptionType::function:
      return "function";
  }
  return "?";
}

std::string stored_words(const OptionRow& r) {
  std::string words =
      r.stored.when == muon::optim::Stored::always ? "always" : "when not the default";
  if (r.stored.also_in_words) words += std::string("; always in ") + r.stored.also_in_words;
  if (std::string(r.stored_key) != r.key) words += std::string(", as `") + r.stored_key + "`";
  return words;
}

// The markdown table of the option reference, from the option table.
std::string option_reference() {
  std::string md =
      "| key | type | default | valid | member of `GroupOptions` | in a checkpoint | meaning |\n"
      "|---|---|---|---|---|---|---|\n";
  for (const OptionRow& r : rows()) {
    std::string valid = r.values;
    if (r.type == OptionType::name) {
      valid.clear();
      for (std::size_t i = 0; i < r.names.size(); ++i)
        valid += (i ? ", `" : "`") + r.names[i] + "`";
    }
    const std::string default_text =
        r.type == OptionType::name ? "`" + r.default_text.substr(0, r.default_text.find(' ')) + "`"
                                   : r.default_text;
    md += "| `" + std::string(r.key) + "` | " + type_word(r.type) + " | " + default_text + " | " +
          valid + " | `" + r.member + "` | " + stored_words(r) + " | " + r.doc + " |\n";
  }
  return md;
}

const char* const kBegin =
    "<!-- option table: generated from include/muon/optim/option_table.hpp; to regenerate, "
    "MUON_WRITE_DOCS=1 test_option_table \"[docs]\" -->\n";
const char* const kEnd = "<!-- end of the option table -->\n";

}  // namespace

TEST_CASE("docs/optimizer.md's option reference is the option table", "[option_table][docs]") {
  const std::string path = std::string(MUON_SOURCE_DIR) + "/docs/optimizer.md";
  std::string doc;
  {
    std::ifstream is(path, std::ios::binary);
    REQUIRE(is.good());
    doc.assign(std::istreambuf_iterator<char>(is), {});
  }
  const std::size_t begin = doc.find(kBegin);
  const std::size_t end = doc.find(kEnd);
  REQUIRE(begin != std::string::npos);
  REQUIRE(end != std::string::npos);
  REQUIRE(begin < end);
  const std::size_t from = begin + std::string(kBegin).size();
  const std::string generated = option_reference();
  if (std::getenv("MUON_WRITE_DOCS") && doc.compare(from, end - from, generated) != 0) {
    doc.replace(from, end - from, generated);
    std::ofstream os(path, std::ios::binary);
    os << doc;
    WARN("rewrote the option table of " << path);
    return;
  }
  INFO(
      "docs/optimizer.md's option table differs from the option table; regenerate it with "
      "MUON_WRITE_DOCS=1 test_option_table \"[docs]\"");
  CHECK(doc.substr(from, end - from) == generated);
}
