#include "parallel/files.h"

#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "parallel/error.h"

namespace ftune::files {
namespace {

[[noreturn]] void Fail(const char* op, const std::string& p, int err) {
  FT_THROW(IoError, "{} {}: {}", op, p, std::strerror(err));
}

std::string_view TrimTrailingSlashes(std::string_view p) {
  while (p.size() > 1 && p.back() == '/') p.remove_suffix(1);
  return p;
}

bool Stat(const std::string& p, struct stat* st) { return ::stat(p.c_str(), st) == 0; }

}  // namespace

std::string Join(std::string_view a, std::string_view b) {
  if (a.empty() || (!b.empty() && b.front() == '/')) return std::string(b);
  std::string out(a);
  if (out.back() != '/') out += '/';
  out += b;
  return out;
}

std::string Parent(std::string_view p) {
  p = TrimTrailingSlashes(p);
  const size_t slash = p.rfind('/');
  if (slash == std::string_view::npos) return "";
  if (slash == 0) return "/";
  return std::string(TrimTrailingSlashes(p.substr(0, slash)));
}

std::string BaseName(std::string_view p) {
  p = TrimTrailingSlashes(p);
  const size_t slash = p.rfind('/');
  return std::string(slash == std::string_view::npos ? p : p.substr(slash + 1));
}

std::string Absolute(std::string_view p) {
  if (!p.empty() && p.front() == '/') return std::string(p);
  std::vector<char> buf(4096);
  while (::getcwd(buf.data(), buf.size()) == nullptr) {
    if (errno != ERANGE) Fail("getcwd for", std::string(p), errno);
    buf.resize(buf.size() * 2);
  }
  return p.empty() ? std::string(buf.data()) : Join(buf.data(), p);
}

bool Exists(const std::string& p) {
  struct stat st;
  return Stat(p, &st);
}

bool IsDirectory(const std::string& p) {
  struct stat st;
  return Stat(p, &st) && S_ISDIR(st.st_mode);
}

bool IsFile(const std::string& p) {
  struct stat st;
  return Stat(p, &st) && S_ISREG(st.st_mode);
}

bool IsEmpty(const std::string& p) {
  struct stat st;
  if (!Stat(p, &st)) Fail("stat", p, errno);
  if (S_ISDIR(st.st_mode)) return ListDir(p).empty();
  return st.st_size == 0;
}

int64_t FileSize(const std::string& p) {
  struct stat st;
  if (!Stat(p, &st)) Fail("stat", p, errno);
  if (!S_ISREG(st.st_mode)) FT_THROW(IoError, "{}: not a regular file", p);
  return static_cast<int64_t>(st.st_size);
}

void CreateDirectories(const std::string& p) {
  if (p.empty() || IsDirectory(p)) return;
  const std::string parent = Parent(p);
  if (!parent.empty() && parent != p) CreateDirectories(parent);
  if (::mkdir(p.c_str(), 0777) != 0 && !(errno == EEXIST && IsDirectory(p))) {
    Fail("cannot create directory", p, errno);
  }
}

int64_t RemoveAll(const std::string& p) {
  struct stat st;
  if (::lstat(p.c_str(), &st) != 0) {
    if (errno == ENOENT || errno == ENOTDIR) return 0;  // nothing there (ENOTDIR: a file above)
    Fail("cannot remove", p, errno);
  }
  if (!S_ISDIR(st.st_mode)) {
    if (::unlink(p.c_str()) != 0) Fail("cannot remove", p, errno);
    return 1;
  }
  // nftw's callback has no user pointer: count and report through thread-local state.
  static thread_local int64_t removed;
  static thread_local int error;
  static thread_local std::string failed;
  removed = 0;
  error = 0;
  failed.clear();
  auto remove_one = [](const char* path, const struct stat*, int, struct FTW*) -> int {
    if (::remove(path) != 0) {
      error = errno;
      failed = path;
      return 1;  // stop the walk
    }
    ++removed;
    return 0;
  };
  // FTW_DEPTH: children before their directory; FTW_PHYS: links removed, not followed.
  if (::nftw(p.c_str(), remove_one, 64, FTW_DEPTH | FTW_PHYS) != 0) {
    Fail("cannot remove", failed.empty() ? p : failed, error ? error : errno);
  }
  return removed;
}

bool Remove(const std::string& p) {
  if (::remove(p.c_str()) == 0) return true;
  if (errno == ENOENT) return false;
  Fail("cannot remove", p, errno);
}

void RemoveQuietly(const std::string& p) noexcept { ::remove(p.c_str()); }

void RemoveAllQuietly(const std::string& p) noexcept {
  try {
    RemoveAll(p);
  } catch (...) {  // IoError, or no memory for its message: ignored by contract
  }
}

void Rename(const std::string& from, const std::string& to) {
  if (::rename(from.c_str(), to.c_str()) != 0) {
    FT_THROW(IoError, "cannot rename {} to {}: {}", from, to, std::strerror(errno));
  }
}

void CopyFile(const std::string& from, const std::string& to, bool overwrite) {
  const int in = ::open(from.c_str(), O_RDONLY | O_CLOEXEC);
  if (in < 0) Fail("cannot open", from, errno);
  const int flags = O_WRONLY | O_CREAT | O_CLOEXEC | (overwrite ? O_TRUNC : O_EXCL);
  const int out = ::open(to.c_str(), flags, 0644);
  if (out < 0) {
    const int err = errno;
    ::close(in);
    Fail("cannot create", to, err);
  }
  std::vector<char> buf(1 << 20);
  int err = 0;
  while (true) {
    const ssize_t n = ::read(in, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      err = errno;
      break;
    }
    if (n == 0) break;
    for (ssize_t done = 0; done < n;) {
      const ssize_t w = ::write(out, buf.data() + done, n - done);
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) {
        err = errno;
        break;
      }
      done += w;
    }
    if (err) break;
  }
  ::close(in);
  if (::close(out) != 0 && !err) err = errno;
  if (err) Fail(fmt::format("cannot copy {} to", from).c_str(), to, err);
}

void ResizeFile(const std::string& p, int64_t size) {
  if (::truncate(p.c_str(), static_cast<off_t>(size)) != 0) Fail("cannot resize", p, errno);
}

std::vector<std::string> ListDir(const std::string& p) {
  DIR* d = ::opendir(p.c_str());
  if (d == nullptr) Fail("cannot list directory", p, errno);
  std::vector<std::string> names;
  while (const dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    if (name != "." && name != "..") names.push_back(name);
  }
  ::closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

std::string TempDir() {
  const char* t = std::getenv("TMPDIR");
  return t != nullptr && *t != '\0' ? std::string(t) : std::string("/tmp");
}

}  // namespace ftune::files
