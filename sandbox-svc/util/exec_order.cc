// Exec plans and orders; see exec_order.h.
#include "sandbox-svc/util/exec_order.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/status/status.h"

namespace parley::sandbox {
namespace {

constexpr int kHighFdBase = 1000;

// The wire form: this header, then path, argv and env as NUL-terminated strings.
struct OrderHeader {
  uint32_t fd_count;
  uint32_t has_output;
  uint32_t argc;
  uint32_t envc;
  uint32_t set_uid, set_gid;
  uint32_t uid, gid;
  int32_t fds_to[kMaxExecFds];
};

}  // namespace

[[noreturn]] void ExecFailed(int error_fd) {
  int error = errno;
  (void)!::write(error_fd, &error, sizeof(error));
  ::_exit(127);
}

[[noreturn]] void ExecPlanned(const ExecPlan& plan) {
  // A launcher started by Spawn() leads its own session already (setsid would fail).
  if (::syscall(SYS_getsid, 0) != ::syscall(SYS_getpid) && ::syscall(SYS_setsid) < 0) {
    ExecFailed(plan.error_fd);
  }
  if (plan.set_gid) {
    if (::syscall(SYS_setgroups, 0, nullptr) != 0) ExecFailed(plan.error_fd);
    if (::syscall(SYS_setresgid, plan.gid, plan.gid, plan.gid) != 0) ExecFailed(plan.error_fd);
  }
  if (plan.set_uid && ::syscall(SYS_setresuid, plan.uid, plan.uid, plan.uid) != 0) {
    ExecFailed(plan.error_fd);
  }

  // Move every fd we need above the targets first, so no dup2 clobbers a source.
  int error_fd = ::fcntl(plan.error_fd, F_DUPFD_CLOEXEC, kHighFdBase);
  if (error_fd < 0) ::_exit(127);
  int next = error_fd + 1;
  int devnull = ::fcntl(plan.devnull_fd, F_DUPFD, next);
  next = devnull + 1;
  int output = plan.output_fd >= 0 ? ::fcntl(plan.output_fd, F_DUPFD, next) : devnull;
  if (output >= next) next = output + 1;
  int max_target = 2;
  int moved[kMaxExecFds];
  const size_t count = std::min(plan.fd_count, kMaxExecFds);
  for (size_t i = 0; i < count; ++i) {
    moved[i] = ::fcntl(plan.fds_from[i], F_DUPFD, next);
    if (moved[i] < 0) ExecFailed(error_fd);
    next = moved[i] + 1;
    max_target = std::max(max_target, plan.fds_to[i]);
  }
  ::dup2(devnull, 0);
  ::dup2(output, 1);
  ::dup2(output, 2);
  for (size_t i = 0; i < count; ++i) {
    if (::dup2(moved[i], plan.fds_to[i]) < 0) ExecFailed(error_fd);
  }
  if (error_fd > max_target + 1) {
    ::close_range(static_cast<unsigned>(max_target) + 1, static_cast<unsigned>(error_fd) - 1, 0);
  }
  ::close_range(static_cast<unsigned>(error_fd) + 1, ~0U, 0);
  ::execve(plan.path, plan.argv, plan.envp);
  ExecFailed(error_fd);
}

absl::StatusOr<std::string> EncodeExecOrder(const ExecOrder& order) {
  if (order.fds_to.size() > kMaxExecFds) return absl::InvalidArgumentError("too many fds to pass");
  if (order.argv.size() + order.env.size() + 1 > kMaxExecOrderStrings) {
    return absl::InvalidArgumentError("too many arguments for an exec order");
  }
  OrderHeader header{};
  header.fd_count = static_cast<uint32_t>(order.fds_to.size());
  header.has_output = order.has_output ? 1 : 0;
  header.argc = static_cast<uint32_t>(order.argv.size());
  header.envc = static_cast<uint32_t>(order.env.size());
  header.set_uid = order.uid.has_value();
  header.uid = order.uid.value_or(0);
  header.set_gid = order.gid.has_value();
  header.gid = order.gid.value_or(0);
  std::copy(order.fds_to.begin(), order.fds_to.end(), header.fds_to);
  std::string bytes(reinterpret_cast<const char*>(&header), sizeof(header));
  bytes.append(order.path).push_back('\0');
  for (const std::string& arg : order.argv) bytes.append(arg).push_back('\0');
  for (const std::string& var : order.env) bytes.append(var).push_back('\0');
  if (bytes.size() > kMaxExecOrderBytes) {
    return absl::InvalidArgumentError("arguments too long for an exec order");
  }
  return bytes;
}

[[noreturn]] void AwaitExecOrder(int control) {
  if (::fcntl(control, F_SETFD, FD_CLOEXEC) != 0) ExecFailed(control);
  char data[kMaxExecOrderBytes];
  alignas(cmsghdr) char control_data[CMSG_SPACE(sizeof(int) * (kMaxExecFds + 1))];
  iovec iov{data, sizeof(data)};
  msghdr message{};
  message.msg_iov = &iov;
  message.msg_iovlen = 1;
  message.msg_control = control_data;
  message.msg_controllen = sizeof(control_data);
  ssize_t n;
  do {
    n = ::recvmsg(control, &message, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n == 0) ::_exit(0);
  if (n < 0) ExecFailed(control);
  OrderHeader header;
  if (static_cast<size_t>(n) < sizeof(header) || (message.msg_flags & (MSG_TRUNC | MSG_CTRUNC))) {
    errno = E2BIG;
    ExecFailed(control);
  }
  std::memcpy(&header, data, sizeof(header));
  int received[kMaxExecFds + 1];
  size_t received_count = 0;
  for (cmsghdr* c = CMSG_FIRSTHDR(&message); c != nullptr; c = CMSG_NXTHDR(&message, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count && received_count <= kMaxExecFds; ++i) {
      std::memcpy(&received[received_count++], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
    }
  }
  if (header.fd_count > kMaxExecFds || received_count != header.fd_count + header.has_output ||
      header.argc >= kMaxExecOrderStrings || header.envc >= kMaxExecOrderStrings ||
      header.argc + header.envc + 1 > kMaxExecOrderStrings) {
    errno = EINVAL;
    ExecFailed(control);
  }
  // The strings: path, argv, env, each NUL-terminated, all inside what was received.
  char* strings[kMaxExecOrderStrings];
  const size_t wanted = 1 + header.argc + header.envc;
  char* cursor = data + sizeof(header);
  char* const end = data + n;
  for (size_t i = 0; i < wanted; ++i) {
    char* nul = static_cast<char*>(std::memchr(cursor, '\0', static_cast<size_t>(end - cursor)));
    if (nul == nullptr) {
      errno = EINVAL;
      ExecFailed(control);
    }
    strings[i] = cursor;
    cursor = nul + 1;
  }
  char* argv[kMaxExecOrderStrings + 1];
  char* envp[kMaxExecOrderStrings + 1];
  for (size_t i = 0; i < header.argc; ++i) argv[i] = strings[1 + i];
  argv[header.argc] = nullptr;
  for (size_t i = 0; i < header.envc; ++i) envp[i] = strings[1 + header.argc + i];
  envp[header.envc] = nullptr;

  ExecPlan plan;
  plan.path = strings[0];
  plan.argv = argv;
  plan.envp = envp;
  plan.fds_from = received;
  plan.fds_to = header.fds_to;
  plan.fd_count = header.fd_count;
  plan.output_fd = header.has_output ? received[header.fd_count] : -1;
  plan.devnull_fd = ::open("/dev/null", O_RDWR | O_CLOEXEC);
  if (plan.devnull_fd < 0) ExecFailed(control);
  plan.error_fd = control;
  plan.set_uid = header.set_uid != 0;
  plan.uid = header.uid;
  plan.set_gid = header.set_gid != 0;
  plan.gid = header.gid;
  ExecPlanned(plan);
}

}  // namespace parley::sandbox
