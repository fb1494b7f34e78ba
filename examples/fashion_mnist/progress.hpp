// SPDX-License-Identifier: MIT
#pragma once
/// \file progress.hpp
/// \brief A one-line progress bar on stderr, redrawn with a carriage return.
/// Silent when stderr is not a terminal, so logs and pipes stay clean.

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>

namespace fashion_mnist {

class ProgressBar {
 public:
  ProgressBar(std::string label, long total)
      : label_(std::move(label)),
        total_(total > 0 ? total : 1),
        enabled_(isatty(fileno(stderr)) != 0),
        start_(std::chrono::steady_clock::now()) {}

  ~ProgressBar() { finish(); }
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

  /// `done` of `total` units finished; `loss` is shown next to the bar, and
  /// `note` (a rate, say) after it.
  void update(long done, double loss, const std::string& note = "") {
    if (!enabled_) return;
    const auto now = std::chrono::steady_clock::now();
    // Redrawing on every batch would cost more terminal writes than it is
    // worth; ten times a second is smooth enough.
    if (done < total_ && now - last_draw_ < std::chrono::milliseconds(100)) return;
    last_draw_ = now;
    constexpr int width = 30;
    const int filled = static_cast<int>(width * done / total_);
    const double seconds = std::chrono::duration<double>(now - start_).count();
    std::string bar(static_cast<std::size_t>(filled), '#');
    bar.resize(width, '.');
    std::fprintf(stderr, "\r%s [%s] %3ld%%  loss %.4f  %.1fs %s", label_.c_str(), bar.c_str(),
                 100 * done / total_, loss, seconds, note.c_str());
    std::fflush(stderr);
    drawn_ = true;
  }

  /// Ends the line (once), so the next output starts on a fresh one.
  void finish() {
    if (enabled_ && drawn_) {
      std::fprintf(stderr, "\r\033[K");
      std::fflush(stderr);
    }
    drawn_ = false;
  }

 private:
  std::string label_;
  long total_;
  bool enabled_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point start_, last_draw_{};
};

}  // namespace fashion_mnist
