// SPDX-License-Identifier: MIT
#pragma once
/// \file text.hpp
/// \brief The training text: Debian's `fortunes` package, byte by byte.
///
/// The files under /usr/share/games/fortunes/ hold short texts (quotations,
/// jokes, definitions) separated by lines that are a lone '%'. The loader
/// reads every regular file there (sorted by name, so the order is fixed),
/// leaving out the index files (*.dat), the *.u8 links (they point at the
/// same texts) and any folder (off/, the offensive set, when installed),
/// splits each file at its '%' lines and joins the fortunes with an empty
/// line between them. Every tenth fortune (counted over all files) goes to
/// the validation text, the rest to the training text: a fixed split, the
/// same on every machine with the same package version, drawn from the same
/// mix of files as the training text.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace transformer_lm {

/// The text files are missing: says where and how to get them.
class MissingText : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct Corpus {
  std::string train, val;  ///< raw bytes (the vocabulary is the 256 byte values)
  std::vector<std::string> files;
  std::size_t train_fortunes = 0, val_fortunes = 0;
};

inline std::string default_text_dir() {
  if (const char* dir = std::getenv("FORTUNES_DIR")) return dir;
  return "/usr/share/games/fortunes";
}

/// The fortunes of one file: the text between '%' lines, empty ones dropped.
inline std::vector<std::string> split_fortunes(const std::string& text) {
  std::vector<std::string> fortunes;
  std::string current, line;
  std::istringstream in(text);
  auto flush = [&] {
    if (current.find_first_not_of(" \t\r\n") != std::string::npos) fortunes.push_back(current);
    current.clear();
  };
  while (std::getline(in, line)) {
    if (line == "%" || line == "%\r")
      flush();
    else
      current += line + '\n';
  }
  flush();
  return fortunes;
}

/// Loads the corpus from `dir`; every `val_every`-th fortune is held out.
inline Corpus load_fortunes(const std::string& dir, int val_every = 10) {
  namespace fs = std::filesystem;
  const std::string hint =
      "\n  install them with: apt-get install fortunes"
      "\n  (or pass --text DIR / set FORTUNES_DIR to a folder of fortune files)";
  if (!fs::is_directory(dir)) throw MissingText("no folder " + dir + hint);
  std::vector<fs::path> paths;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const fs::path& p = entry.path();
    if (entry.is_symlink() || !entry.is_regular_file()) continue;  // *.u8 links, off/
    if (p.extension() == ".dat") continue;                         // strfile's index
    paths.push_back(p);
  }
  std::sort(paths.begin(), paths.end());
  if (paths.empty()) throw MissingText("no fortune files in " + dir + hint);

  Corpus c;
  std::size_t index = 0;
  for (const auto& p : paths) {
    std::ifstream in(p, std::ios::binary);
    if (!in) throw std::runtime_error("cannot read " + p.string());
    const std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
    c.files.push_back(p.filename().string());
    for (const auto& fortune : split_fortunes(text)) {
      const bool held_out = index++ % static_cast<std::size_t>(val_every) == 0;
      std::string& out = held_out ? c.val : c.train;
      (held_out ? c.val_fortunes : c.train_fortunes) += 1;
      out += fortune;
      out += '\n';  // an empty line between fortunes
    }
  }
  return c;
}

}  // namespace transformer_lm
