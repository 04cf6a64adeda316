// parley-sandboxd on its own (no bubblewrap): the protocol handshake, exec semantics
// (streams, exit, env, cwd, stdin, timeouts and cancel killing the whole tree) and the
// file API with its path rules, under both path resolvers (openat2 and the walk).
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <thread>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/status.h"
#include "parley/sandboxd/v1/sandboxd.grpc.pb.h"
#include "tests/harness/services.h"
#include "tests/sandbox/sandbox_test_util.h"

namespace parley::testing {
namespace {

namespace sandboxd_pb = ::parley::sandboxd::v1;

class Daemon {
 public:
  // Starts parley-sandboxd on a Unix socket with a fresh workspace and says Hello.
  static std::unique_ptr<Daemon> Start(std::vector<std::string> extra_args = {},
                                       std::map<std::string, std::string> env = {}) {
    auto daemon = std::unique_ptr<Daemon>(new Daemon());
    daemon->dir_ = TestTempDir();
    daemon->workspace_ = daemon->dir_ + "/ws";
    ::mkdir(daemon->workspace_.c_str(), 0755);
    std::string socket = daemon->dir_ + "/d.sock";
    std::vector<std::string> args = {"--listen=unix:" + socket,
                                     "--workspace=" + daemon->workspace_};
    args.insert(args.end(), extra_args.begin(), extra_args.end());
    auto process = ServiceProcess::Start(
        {.binary = BinaryPath("sandbox-svc/parley-sandboxd"), .args = args, .env = env});
    EXPECT_TRUE(process.ok()) << process.status();
    daemon->process_ = *std::move(process);
    // The daemon binds a moment after it starts: retry the connection quickly.
    grpc::ChannelArguments args_for_channel;
    args_for_channel.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 10);
    args_for_channel.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 10);
    args_for_channel.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 100);
    daemon->channel_ = grpc::CreateCustomChannel(
        "unix:" + socket, grpc::InsecureChannelCredentials(), args_for_channel);
    daemon->stub_ = sandboxd_pb::Sandboxd::NewStub(daemon->channel_);
    return daemon;
  }

  sandboxd_pb::Sandboxd::Stub& stub() { return *stub_; }
  const std::string& workspace() const { return workspace_; }
  std::string Output() const { return process_->Output(); }

  // Hello with wait-for-ready, so the first call also waits for the daemon to bind.
  grpc::Status Hello(uint32_t version, sandboxd_pb::HelloResponse* response,
                     const std::string& token = "") {
    grpc::ClientContext context;
    context.set_wait_for_ready(true);
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(20)));
    if (!token.empty()) context.AddMetadata("x-parley-sandbox-token", token);
    sandboxd_pb::HelloRequest request;
    request.set_client_protocol_version(version);
    return stub_->Hello(&context, request, response);
  }

 private:
  std::string dir_;
  std::string workspace_;
  std::unique_ptr<ServiceProcess> process_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<sandboxd_pb::Sandboxd::Stub> stub_;
};

sandboxd_pb::ExecRequest Command(std::vector<std::string> argv, uint64_t timeout_ms = 0) {
  sandboxd_pb::ExecRequest request;
  for (auto& arg : argv) request.add_argv(arg);
  request.set_timeout_ms(timeout_ms);
  return request;
}

absl::Status ToAbsl(const grpc::Status& status) { return FromGrpcStatus(status); }

std::string ErrorReason(const grpc::Status& status) {
  auto info = GetErrorInfo(FromGrpcStatus(status));
  return info ? info->reason() : "";
}

// Waits (bounded) until no process carries `marker`; returns what is left.
std::vector<int> AwaitNoProcesses(const std::string& marker) {
  const absl::Time give_up = absl::Now() + absl::Seconds(5);
  std::vector<int> left = ProcessesWithMarker(marker);
  while (!left.empty() && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(20));
    left = ProcessesWithMarker(marker);
  }
  return left;
}

TEST(SandboxdHello, AcceptsItsProtocolVersionAndNamesTheWorkspace) {
  auto daemon = Daemon::Start();
  sandboxd_pb::HelloResponse response;
  grpc::Status status = daemon->Hello(1, &response);
  ASSERT_TRUE(status.ok()) << GrpcStatusText(status) << daemon->Output();
  EXPECT_EQ(response.daemon_protocol_version(), 1u);
  EXPECT_EQ(response.workspace_root(), daemon->workspace());
  EXPECT_FALSE(response.daemon_version().empty());
}

TEST(SandboxdHello, RefusesAnotherVersionAndSaysWhichTwoDiffer) {
  auto daemon = Daemon::Start();
  sandboxd_pb::HelloResponse response;
  grpc::Status status = daemon->Hello(2, &response);
  ASSERT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(status.error_message(), "sandboxd protocol mismatch: client 2, daemon 1");
  auto info = GetErrorInfo(ToAbsl(status));
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->reason(), "PROTOCOL_MISMATCH");
  EXPECT_EQ(info->metadata().at("client_protocol_version"), "2");
  EXPECT_EQ(info->metadata().at("daemon_protocol_version"), "1");
}

TEST(SandboxdHello, RequiresTheTokenWhenStartedWithOne) {
  auto daemon = Daemon::Start({}, {{"PARLEY_SANDBOXD_TOKEN", "s3cret"}});
  sandboxd_pb::HelloResponse response;
  EXPECT_EQ(daemon->Hello(1, &response).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(daemon->Hello(1, &response, "wrong").error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_TRUE(daemon->Hello(1, &response, "s3cret").ok());
}

class SandboxdExec : public ::testing::Test {
 protected:
  void SetUp() override {
    daemon_ = Daemon::Start();
    sandboxd_pb::HelloResponse hello;
    grpc::Status status = daemon_->Hello(1, &hello);
    ASSERT_TRUE(status.ok()) << GrpcStatusText(status) << daemon_->Output();
  }
  std::unique_ptr<Daemon> daemon_;
};

TEST_F(SandboxdExec, StreamsStdoutAndStderrThenTheExit) {
  ExecResult result =
      RunExec(daemon_->stub(), Command({"sh", "-c", "echo out; echo err >&2; exit 3"}));
  ASSERT_TRUE(result.status.ok()) << GrpcStatusText(result.status);
  EXPECT_EQ(result.stdout_text, "out\n");
  EXPECT_EQ(result.stderr_text, "err\n");
  ASSERT_TRUE(result.has_exit);
  EXPECT_EQ(result.exit.exit_code(), 3);
  EXPECT_EQ(result.exit.signal(), 0);
  EXPECT_FALSE(result.exit.timed_out());
}

TEST_F(SandboxdExec, ReportsTheSignalThatKilledTheProgram) {
  ExecResult result = RunExec(daemon_->stub(), Command({"sh", "-c", "kill -TERM $$"}));
  ASSERT_TRUE(result.has_exit) << GrpcStatusText(result.status);
  EXPECT_EQ(result.exit.exit_code(), -1);
  EXPECT_EQ(result.exit.signal(), SIGTERM);
}

TEST_F(SandboxdExec, AppliesEnvCwdAndStdin) {
  ::mkdir((daemon_->workspace() + "/sub").c_str(), 0755);
  sandboxd_pb::ExecRequest request = Command({"sh", "-c", "echo \"$GREETING\"; pwd; cat"});
  (*request.mutable_env())["GREETING"] = "hello there";
  request.set_cwd("sub");
  request.set_stdin("from stdin");
  ExecResult result = RunExec(daemon_->stub(), request);
  ASSERT_TRUE(result.status.ok()) << GrpcStatusText(result.status);
  EXPECT_EQ(result.stdout_text,
            absl::StrCat("hello there\n", daemon_->workspace(), "/sub\nfrom stdin"));
  EXPECT_EQ(result.exit.exit_code(), 0);
}

TEST_F(SandboxdExec, HomeIsTheWorkspaceNotAHostHomeDirectory) {
  ExecResult result = RunExec(daemon_->stub(), Command({"sh", "-c", "echo $HOME"}));
  EXPECT_EQ(result.stdout_text, daemon_->workspace() + "\n");
}

TEST_F(SandboxdExec, AMissingProgramExitsWith127AndSaysSo) {
  ExecResult result = RunExec(daemon_->stub(), Command({"no-such-program-xyz"}));
  ASSERT_TRUE(result.status.ok()) << GrpcStatusText(result.status);
  EXPECT_EQ(result.exit.exit_code(), 127);
  EXPECT_NE(result.stderr_text.find("no-such-program-xyz: command not found"), std::string::npos);
  ExecResult by_path = RunExec(daemon_->stub(), Command({"./missing"}));
  EXPECT_EQ(by_path.exit.exit_code(), 127);
}

TEST_F(SandboxdExec, LargeOutputArrivesWholeInBoundedChunks) {
  ExecResult result =
      RunExec(daemon_->stub(), Command({"sh", "-c", "head -c 1000000 /dev/zero | tr '\\0' x"}));
  ASSERT_TRUE(result.status.ok()) << GrpcStatusText(result.status);
  EXPECT_EQ(result.stdout_text, std::string(1000000, 'x'));
  EXPECT_LE(result.max_chunk_bytes, 64u * 1024);
  EXPECT_EQ(result.exit.exit_code(), 0);
}

TEST_F(SandboxdExec, TimeoutKillsTheWholeTreeEvenEscapedGrandchildren) {
  // A background child, a setsid()-escaped grandchild and the shell all hold the pipes.
  const std::string marker = absl::StrCat("1000.", ::getpid(), "1");
  ExecResult result = RunExec(
      daemon_->stub(),
      Command({"sh", "-c",
               absl::StrCat("sleep ", marker, " & setsid sleep ", marker, " & echo started; wait")},
              500));
  ASSERT_TRUE(result.status.ok()) << GrpcStatusText(result.status);
  EXPECT_EQ(result.stdout_text, "started\n");
  ASSERT_TRUE(result.has_exit);
  EXPECT_TRUE(result.exit.timed_out());
  EXPECT_EQ(result.exit.signal(), SIGKILL);
  EXPECT_EQ(result.exit.exit_code(), -1);
  EXPECT_TRUE(ProcessesWithMarker(marker).empty()) << "processes survived the timeout";
}

TEST_F(SandboxdExec, CancelKillsTheTreeAndEndsTheCallAtOnce) {
  const std::string marker = absl::StrCat("1000.", ::getpid(), "2");
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
  std::thread canceller([&] {
    const absl::Time give_up = absl::Now() + absl::Seconds(10);
    while (ProcessesWithMarker(marker).size() < 2 && absl::Now() < give_up) {
      absl::SleepFor(absl::Milliseconds(10));
    }
    context.TryCancel();
  });
  ExecResult result = RunExec(
      daemon_->stub(),
      Command({"sh", "-c", absl::StrCat("sleep ", marker, " & setsid sleep ", marker, "; wait")}),
      &context);
  canceller.join();
  EXPECT_EQ(result.status.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_FALSE(result.has_exit);
  EXPECT_TRUE(AwaitNoProcesses(marker).empty()) << "processes survived the cancel";
}

TEST_F(SandboxdExec, BackgroundProcessWithRedirectedOutputOutlivesTheCall) {
  const std::string marker = absl::StrCat("1000.", ::getpid(), "3");
  ExecResult result = RunExec(
      daemon_->stub(), Command({"sh", "-c", absl::StrCat("sleep ", marker, " >/dev/null 2>&1 &")}));
  ASSERT_TRUE(result.status.ok()) << GrpcStatusText(result.status);
  EXPECT_EQ(result.exit.exit_code(), 0);
  std::vector<int> left = ProcessesWithMarker(marker);
  EXPECT_EQ(left.size(), 1u);
  for (int pid : left) ::kill(pid, SIGKILL);
}

TEST_F(SandboxdExec, RefusesBadRequestsBeforeRunningAnything) {
  ExecResult empty = RunExec(daemon_->stub(), sandboxd_pb::ExecRequest());
  EXPECT_EQ(empty.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  sandboxd_pb::ExecRequest bad_env = Command({"true"});
  (*bad_env.mutable_env())["1BAD"] = "x";
  EXPECT_EQ(RunExec(daemon_->stub(), bad_env).status.error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  sandboxd_pb::ExecRequest escape = Command({"true"});
  escape.set_cwd("../..");
  EXPECT_EQ(RunExec(daemon_->stub(), escape).status.error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  sandboxd_pb::ExecRequest missing_cwd = Command({"true"});
  missing_cwd.set_cwd("nope");
  EXPECT_EQ(RunExec(daemon_->stub(), missing_cwd).status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(RunExec(daemon_->stub(), Command({"true"}, 3'600'001)).status.error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
}

TEST(SandboxdLimits, FileSizeLimitHoldsForProgramsAndForTheFileApi) {
  auto daemon = Daemon::Start({"--rlimit_fsize_bytes=1048576"});
  sandboxd_pb::HelloResponse hello;
  ASSERT_TRUE(daemon->Hello(1, &hello).ok()) << daemon->Output();
  ExecResult result =
      RunExec(daemon->stub(), Command({"sh", "-c", "head -c 2097152 /dev/zero > big"}));
  ASSERT_TRUE(result.has_exit) << GrpcStatusText(result.status);
  EXPECT_NE(result.exit.exit_code(), 0);
  struct stat st {};
  ASSERT_EQ(::stat((daemon->workspace() + "/big").c_str(), &st), 0);
  EXPECT_EQ(st.st_size, 1048576);

  grpc::ClientContext context;
  sandboxd_pb::WriteFileResponse response;
  auto writer = daemon->stub().WriteFile(&context, &response);
  sandboxd_pb::WriteFileRequest header;
  header.mutable_header()->set_path("api-big");
  writer->Write(header);
  sandboxd_pb::WriteFileRequest chunk;
  chunk.set_data(std::string(1024 * 1024, 'a'));
  writer->Write(chunk);
  writer->Write(chunk);
  writer->WritesDone();
  grpc::Status status = writer->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(ErrorReason(status), "FILE_TOO_LARGE");
}

// ---------------------------------------------------------------------------------
// Files, under both resolvers.

class SandboxdFiles : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    daemon_ = Daemon::Start({"--path_resolution=" + GetParam()});
    sandboxd_pb::HelloResponse hello;
    grpc::Status status = daemon_->Hello(1, &hello);
    ASSERT_TRUE(status.ok()) << GrpcStatusText(status) << daemon_->Output();
  }

  grpc::Status Write(const std::string& path, const std::string& content, bool append = false,
                     bool create_parents = false, sandboxd_pb::WriteFileResponse* out = nullptr) {
    grpc::ClientContext context;
    sandboxd_pb::WriteFileResponse response;
    auto writer = daemon_->stub().WriteFile(&context, &response);
    sandboxd_pb::WriteFileRequest header;
    header.mutable_header()->set_path(path);
    header.mutable_header()->set_append(append);
    header.mutable_header()->set_create_parents(create_parents);
    writer->Write(header);
    for (size_t offset = 0; offset < content.size(); offset += 1024 * 1024) {
      sandboxd_pb::WriteFileRequest chunk;
      chunk.set_data(content.substr(offset, 1024 * 1024));
      if (!writer->Write(chunk)) break;
    }
    writer->WritesDone();
    grpc::Status status = writer->Finish();
    if (out != nullptr) *out = response;
    return status;
  }

  grpc::Status Read(const std::string& path, std::string* content, uint64_t offset = 0,
                    uint64_t limit = 0, size_t* chunks = nullptr) {
    grpc::ClientContext context;
    sandboxd_pb::ReadFileRequest request;
    request.set_path(path);
    request.set_offset_bytes(offset);
    request.set_limit_bytes(limit);
    auto reader = daemon_->stub().ReadFile(&context, request);
    sandboxd_pb::ReadFileResponse message;
    content->clear();
    size_t count = 0;
    while (reader->Read(&message)) {
      *content += message.data();
      ++count;
    }
    if (chunks != nullptr) *chunks = count;
    return reader->Finish();
  }

  grpc::Status Stat(const std::string& path, sandboxd_pb::StatResponse* response) {
    grpc::ClientContext context;
    sandboxd_pb::StatRequest request;
    request.set_path(path);
    return daemon_->stub().Stat(&context, request, response);
  }

  std::string ws(const std::string& rel) { return daemon_->workspace() + "/" + rel; }

  std::unique_ptr<Daemon> daemon_;
};

TEST_P(SandboxdFiles, WritesAndReadsLargeFilesInChunks) {
  std::string content;
  for (int i = 0; content.size() < 3 * 1024 * 1024 + 17; ++i) absl::StrAppend(&content, i, ",");
  sandboxd_pb::WriteFileResponse written;
  grpc::Status status = Write("data/big.txt", content, false, true, &written);
  ASSERT_TRUE(status.ok()) << GrpcStatusText(status);
  EXPECT_EQ(written.bytes_written(), content.size());
  EXPECT_EQ(written.info().path(), "data/big.txt");
  EXPECT_EQ(written.info().size_bytes(), content.size());
  EXPECT_EQ(written.info().mode(), 0644u);
  std::string back;
  size_t chunks = 0;
  ASSERT_TRUE(Read("data/big.txt", &back, 0, 0, &chunks).ok());
  EXPECT_EQ(back, content);
  EXPECT_GT(chunks, 40u);  // 64 KiB per message.
  ASSERT_TRUE(Read("data//./big.txt", &back, 5, 10).ok());
  EXPECT_EQ(back, content.substr(5, 10));
}

TEST_P(SandboxdFiles, AppendsAndReplacesAtomically) {
  ASSERT_TRUE(Write("f", "one").ok());
  ASSERT_TRUE(Write("f", "+two", true).ok());
  std::string back;
  ASSERT_TRUE(Read("f", &back).ok());
  EXPECT_EQ(back, "one+two");
  ASSERT_TRUE(Write("f", "fresh").ok());
  ASSERT_TRUE(Read("f", &back).ok());
  EXPECT_EQ(back, "fresh");
}

TEST_P(SandboxdFiles, ListsStatsMakesAndRemoves) {
  grpc::ClientContext mk;
  sandboxd_pb::MakeDirRequest make;
  make.set_path("a/b/c");
  make.set_parents(true);
  sandboxd_pb::MakeDirResponse made;
  ASSERT_TRUE(daemon_->stub().MakeDir(&mk, make, &made).ok());
  EXPECT_EQ(made.info().type(), ::parley::v1::FILE_TYPE_DIRECTORY);
  ASSERT_TRUE(Write("a/x.txt", "x").ok());
  ASSERT_TRUE(Write("a.txt", "y").ok());
  ASSERT_EQ(::symlink("x.txt", ws("a/link").c_str()), 0);

  grpc::ClientContext ls;
  sandboxd_pb::ListDirRequest list;
  list.set_recursive(true);
  sandboxd_pb::ListDirResponse listing;
  ASSERT_TRUE(daemon_->stub().ListDir(&ls, list, &listing).ok());
  std::vector<std::string> paths;
  for (const auto& entry : listing.entries()) paths.push_back(entry.path());
  EXPECT_EQ(paths, (std::vector<std::string>{"a", "a.txt", "a/b", "a/b/c", "a/link", "a/x.txt"}));

  sandboxd_pb::StatResponse link;
  ASSERT_TRUE(Stat("a/link", &link).ok());
  EXPECT_EQ(link.info().type(), ::parley::v1::FILE_TYPE_SYMLINK);
  EXPECT_EQ(link.info().symlink_target(), "x.txt");
  std::string through;
  ASSERT_TRUE(Read("a/link", &through).ok());
  EXPECT_EQ(through, "x");

  grpc::ClientContext rm1;
  sandboxd_pb::RemoveRequest remove;
  remove.set_path("a");
  sandboxd_pb::RemoveResponse removed;
  grpc::Status not_empty = daemon_->stub().Remove(&rm1, remove, &removed);
  EXPECT_EQ(not_empty.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(ErrorReason(not_empty), "DIRECTORY_NOT_EMPTY");
  grpc::ClientContext rm2;
  remove.set_recursive(true);
  ASSERT_TRUE(daemon_->stub().Remove(&rm2, remove, &removed).ok());
  EXPECT_TRUE(removed.removed());
  grpc::ClientContext rm3;
  remove.set_allow_missing(true);
  ASSERT_TRUE(daemon_->stub().Remove(&rm3, remove, &removed).ok());
  EXPECT_FALSE(removed.removed());
  sandboxd_pb::StatResponse gone;
  EXPECT_EQ(Stat("a", &gone).error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_P(SandboxdFiles, RefusesDotDotAndAbsolutePathsBeforeTouchingAnything) {
  std::string content;
  for (const char* path : {"../etc/passwd", "a/../../etc/passwd", "/etc/passwd"}) {
    grpc::Status status = Read(path, &content);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << path;
    auto bad_request = GetBadRequest(ToAbsl(status));
    ASSERT_TRUE(bad_request.has_value()) << path;
    EXPECT_EQ(bad_request->field_violations(0).field(), "path");
    EXPECT_EQ(Write(path, "x").error_code(), grpc::StatusCode::INVALID_ARGUMENT) << path;
  }
}

TEST_P(SandboxdFiles, RefusesSymlinksThatLeaveTheWorkspace) {
  ASSERT_EQ(::symlink("/", ws("root").c_str()), 0);
  ASSERT_EQ(::symlink("../..", ws("up").c_str()), 0);
  ::mkdir(ws("d").c_str(), 0755);
  ASSERT_EQ(::symlink("../../outside", ws("d/sneaky").c_str()), 0);
  std::string content;
  for (const char* path : {"root/etc/passwd", "up/etc/passwd", "root", "d/sneaky"}) {
    grpc::Status status = Read(path, &content);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED) << path;
    EXPECT_EQ(ErrorReason(status), "PATH_ESCAPE") << path;
  }
  EXPECT_EQ(ErrorReason(Write("root/tmp/evil", "x")), "PATH_ESCAPE");
  EXPECT_EQ(ErrorReason(Write("d/sneaky", "x")), "PATH_ESCAPE");
  grpc::ClientContext ls;
  sandboxd_pb::ListDirRequest list;
  list.set_path("up");
  sandboxd_pb::ListDirResponse listing;
  EXPECT_EQ(ErrorReason(daemon_->stub().ListDir(&ls, list, &listing)), "PATH_ESCAPE");
  // The link itself is still visible (lstat) and removable.
  sandboxd_pb::StatResponse link;
  ASSERT_TRUE(Stat("root", &link).ok());
  EXPECT_EQ(link.info().symlink_target(), "/");
  grpc::ClientContext rm;
  sandboxd_pb::RemoveRequest remove;
  remove.set_path("root");
  sandboxd_pb::RemoveResponse removed;
  ASSERT_TRUE(daemon_->stub().Remove(&rm, remove, &removed).ok());
  struct stat st {};
  EXPECT_EQ(::stat("/etc/passwd", &st), 0);  // Only the link went.
}

TEST_P(SandboxdFiles, ASymlinkSwappedDuringFileCallsNeverReachesOutside) {
  // A race a reviewer would try: "d" flips, by atomic exchanges (renameat2
  // RENAME_EXCHANGE), between a real directory and a symlink to a directory outside the
  // workspace, while reads and writes go through "d/". No call may ever read the
  // outside file or write beside it. Both outcomes, "inside" read and PATH_ESCAPE,
  // must occur, which shows the swaps really landed during the calls. Bounded: 400
  // calls or 30 s; the swapper stops and is joined on every path out.
  const std::string outside = TestTempDir() + "/outside";
  ::mkdir(outside.c_str(), 0755);
  std::ofstream(outside + "/secret.txt") << "outside";
  ::mkdir(ws("d").c_str(), 0755);
  std::ofstream(ws("d/secret.txt")) << "inside";
  ASSERT_EQ(::symlink(outside.c_str(), ws("d.link").c_str()), 0);
  std::atomic<bool> stop{false};
  std::atomic<int> swaps{0};
  std::thread swapper([&] {
    while (!stop) {
      if (::renameat2(AT_FDCWD, ws("d").c_str(), AT_FDCWD, ws("d.link").c_str(), RENAME_EXCHANGE) ==
          0) {
        ++swaps;
      }
    }
  });
  absl::Cleanup stop_swapper = [&] {
    stop = true;
    swapper.join();
  };

  int inside_reads = 0, escapes = 0, raced = 0;
  const absl::Time give_up = absl::Now() + absl::Seconds(30);
  for (int i = 0; i < 400 && absl::Now() < give_up; ++i) {
    std::string content;
    grpc::Status read = Read("d/secret.txt", &content);
    ASSERT_FALSE(absl::StartsWith(content, "outside"))
        << "read through the swapped link, call " << i;
    if (read.ok()) {
      EXPECT_TRUE(absl::StartsWith(content, "inside")) << content;  // Appends below add to it.
      ++inside_reads;
    } else if (ErrorReason(read) == "PATH_ESCAPE") {
      ++escapes;
    } else {
      // What a caller may also see while a path keeps changing: UNAVAILABLE "raced with
      // a rename" (retry). Never another error, and never a wrong type.
      EXPECT_EQ(read.error_code(), grpc::StatusCode::UNAVAILABLE) << GrpcStatusText(read);
      ++raced;
    }
    (void)Write(absl::StrCat("d/new-", i, ".txt"), "x");
    (void)Write("d/secret.txt", "rewritten", /*append=*/true);
  }
  std::move(stop_swapper).Invoke();
  EXPECT_GT(swaps.load(), 0);
  EXPECT_GT(inside_reads, 0);
  EXPECT_GT(escapes, 0) << "no call met the symlink: the race was not exercised";
  EXPECT_LT(raced, inside_reads + escapes);
  std::string outside_content;
  std::getline(std::ifstream(outside + "/secret.txt"), outside_content);
  EXPECT_EQ(outside_content, "outside");
  DIR* dir = ::opendir(outside.c_str());
  ASSERT_NE(dir, nullptr);
  std::vector<std::string> names;
  while (struct dirent* entry = ::readdir(dir)) names.emplace_back(entry->d_name);
  ::closedir(dir);
  EXPECT_EQ(names.size(), 3u) << "something was written outside the workspace";
}

TEST_P(SandboxdFiles, WritesThroughASymlinkThatStaysInside) {
  ::mkdir(ws("real").c_str(), 0755);
  ASSERT_EQ(::symlink("real/target.txt", ws("alias").c_str()), 0);
  ASSERT_TRUE(Write("alias", "via link").ok());
  std::ifstream in(ws("real/target.txt"));
  std::string content((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(content, "via link");
  sandboxd_pb::StatResponse link;
  ASSERT_TRUE(Stat("alias", &link).ok());
  EXPECT_EQ(link.info().type(), ::parley::v1::FILE_TYPE_SYMLINK);
}

TEST_P(SandboxdFiles, ReportsWrongEntryTypesWithReasons) {
  ::mkdir(ws("dir").c_str(), 0755);
  std::string content;
  grpc::Status read_dir = Read("dir", &content);
  EXPECT_EQ(read_dir.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(ErrorReason(read_dir), "NOT_A_FILE");
  ASSERT_TRUE(Write("file", "x").ok());
  grpc::ClientContext ls;
  sandboxd_pb::ListDirRequest list;
  list.set_path("file");
  sandboxd_pb::ListDirResponse listing;
  EXPECT_EQ(ErrorReason(daemon_->stub().ListDir(&ls, list, &listing)), "NOT_A_DIRECTORY");
  EXPECT_EQ(Read("missing", &content).error_code(), grpc::StatusCode::NOT_FOUND);
  grpc::ClientContext mk;
  sandboxd_pb::MakeDirRequest make;
  make.set_path("dir");
  sandboxd_pb::MakeDirResponse made;
  EXPECT_EQ(daemon_->stub().MakeDir(&mk, make, &made).error_code(),
            grpc::StatusCode::ALREADY_EXISTS);
  grpc::ClientContext rm;
  sandboxd_pb::RemoveRequest remove;
  sandboxd_pb::RemoveResponse removed;
  EXPECT_EQ(daemon_->stub().Remove(&rm, remove, &removed).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
}

INSTANTIATE_TEST_SUITE_P(Resolvers, SandboxdFiles, ::testing::Values("openat2", "walk"));

}  // namespace
}  // namespace parley::testing
