// Low-level process and directory steps where every user needs exactly the same careful
// version (today the sandbox providers in parley-sandbox, and parley-sandboxd).
//
//   ResetSignalsForExec();  // in a child, before execve
//   absl::StatusOr<std::vector<std::string>> names = ListDirNames(dir_fd, [&](int error) {
//     return absl::InternalError(std::strerror(error));
//   });
#pragma once

#include <string>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace parley {

// Puts every catchable signal back to its default action and unblocks all signals, so a
// program started next inherits none of this process's handlers or mask. Uses only
// sigaction and the raw rt_sigprocmask system call: safe after fork() and in a clone
// child that shares the parent's memory (CLONE_VM), where glibc wrappers that take locks
// or touch other threads are not.
void ResetSignalsForExec();

// The names in the directory open at `dir_fd`, without "." and "..", in readdir order.
// `dir_fd` stays open and its offset untouched: a duplicate is read. On failure the
// error is whatever `error_for` makes of the failing call's errno.
absl::StatusOr<std::vector<std::string>> ListDirNames(
    int dir_fd, absl::FunctionRef<absl::Status(int error)> error_for);

}  // namespace parley
