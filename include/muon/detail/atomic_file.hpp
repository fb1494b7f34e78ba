// SPDX-License-Identifier: MIT
#pragma once
/// \file detail/atomic_file.hpp
/// \brief Writing a file so that readers see the old content or the new,
/// never a mix: write a temporary file beside it, flush it to the disk, then
/// rename it over the target.

#include <atomic>
#include <cstdio>
#include <fstream>
#include <string>
#include <utility>

#include "../error.hpp"

#if defined(__unix__) || defined(__APPLE__)
#include <fcntl.h>
#include <unistd.h>
#define MUON_HAS_FSYNC 1
#endif

namespace muon {
namespace detail {

#ifdef MUON_HAS_FSYNC
// fsync of a path (a file, or a directory after a rename in it); best effort
// where the file system does not support it.
inline bool sync_path(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return false;
  const bool ok = ::fsync(fd) == 0;
  ::close(fd);
  return ok;
}
#endif

/// Writes `path` through `write(std::ostream&)` atomically: into a
/// temporary "<path>.tmp-<pid>-<n>" in the same directory, flushed and synced
/// to the disk, then renamed over `path` (atomic within a file system; on
/// POSIX the directory is synced too). On any failure, including an
/// exception from `write`, the temporary file is removed, `path` is untouched
/// and muon::Error (or `write`'s exception) propagates.
template <class Write>
void write_file_atomically(const std::string& path, Write&& write) {
  static std::atomic<unsigned> counter{0};
#ifdef MUON_HAS_FSYNC
  const std::string tmp =
      path + ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(counter.fetch_add(1));
#else
  const std::string tmp = path + ".tmp-" + std::to_string(counter.fetch_add(1));
#endif
  try {
    {
      std::ofstream os(tmp, std::ios::binary | std::ios::trunc);
      if (!os) fail("path", "cannot open '" + tmp + "' for writing");
      std::forward<Write>(write)(os);
      os.flush();
      if (!os) fail("path", "writing '" + tmp + "' failed");
      os.close();
      if (!os) fail("path", "closing '" + tmp + "' failed");
    }
#ifdef MUON_HAS_FSYNC
    if (!sync_path(tmp)) fail("path", "syncing '" + tmp + "' to the disk failed");
#endif
    if (std::rename(tmp.c_str(), path.c_str()) != 0)
      fail("path", "renaming '" + tmp + "' to '" + path + "' failed");
  } catch (...) {
    std::remove(tmp.c_str());
    throw;
  }
#ifdef MUON_HAS_FSYNC
  const std::size_t slash = path.find_last_of('/');
  sync_path(slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash)));
#endif
}

}  // namespace detail
}  // namespace muon
