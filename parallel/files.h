// File-system operations on paths as strings, over POSIX calls.
//
// ftune does not use <filesystem>. The PyTorch wheel's libtorch.so exports its own build of
// std::filesystem's out-of-line functions; binaries linked against it bound
// std::filesystem::remove_all and friends to that copy and crashed (pytorch/pytorch#133437,
// whose fix was to stop using <filesystem>). tests/no_filesystem_test.sh checks that no ftune
// binary imports a std::filesystem symbol.
//
// Errors: functions documented to throw raise IoError naming the path and the system's reason;
// the predicates (Exists, IsDirectory, ...) answer false for anything they cannot stat.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace ftune::files {

// "a/b" (no doubled '/'); b itself when it is absolute or a is empty.
std::string Join(std::string_view a, std::string_view b);
// Everything before the last '/' ("a/b/c" -> "a/b", "c" -> "", "/c" -> "/"), trailing slashes
// ignored: std::filesystem::path::parent_path for the paths ftune builds.
std::string Parent(std::string_view p);
// The last component ("a/b/c.h5" -> "c.h5"), trailing slashes ignored.
std::string BaseName(std::string_view p);
// `p` made absolute against the current directory (not resolved: no symlinks followed).
std::string Absolute(std::string_view p);

bool Exists(const std::string& p);       // anything there, following symlinks
bool IsDirectory(const std::string& p);  // following symlinks
bool IsFile(const std::string& p);       // a regular file, following symlinks
// True for an empty directory or an empty regular file; IoError if `p` cannot be read.
bool IsEmpty(const std::string& p);
int64_t FileSize(const std::string& p);  // IoError if not a readable regular file

// Creates `p` and its missing parents (like mkdir -p); IoError if one cannot be made.
void CreateDirectories(const std::string& p);
// Removes `p` (a file, a link or a directory with everything under it, links not followed).
// Nothing there is not an error. Returns the number of entries removed; IoError on failure.
int64_t RemoveAll(const std::string& p);
// Removes a file or an empty directory; false if nothing was there. IoError on failure.
bool Remove(const std::string& p);
// Remove and RemoveAll for clean-up whose failure must not fail the caller (left-overs of a
// crashed run, a temporary on an error path): errors are ignored; what could not be removed stays.
void RemoveQuietly(const std::string& p) noexcept;
void RemoveAllQuietly(const std::string& p) noexcept;
// rename(2): atomic within a file system, replacing a file at `to`. IoError on failure.
void Rename(const std::string& from, const std::string& to);
// Copies a regular file's bytes (mode 0644), replacing `to` when `overwrite`. IoError on
// failure, or when `to` exists and !overwrite.
void CopyFile(const std::string& from, const std::string& to, bool overwrite);
// truncate(2). IoError on failure.
void ResizeFile(const std::string& p, int64_t size);
// The names in directory `p` ("." and ".." excluded), sorted. IoError if it cannot be listed.
std::vector<std::string> ListDir(const std::string& p);
// $TMPDIR, else /tmp.
std::string TempDir();

}  // namespace ftune::files
