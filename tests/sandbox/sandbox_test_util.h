// Helpers for the sandbox tests: run an exec to completion through either API
// (sandboxd's or the manager's, same message shapes), find processes by a marker in
// their command line, and start a bare parley-sandboxd on a Unix socket.
#pragma once

#include <dirent.h>
#include <grpcpp/grpcpp.h>

#include <fstream>
#include <memory>
#include <sstream>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "parley/sandboxd/v1/sandboxd.grpc.pb.h"
#include "tests/harness/services.h"

namespace parley::testing {

struct ExecResult {
  grpc::Status status;
  std::string stdout_text;
  std::string stderr_text;
  bool has_exit = false;
  ::parley::v1::ExecExit exit;
  size_t max_chunk_bytes = 0;
  int messages = 0;
};

template <typename T>
struct ReaderMessage;
template <typename R>
struct ReaderMessage<std::unique_ptr<grpc::ClientReader<R>>> {
  using type = R;
};

// Runs an Exec stream to its end. `context` may carry a deadline or be cancelled by
// the caller from another thread.
template <typename Stub, typename Request>
ExecResult RunExec(Stub& stub, const Request& request, grpc::ClientContext* context = nullptr) {
  grpc::ClientContext local;
  if (context == nullptr) {
    local.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
    context = &local;
  }
  auto reader = stub.Exec(context, request);
  ExecResult result;
  typename ReaderMessage<decltype(reader)>::type message;
  while (reader->Read(&message)) {
    ++result.messages;
    if (message.has_exit()) {
      result.has_exit = true;
      result.exit = message.exit();
    } else if (!message.stdout().empty()) {
      result.stdout_text += message.stdout();
      result.max_chunk_bytes = std::max(result.max_chunk_bytes, message.stdout().size());
    } else {
      result.stderr_text += message.stderr();
      result.max_chunk_bytes = std::max(result.max_chunk_bytes, message.stderr().size());
    }
  }
  result.status = reader->Finish();
  return result;
}

// Pids of processes whose command line contains `marker`.
inline std::vector<int> ProcessesWithMarker(const std::string& marker) {
  std::vector<int> pids;
  DIR* proc = ::opendir("/proc");
  if (proc == nullptr) return pids;
  while (struct dirent* entry = ::readdir(proc)) {
    int pid = 0;
    if (!absl::SimpleAtoi(entry->d_name, &pid)) continue;
    std::ifstream in(absl::StrCat("/proc/", pid, "/cmdline"));
    std::stringstream buffer;
    buffer << in.rdbuf();
    std::string cmdline = buffer.str();
    for (char& c : cmdline) {
      if (c == '\0') c = ' ';
    }
    std::ifstream stat_in(absl::StrCat("/proc/", pid, "/stat"));
    std::string stat_line;
    std::getline(stat_in, stat_line);
    size_t paren = stat_line.rfind(')');
    bool zombie =
        paren != std::string::npos && paren + 2 < stat_line.size() && stat_line[paren + 2] == 'Z';
    if (!zombie && absl::StrContains(cmdline, marker)) pids.push_back(pid);
  }
  ::closedir(proc);
  return pids;
}

inline std::string GrpcStatusText(const grpc::Status& status) {
  return absl::StrCat(status.error_code(), ": ", status.error_message());
}

}  // namespace parley::testing
