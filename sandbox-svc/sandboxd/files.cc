// File operations beneath the workspace root. Every lookup starts at the root fd; the
// kernel (openat2 RESOLVE_BENEATH) or Walk() refuses to leave it. Operations on a final
// component (stat, mkdir, unlink, rename) open its parent beneath the root and then use
// the *at() call with that single name, so no further resolution can escape.
#include "sandbox-svc/sandboxd/files.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/posix.h"
#include "common/proto_time.h"
#include "common/status.h"

namespace parley::sandbox {
namespace {

constexpr int kMaxSymlinks = 40;
// Looks again at a component that changed type under us, per path (see Walk).
constexpr int kMaxRaceRetries = 16;
constexpr int kMaxRemoveDepth = 512;
constexpr size_t kMaxWalkEntries = 200'000;

absl::Status PathEscapeError(absl::string_view path) {
  absl::Status status = absl::PermissionDeniedError(
      absl::StrCat("path \"", path, "\" leaves the workspace through a symlink"));
  SetErrorInfo(status, "PATH_ESCAPE", {{"path", std::string(path)}});
  return status;
}

// The path kept changing while it was resolved; the caller may simply retry.
absl::Status RacedError(absl::string_view path) {
  return absl::UnavailableError(absl::StrCat("open \"", path, "\": raced with a rename"));
}

absl::Status Reasoned(absl::Status status, absl::string_view reason) {
  SetErrorInfo(status, reason);
  return status;
}

std::string Dirname(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

std::string Basename(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

std::string JoinRel(const std::string& dir, absl::string_view name) {
  return dir == "." ? std::string(name) : absl::StrCat(dir, "/", name);
}

bool Openat2Available() {
  struct open_how how {};
  how.flags = O_PATH | O_CLOEXEC;
  how.resolve = RESOLVE_BENEATH;
  int fd = static_cast<int>(::syscall(SYS_openat2, AT_FDCWD, ".", &how, sizeof(how)));
  if (fd >= 0) {
    ::close(fd);
    return true;
  }
  return errno != ENOSYS;
}

std::string RandomSuffix() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  return absl::StrCat(absl::Hex(rng(), absl::kZeroPad16));
}

std::vector<std::string> SplitComponents(absl::string_view path) {
  std::vector<std::string> parts;
  for (absl::string_view part : absl::StrSplit(path, '/', absl::SkipEmpty())) {
    if (part != ".") parts.emplace_back(part);
  }
  return parts;
}

}  // namespace

absl::Status ErrnoToStatus(int error, absl::string_view operation, absl::string_view path) {
  std::string message = absl::StrCat(operation, " \"", path, "\": ", std::strerror(error));
  switch (error) {
    case ENOENT:
      return absl::NotFoundError(message);
    case ENOTDIR:
      return Reasoned(absl::FailedPreconditionError(message), "NOT_A_DIRECTORY");
    case EISDIR:
      return Reasoned(absl::FailedPreconditionError(message), "NOT_A_FILE");
    case ENOTEMPTY:
      return Reasoned(absl::FailedPreconditionError(message), "DIRECTORY_NOT_EMPTY");
    case EEXIST:
      return absl::AlreadyExistsError(message);
    case EXDEV:
      return PathEscapeError(path);
    case EACCES:
    case EPERM:
    case EROFS:
      return absl::PermissionDeniedError(message);
    case EFBIG:
      return Reasoned(absl::ResourceExhaustedError(message), "FILE_TOO_LARGE");
    case ENOSPC:
    case EDQUOT:
      return Reasoned(absl::ResourceExhaustedError(message), "NO_SPACE");
    case ENAMETOOLONG:
      return InvalidArgumentError("path", message, "255 bytes per component");
    case ELOOP:
      return Reasoned(absl::FailedPreconditionError(message), "TOO_MANY_SYMLINKS");
    case EMFILE:
    case ENFILE:
    case ENOMEM:
      return absl::ResourceExhaustedError(message);
    default:
      return absl::InternalError(message);
  }
}

::parley::v1::FileInfo MakeFileInfo(const std::string& rel_path, const struct stat& st,
                                    const std::string& symlink_target) {
  ::parley::v1::FileInfo info;
  info.set_path(rel_path);
  if (S_ISREG(st.st_mode)) {
    info.set_type(::parley::v1::FILE_TYPE_REGULAR);
    info.set_size_bytes(static_cast<uint64_t>(st.st_size));
  } else if (S_ISDIR(st.st_mode)) {
    info.set_type(::parley::v1::FILE_TYPE_DIRECTORY);
  } else if (S_ISLNK(st.st_mode)) {
    info.set_type(::parley::v1::FILE_TYPE_SYMLINK);
    info.set_symlink_target(symlink_target);
  } else {
    info.set_type(::parley::v1::FILE_TYPE_OTHER);
  }
  info.set_mode(st.st_mode & 07777);
  *info.mutable_modify_time() = ToTimestamp(absl::TimeFromTimespec(st.st_mtim));
  return info;
}

// ---------------------------------------------------------------------------------
// FileWriter

FileWriter::FileWriter(UniqueFd dir, std::string name, std::string temp_name, UniqueFd fd,
                       std::string rel_path, uint32_t mode, bool set_mode, bool append)
    : dir_(std::move(dir)),
      name_(std::move(name)),
      temp_name_(std::move(temp_name)),
      fd_(std::move(fd)),
      rel_path_(std::move(rel_path)),
      mode_(mode),
      set_mode_(set_mode),
      append_(append) {}

FileWriter::~FileWriter() {
  if (!committed_ && !temp_name_.empty()) ::unlinkat(dir_.get(), temp_name_.c_str(), 0);
}

absl::Status FileWriter::Write(absl::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::write(fd_.get(), data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoToStatus(errno, "write", rel_path_);
    }
    bytes_written_ += static_cast<uint64_t>(n);
    data.remove_prefix(static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

absl::StatusOr<::parley::v1::FileInfo> FileWriter::Commit() {
  if (set_mode_ && ::fchmod(fd_.get(), mode_) != 0) return ErrnoToStatus(errno, "chmod", rel_path_);
  if (!append_) {
    if (::fsync(fd_.get()) != 0) return ErrnoToStatus(errno, "fsync", rel_path_);
    if (::renameat(dir_.get(), temp_name_.c_str(), dir_.get(), name_.c_str()) != 0) {
      return ErrnoToStatus(errno, "rename", rel_path_);
    }
  }
  committed_ = true;
  struct stat st {};
  if (::fstat(fd_.get(), &st) != 0) return ErrnoToStatus(errno, "stat", rel_path_);
  return MakeFileInfo(rel_path_, st);
}

// ---------------------------------------------------------------------------------
// Workspace

absl::StatusOr<std::unique_ptr<Workspace>> Workspace::Open(const std::string& root_path,
                                                           PathResolution resolution) {
  UniqueFd root(::open(root_path.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!root.valid()) {
    return absl::FailedPreconditionError(
        absl::StrCat("workspace root ", root_path, ": ", std::strerror(errno)));
  }
  bool use_openat2 = false;
  switch (resolution) {
    case PathResolution::kAuto:
      use_openat2 = Openat2Available();
      break;
    case PathResolution::kOpenat2:
      if (!Openat2Available()) {
        return absl::FailedPreconditionError("openat2 is not available on this kernel");
      }
      use_openat2 = true;
      break;
    case PathResolution::kWalk:
      break;
  }
  return std::unique_ptr<Workspace>(new Workspace(root_path, std::move(root), use_openat2));
}

absl::StatusOr<UniqueFd> Workspace::OpenBeneath(const std::string& path, int flags,
                                                mode_t mode) const {
  if (!use_openat2_) return Walk(path, flags, mode);
  struct open_how how {};
  how.flags = static_cast<uint64_t>(flags | O_CLOEXEC);
  how.mode = (flags & O_CREAT) ? mode : 0;
  how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
  for (int attempt = 0; attempt < 8; ++attempt) {
    int fd = static_cast<int>(::syscall(SYS_openat2, root_.get(), path.c_str(), &how, sizeof(how)));
    if (fd >= 0) return UniqueFd(fd);
    // EAGAIN: a concurrent rename made ".." resolution ambiguous; the kernel asks us to
    // retry rather than risk an escape.
    if (errno != EAGAIN && errno != EINTR) return ErrnoToStatus(errno, "open", path);
  }
  return RacedError(path);
}

absl::StatusOr<UniqueFd> Workspace::Walk(const std::string& path, int flags, mode_t mode) const {
  // The directories walked so far; ".." pops one and may never pop the root.
  std::vector<UniqueFd> stack;
  stack.emplace_back(::openat(root_.get(), ".", O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!stack.back().valid()) return ErrnoToStatus(errno, "open", ".");
  std::deque<std::string> pending;
  for (std::string& part : SplitComponents(path)) pending.push_back(std::move(part));
  if (pending.empty()) {
    int fd = ::openat(root_.get(), ".", (flags & ~O_NOFOLLOW) | O_CLOEXEC, mode);
    if (fd < 0) return ErrnoToStatus(errno, "open", path);
    return UniqueFd(fd);
  }
  const bool follow_final = (flags & O_NOFOLLOW) == 0;
  int symlinks = 0;
  // A component can change type between our look (fstatat) and our use of it (a
  // symlink swapped for a directory, or back). Every use is O_NOFOLLOW, so that is
  // never an escape; it is looked at again, a bounded number of times, so the answer
  // is what the path resolves to rather than a misleading error.
  int races = 0;
  auto look_again = [&](std::string& name) {
    if (++races > kMaxRaceRetries) return false;
    pending.push_front(std::move(name));
    return true;
  };
  while (!pending.empty()) {
    std::string name = std::move(pending.front());
    pending.pop_front();
    const bool last = pending.empty();
    if (name == "..") {
      if (stack.size() == 1) return PathEscapeError(path);
      stack.pop_back();
      continue;  // After the loop, the last directory reached is opened.
    }
    if (name == "." || name.empty()) continue;
    const int dir = stack.back().get();
    struct stat st {};
    bool exists = ::fstatat(dir, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0;
    if (!exists && errno != ENOENT) return ErrnoToStatus(errno, "open", path);
    if (exists && S_ISLNK(st.st_mode) && (!last || follow_final)) {
      if (++symlinks > kMaxSymlinks) return ErrnoToStatus(ELOOP, "open", path);
      char target[kMaxPathBytes + 1];
      ssize_t n = ::readlinkat(dir, name.c_str(), target, kMaxPathBytes);
      if (n < 0 && (errno == EINVAL || errno == ENOENT)) {  // No longer a symlink.
        --symlinks;
        if (look_again(name)) continue;
        return RacedError(path);
      }
      if (n < 0) return ErrnoToStatus(errno, "readlink", path);
      absl::string_view link(target, static_cast<size_t>(n));
      if (!link.empty() && link.front() == '/') return PathEscapeError(path);
      std::vector<std::string> parts = absl::StrSplit(link, '/', absl::SkipEmpty());
      if (parts.empty()) parts.push_back(".");
      for (auto it = parts.rbegin(); it != parts.rend(); ++it) pending.push_front(*it);
      continue;
    }
    if (last) {
      int fd = ::openat(dir, name.c_str(), flags | O_NOFOLLOW | O_CLOEXEC, mode);
      // ELOOP: a symlink appeared where we saw none, and the final one is followed.
      if (fd < 0 && errno == ELOOP && follow_final) {
        if (look_again(name)) continue;
        return RacedError(path);
      }
      if (fd < 0) return ErrnoToStatus(errno, "open", path);
      return UniqueFd(fd);
    }
    if (!exists) return ErrnoToStatus(ENOENT, "open", path);
    UniqueFd next(::openat(dir, name.c_str(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    // ENOTDIR or ELOOP: the directory we saw is now a symlink (or gone: ENOENT).
    if (!next.valid() && (errno == ENOTDIR || errno == ELOOP || errno == ENOENT)) {
      if (look_again(name)) continue;
      return RacedError(path);
    }
    if (!next.valid()) return ErrnoToStatus(errno, "open", path);
    stack.push_back(std::move(next));
  }
  int fd = ::openat(stack.back().get(), ".", (flags & ~O_NOFOLLOW) | O_CLOEXEC, mode);
  if (fd < 0) return ErrnoToStatus(errno, "open", path);
  return UniqueFd(fd);
}

absl::StatusOr<std::pair<UniqueFd, std::string>> Workspace::OpenParent(
    const std::string& path) const {
  absl::StatusOr<UniqueFd> parent = OpenBeneath(Dirname(path), O_PATH | O_DIRECTORY);
  if (!parent.ok()) return parent.status();
  return std::make_pair(*std::move(parent), Basename(path));
}

absl::StatusOr<::parley::v1::FileInfo> Workspace::Stat(absl::string_view raw_path) const {
  const std::string path = NormalizePath(raw_path);
  struct stat st {};
  if (path == ".") {
    if (::fstat(root_.get(), &st) != 0) return ErrnoToStatus(errno, "stat", path);
    return MakeFileInfo(path, st);
  }
  auto parent = OpenParent(path);
  if (!parent.ok()) return parent.status();
  const auto& [dir, name] = *parent;
  if (::fstatat(dir.get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
    return ErrnoToStatus(errno, "stat", path);
  }
  std::string target;
  if (S_ISLNK(st.st_mode)) {
    char buffer[kMaxPathBytes + 1];
    ssize_t n = ::readlinkat(dir.get(), name.c_str(), buffer, kMaxPathBytes);
    if (n > 0) target.assign(buffer, static_cast<size_t>(n));
  }
  return MakeFileInfo(path, st, target);
}

absl::Status Workspace::ListInto(int dir_fd, const std::string& rel, bool recursive,
                                 Listing& listing) const {
  absl::StatusOr<std::vector<std::string>> listed =
      ListDirNames(dir_fd, [&](int error) { return ErrnoToStatus(error, "list", rel); });
  if (!listed.ok()) return listed.status();
  std::vector<std::string> names = *std::move(listed);
  std::sort(names.begin(), names.end());
  for (const std::string& name : names) {
    if (listing.entries.size() >= kMaxWalkEntries) {
      listing.truncated = true;
      return absl::OkStatus();
    }
    struct stat st {};
    if (::fstatat(dir_fd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) continue;  // Raced.
    std::string child = JoinRel(rel, name);
    std::string target;
    if (S_ISLNK(st.st_mode)) {
      char buffer[kMaxPathBytes + 1];
      ssize_t n = ::readlinkat(dir_fd, name.c_str(), buffer, kMaxPathBytes);
      if (n > 0) target.assign(buffer, static_cast<size_t>(n));
    }
    listing.entries.push_back(MakeFileInfo(child, st, target));
    if (recursive && S_ISDIR(st.st_mode)) {
      UniqueFd sub(::openat(dir_fd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
      if (!sub.valid()) continue;
      absl::Status status = ListInto(sub.get(), child, recursive, listing);
      if (!status.ok()) return status;
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<Workspace::Listing> Workspace::List(absl::string_view raw_path, bool recursive,
                                                   uint32_t max_entries) const {
  const std::string path = NormalizePath(raw_path);
  absl::StatusOr<UniqueFd> dir = OpenBeneath(path, O_RDONLY | O_DIRECTORY);
  if (!dir.ok()) return dir.status();
  Listing listing;
  absl::Status status = ListInto(dir->get(), path, recursive, listing);
  if (!status.ok()) return status;
  // Depth-first order puts "a/b" before "a.txt"; the contract is plain path order.
  std::sort(listing.entries.begin(), listing.entries.end(),
            [](const auto& a, const auto& b) { return a.path() < b.path(); });
  if (listing.entries.size() > max_entries) {
    listing.entries.resize(max_entries);
    listing.truncated = true;
  }
  return listing;
}

absl::Status Workspace::MakeParents(const std::string& path) const {
  std::vector<std::string> parts = SplitComponents(path);
  std::string prefix = ".";
  for (const std::string& part : parts) {
    std::string next = JoinRel(prefix, part);
    absl::StatusOr<UniqueFd> existing = OpenBeneath(next, O_PATH | O_DIRECTORY);
    if (existing.ok()) {
      prefix = next;
      continue;
    }
    if (existing.status().code() != absl::StatusCode::kNotFound) return existing.status();
    absl::StatusOr<UniqueFd> parent = OpenBeneath(prefix, O_PATH | O_DIRECTORY);
    if (!parent.ok()) return parent.status();
    if (::mkdirat(parent->get(), part.c_str(), 0755) != 0 && errno != EEXIST) {
      return ErrnoToStatus(errno, "mkdir", next);
    }
    prefix = next;
  }
  return absl::OkStatus();
}

absl::StatusOr<::parley::v1::FileInfo> Workspace::MakeDir(absl::string_view raw_path, bool parents,
                                                          uint32_t mode) const {
  const std::string path = NormalizePath(raw_path);
  if (mode == 0) mode = 0755;
  if (path == ".") {
    if (!parents) return absl::AlreadyExistsError("the workspace root already exists");
    return Stat(path);
  }
  if (parents) {
    absl::Status status = MakeParents(Dirname(path));
    if (!status.ok()) return status;
  }
  auto parent = OpenParent(path);
  if (!parent.ok()) return parent.status();
  const auto& [dir, name] = *parent;
  if (::mkdirat(dir.get(), name.c_str(), mode) != 0) {
    int error = errno;
    if (error == EEXIST && parents && OpenBeneath(path, O_PATH | O_DIRECTORY).ok()) {
      return Stat(path);
    }
    if (error == EEXIST) {
      return absl::AlreadyExistsError(absl::StrCat("mkdir \"", path, "\": already exists"));
    }
    return ErrnoToStatus(error, "mkdir", path);
  }
  return Stat(path);
}

namespace {

// Removes `name` in `dir_fd` and everything below it, never following symlinks.
absl::Status RemoveTree(int dir_fd, const std::string& name, const std::string& rel, int depth) {
  if (depth > kMaxRemoveDepth) {
    return absl::FailedPreconditionError(
        absl::StrCat("remove \"", rel, "\": tree is deeper than ", kMaxRemoveDepth, " levels"));
  }
  UniqueFd fd(::openat(dir_fd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!fd.valid()) return ErrnoToStatus(errno, "remove", rel);
  absl::StatusOr<std::vector<std::string>> names =
      ListDirNames(fd.get(), [&](int error) { return ErrnoToStatus(error, "remove", rel); });
  if (!names.ok()) return names.status();
  for (const std::string& child : *names) {
    struct stat st {};
    if (::fstatat(fd.get(), child.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
    std::string child_rel = JoinRel(rel, child);
    if (S_ISDIR(st.st_mode)) {
      absl::Status status = RemoveTree(fd.get(), child, child_rel, depth + 1);
      if (!status.ok()) return status;
    } else if (::unlinkat(fd.get(), child.c_str(), 0) != 0 && errno != ENOENT) {
      return ErrnoToStatus(errno, "remove", child_rel);
    }
  }
  if (::unlinkat(dir_fd, name.c_str(), AT_REMOVEDIR) != 0 && errno != ENOENT) {
    return ErrnoToStatus(errno, "remove", rel);
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<bool> Workspace::Remove(absl::string_view raw_path, bool recursive,
                                       bool allow_missing) const {
  const std::string path = NormalizePath(raw_path);
  if (path == ".") return InvalidArgumentError("path", "cannot remove the workspace root");
  auto parent = OpenParent(path);
  if (!parent.ok()) {
    if (allow_missing && parent.status().code() == absl::StatusCode::kNotFound) return false;
    return parent.status();
  }
  const auto& [dir, name] = *parent;
  struct stat st {};
  if (::fstatat(dir.get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
    if (errno == ENOENT && allow_missing) return false;
    return ErrnoToStatus(errno, "remove", path);
  }
  if (S_ISDIR(st.st_mode)) {
    if (recursive) {
      absl::Status status = RemoveTree(dir.get(), name, path, 0);
      if (!status.ok()) return status;
      return true;
    }
    if (::unlinkat(dir.get(), name.c_str(), AT_REMOVEDIR) != 0) {
      return ErrnoToStatus(errno == EEXIST ? ENOTEMPTY : errno, "remove", path);
    }
    return true;
  }
  if (::unlinkat(dir.get(), name.c_str(), 0) != 0) return ErrnoToStatus(errno, "remove", path);
  return true;
}

absl::StatusOr<ReadableFile> Workspace::OpenForRead(absl::string_view raw_path) const {
  const std::string path = NormalizePath(raw_path);
  // O_NONBLOCK: opening a FIFO must not hang the daemon.
  absl::StatusOr<UniqueFd> fd = OpenBeneath(path, O_RDONLY | O_NONBLOCK);
  if (!fd.ok()) return fd.status();
  struct stat st {};
  if (::fstat(fd->get(), &st) != 0) return ErrnoToStatus(errno, "stat", path);
  if (!S_ISREG(st.st_mode)) {
    absl::Status status =
        absl::FailedPreconditionError(absl::StrCat("read \"", path, "\": not a regular file"));
    SetErrorInfo(status, "NOT_A_FILE");
    return status;
  }
  int flags = ::fcntl(fd->get(), F_GETFL);
  ::fcntl(fd->get(), F_SETFL, flags & ~O_NONBLOCK);
  return ReadableFile{*std::move(fd), MakeFileInfo(path, st)};
}

absl::StatusOr<std::string> Workspace::FollowFinalSymlinks(const std::string& start) const {
  std::string path = start;
  for (int hop = 0; hop <= kMaxSymlinks; ++hop) {
    auto parent = OpenParent(path);
    if (!parent.ok())
      return parent.status().code() == absl::StatusCode::kNotFound
                 ? absl::StatusOr<std::string>(path)
                 : parent.status();
    const auto& [dir, name] = *parent;
    struct stat st {};
    if (::fstatat(dir.get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISLNK(st.st_mode)) {
      return path;
    }
    char buffer[kMaxPathBytes + 1];
    ssize_t n = ::readlinkat(dir.get(), name.c_str(), buffer, kMaxPathBytes);
    if (n < 0) return ErrnoToStatus(errno, "readlink", path);
    absl::string_view link(buffer, static_cast<size_t>(n));
    if (!link.empty() && link.front() == '/') return PathEscapeError(start);
    std::vector<std::string> parts = SplitComponents(Dirname(path));
    for (absl::string_view part : absl::StrSplit(link, '/', absl::SkipEmpty())) {
      if (part == ".") continue;
      if (part == "..") {
        if (parts.empty()) return PathEscapeError(start);
        parts.pop_back();
        continue;
      }
      parts.emplace_back(part);
    }
    path = parts.empty() ? "." : absl::StrJoin(parts, "/");
  }
  return ErrnoToStatus(ELOOP, "open", start);
}

absl::StatusOr<std::unique_ptr<FileWriter>> Workspace::OpenForWrite(absl::string_view raw_path,
                                                                    uint32_t mode,
                                                                    bool create_parents,
                                                                    bool append) const {
  const std::string path = NormalizePath(raw_path);
  auto not_a_file = [&path] {
    absl::Status status =
        absl::FailedPreconditionError(absl::StrCat("write \"", path, "\": not a regular file"));
    SetErrorInfo(status, "NOT_A_FILE");
    return status;
  };
  if (path == ".") return not_a_file();
  absl::StatusOr<std::string> target = FollowFinalSymlinks(path);
  if (!target.ok()) return target.status();
  if (*target == ".") return not_a_file();
  if (create_parents) {
    absl::Status status = MakeParents(Dirname(*target));
    if (!status.ok()) return status;
  }
  auto parent = OpenParent(*target);
  if (!parent.ok()) return parent.status();
  auto& [dir, name] = *parent;
  struct stat st {};
  const bool exists = ::fstatat(dir.get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0;
  if (exists && !S_ISREG(st.st_mode)) return not_a_file();
  const bool set_mode = mode != 0;
  const uint32_t final_mode = set_mode ? (mode & 07777) : (exists ? (st.st_mode & 07777) : 0644);
  if (append) {
    UniqueFd fd(::openat(dir.get(), name.c_str(),
                         O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_CLOEXEC, final_mode));
    if (!fd.valid()) return ErrnoToStatus(errno, "open", path);
    return std::make_unique<FileWriter>(std::move(dir), name, "", std::move(fd), path, final_mode,
                                        set_mode, true);
  }
  std::string temp_name =
      absl::StrCat(".", name.substr(0, 200), ".parley-", RandomSuffix(), ".tmp");
  UniqueFd fd(
      ::openat(dir.get(), temp_name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  if (!fd.valid()) return ErrnoToStatus(errno, "open", path);
  return std::make_unique<FileWriter>(std::move(dir), name, std::move(temp_name), std::move(fd),
                                      path, final_mode, true, false);
}

absl::StatusOr<UniqueFd> Workspace::OpenDirectory(absl::string_view raw_path) const {
  return OpenBeneath(NormalizePath(raw_path), O_RDONLY | O_DIRECTORY);
}

}  // namespace parley::sandbox
