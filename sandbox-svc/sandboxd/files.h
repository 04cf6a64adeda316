// Workspace: every file operation of parley-sandboxd, confined beneath one root.
//
// Caller paths are relative, "/"-separated and checked in two stages (see
// sandboxd.proto): lexically first (contract/paths.h: absolute, "..", NUL, length), then
// during resolution, where every lookup starts at a directory fd of the root and uses
// openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS). The kernel refuses any step out of
// the root (a ".." inside a symlink, an absolute symlink) with EXDEV, which becomes
// PERMISSION_DENIED "PATH_ESCAPE". On kernels without openat2 a user-space walk does the
// same one component at a time with O_NOFOLLOW, resolving symlinks itself.
//
//   auto workspace = Workspace::Open("/workspace", PathResolution::kAuto);
//   absl::StatusOr< ::parley::v1::FileInfo> info = (*workspace)->Stat("src/main.py");
//
// Errors follow sandboxd.proto: NOT_FOUND, FAILED_PRECONDITION with "NOT_A_FILE",
// "NOT_A_DIRECTORY" or "DIRECTORY_NOT_EMPTY", RESOURCE_EXHAUSTED with "FILE_TOO_LARGE"
// or "NO_SPACE", PERMISSION_DENIED ("PATH_ESCAPE" for escapes), ALREADY_EXISTS.
// Thread-safe: the object holds only the root fd; each call opens its own fds.
#pragma once

#include <sys/stat.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/unique_fd.h"
#include "parley/v1/resources.pb.h"
#include "sandbox-svc/contract/paths.h"

namespace parley::sandbox {

// Maps an errno from an operation on `path` to a status with the reasons above.
absl::Status ErrnoToStatus(int error, absl::string_view operation, absl::string_view path);

enum class PathResolution {
  kAuto,     // openat2 when the kernel has it, else the walk.
  kOpenat2,  // openat2 only.
  kWalk,     // the user-space walk only (tests exercise it on any kernel).
};

// An open regular file to stream from.
struct ReadableFile {
  UniqueFd fd;
  ::parley::v1::FileInfo info;
};

// A write in progress. Without append the data goes to a temporary file next to the
// target that Commit() fsyncs and renames over it; destroying an uncommitted writer
// removes the temporary file, leaving the old content intact.
class FileWriter {
 public:
  FileWriter(UniqueFd dir, std::string name, std::string temp_name, UniqueFd fd,
             std::string rel_path, uint32_t mode, bool set_mode, bool append);
  ~FileWriter();
  FileWriter(const FileWriter&) = delete;
  FileWriter& operator=(const FileWriter&) = delete;

  absl::Status Write(absl::string_view data);
  // Makes the content visible and returns the file's info.
  absl::StatusOr<::parley::v1::FileInfo> Commit();
  uint64_t bytes_written() const { return bytes_written_; }

 private:
  UniqueFd dir_;
  std::string name_;
  std::string temp_name_;  // Empty when appending in place.
  UniqueFd fd_;
  std::string rel_path_;
  uint32_t mode_;
  bool set_mode_;
  bool append_;
  bool committed_ = false;
  uint64_t bytes_written_ = 0;
};

class Workspace {
 public:
  // Opens the root directory. FAILED_PRECONDITION when it is missing or kOpenat2 was
  // asked for on a kernel without it.
  static absl::StatusOr<std::unique_ptr<Workspace>> Open(const std::string& root_path,
                                                         PathResolution resolution);

  const std::string& root_path() const { return root_path_; }
  bool uses_openat2() const { return use_openat2_; }

  // lstat semantics: a final symlink is reported, not followed.
  absl::StatusOr<::parley::v1::FileInfo> Stat(absl::string_view path) const;

  struct Listing {
    std::vector<::parley::v1::FileInfo> entries;  // Lexicographic path order.
    bool truncated = false;
  };
  absl::StatusOr<Listing> List(absl::string_view path, bool recursive, uint32_t max_entries) const;

  absl::StatusOr<::parley::v1::FileInfo> MakeDir(absl::string_view path, bool parents,
                                                 uint32_t mode) const;

  // Returns false when nothing existed and allow_missing is set.
  absl::StatusOr<bool> Remove(absl::string_view path, bool recursive, bool allow_missing) const;

  absl::StatusOr<ReadableFile> OpenForRead(absl::string_view path) const;

  absl::StatusOr<std::unique_ptr<FileWriter>> OpenForWrite(absl::string_view path, uint32_t mode,
                                                           bool create_parents, bool append) const;

  // A directory fd (for an exec's cwd).
  absl::StatusOr<UniqueFd> OpenDirectory(absl::string_view path) const;

 private:
  Workspace(std::string root_path, UniqueFd root, bool use_openat2)
      : root_path_(std::move(root_path)), root_(std::move(root)), use_openat2_(use_openat2) {}

  // Opens `path` (normalized, "." for the root) beneath the root. `flags` are open(2)
  // flags; O_NOFOLLOW applies to the final component only.
  absl::StatusOr<UniqueFd> OpenBeneath(const std::string& path, int flags, mode_t mode = 0) const;
  // Opens the parent directory of `path` and returns it with the final component.
  absl::StatusOr<std::pair<UniqueFd, std::string>> OpenParent(const std::string& path) const;
  absl::StatusOr<UniqueFd> Walk(const std::string& path, int flags, mode_t mode) const;
  // Follows symlinks in the final component lexically (for writes through a link that
  // stays inside); returns the path that finally names a non-symlink or nothing.
  absl::StatusOr<std::string> FollowFinalSymlinks(const std::string& path) const;
  absl::Status MakeParents(const std::string& path) const;
  // Appends the entries under `dir_fd` (all of them, up to the walk's own bound); List()
  // sorts and cuts to max_entries, which needs the whole walk first.
  absl::Status ListInto(int dir_fd, const std::string& rel, bool recursive, Listing& listing) const;

  std::string root_path_;
  UniqueFd root_;
  bool use_openat2_;
};

// FileInfo from a stat result; `rel_path` is already normalized.
::parley::v1::FileInfo MakeFileInfo(const std::string& rel_path, const struct stat& st,
                                    const std::string& symlink_target = "");

}  // namespace parley::sandbox
