// PreparedChild (sandbox-svc/provider/process.h): a process started ahead of time runs the
// program it is later given exactly as Spawn() would — same pid, the fds mapped, the
// output captured — reports an exec failure with its errno, and exits, reaped, when it
// is dropped unused. (Its cgroup joins are proven in cgroup_test, on the host's groups.)
#include "sandbox-svc/provider/process.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <string>

#include "absl/strings/match.h"
#include "tests/harness/services.h"

namespace parley::sandbox {
namespace {

// The launcher a PreparedChild waits in: parley-sandboxd's launcher mode.
std::string Launcher() { return testing::BinaryPath("sandbox-svc/parley-sandboxd"); }

// Everything readable from `fd` until EOF.
std::string ReadAll(int fd) {
  std::string text;
  char buffer[256];
  ssize_t n;
  while ((n = ::read(fd, buffer, sizeof(buffer))) > 0) text.append(buffer, n);
  return text;
}

TEST(PreparedChild, RunsTheProgramItIsGivenAsItsOwnProcessWithTheFdsMapped) {
  absl::StatusOr<PreparedChild> child = PreparedChild::Start(Launcher(), {});
  ASSERT_TRUE(child.ok()) << child.status();
  const pid_t prepared_pid = child->pid();
  int to_program[2], output[2];
  ASSERT_EQ(::pipe2(to_program, O_CLOEXEC), 0);
  ASSERT_EQ(::pipe2(output, O_CLOEXEC), 0);
  ASSERT_EQ(::write(to_program[1], "from fd 5", 9), 9);
  ::close(to_program[1]);

  SpawnRequest request;
  request.path = "/bin/sh";
  request.argv = {"sh", "-c", "cat <&5; echo \" $GREETING\"; echo to-stderr >&2"};
  request.env = {"GREETING=hello"};
  request.fds = {{to_program[0], 5}};
  request.output_fd = output[1];
  absl::StatusOr<pid_t> pid = std::move(*child).Exec(request);
  ::close(to_program[0]);
  ::close(output[1]);
  ASSERT_TRUE(pid.ok()) << pid.status();
  EXPECT_EQ(*pid, prepared_pid);
  EXPECT_EQ(ReadAll(output[0]), "from fd 5 hello\nto-stderr\n");
  ::close(output[0]);
  int status = 0;
  ASSERT_EQ(::waitpid(*pid, &status, 0), *pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  // Used once: a second order has no child to go to.
  EXPECT_EQ(std::move(*child).Exec(request).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(PreparedChild, AProgramThatCannotStartIsReportedWithItsErrorAndTheChildReaped) {
  absl::StatusOr<PreparedChild> child = PreparedChild::Start(Launcher(), {});
  ASSERT_TRUE(child.ok()) << child.status();
  const pid_t pid = child->pid();
  SpawnRequest request;
  request.path = "/nonexistent/program";
  request.argv = {"program"};
  absl::StatusOr<pid_t> started = std::move(*child).Exec(request);
  ASSERT_EQ(started.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(absl::StrContains(started.status().message(), std::strerror(ENOENT)))
      << started.status();
  errno = 0;
  EXPECT_EQ(::waitpid(pid, nullptr, WNOHANG), -1);
  EXPECT_EQ(errno, ECHILD) << "the failed child was not reaped";
}

TEST(PreparedChild, AGroupFileCannotBeGivenAtExecTime) {
  absl::StatusOr<PreparedChild> child = PreparedChild::Start(Launcher(), {});
  ASSERT_TRUE(child.ok()) << child.status();
  SpawnRequest request;
  request.path = "/bin/true";
  request.argv = {"true"};
  request.cgroup_procs_fds = {0};
  EXPECT_EQ(std::move(*child).Exec(request).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(PreparedChild, AnUnusedChildExitsAndIsReapedWhenDropped) {
  absl::StatusOr<PreparedChild> child = PreparedChild::Start(Launcher(), {});
  ASSERT_TRUE(child.ok()) << child.status();
  const pid_t pid = child->pid();
  ASSERT_EQ(::kill(pid, 0), 0) << "the prepared child is not waiting";
  *child = PreparedChild();
  errno = 0;
  EXPECT_EQ(::kill(pid, 0), -1);
  EXPECT_EQ(errno, ESRCH) << "the dropped child is still there (or a zombie)";
}

}  // namespace
}  // namespace parley::sandbox
