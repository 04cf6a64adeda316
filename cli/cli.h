// What every `parley` command shares: where the gateway is and which key to present,
// how output is printed (for people, or one JSON object per line for scripts), and how
// an error becomes one line on stderr and an exit status.
//
// Exit statuses, one per class of failure, so a script can branch on them:
//   0  success
//   1  failed: a followed turn did not succeed, or the server reported a bug
//   2  usage: bad flags or arguments, or INVALID_ARGUMENT from the server
//   3  auth: UNAUTHENTICATED or PERMISSION_DENIED
//   4  not found
//   5  unavailable: UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED (retry later)
//   6  conflict: FAILED_PRECONDITION, ABORTED, ALREADY_EXISTS
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/config.h"
#include "google/protobuf/message.h"
#include "parley/admin/v1/admin.grpc.pb.h"
#include "parley/v1/parley.grpc.pb.h"

namespace parley::cli {

enum ExitCode : int {
  kExitOk = 0,
  kExitFailed = 1,
  kExitUsage = 2,
  kExitAuth = 3,
  kExitNotFound = 4,
  kExitUnavailable = 5,
  kExitConflict = 6,
};

ExitCode ExitCodeFor(grpc::StatusCode code);

// Flags every command that talks to the gateway takes.
struct Options {
  std::string addr = "127.0.0.1:7070";  // --addr / PARLEY_ADDR
  std::string api_key;                  // --api_key / PARLEY_API_KEY
  absl::Duration timeout = absl::Seconds(30);
  bool json = false;  // one JSON object per line on stdout
};

// A command's argv after the command words, with the shared flags declared.
struct Invocation {
  std::string program;  // "parley sessions create", for messages
  int argc;
  char** argv;
};

// The subcommand word after the command (empty when none), and the invocation of that
// subcommand ("parley sessions" + "create" -> "parley sessions create").
std::string SubcommandOf(const Invocation& call);
Invocation Subcommand(const Invocation& call);

class Connection {
 public:
  explicit Connection(const Options& options);

  // A context carrying the key; unary calls get the --timeout deadline, streams none.
  std::unique_ptr<grpc::ClientContext> Context(bool stream = false) const;

  v1::SessionService::Stub& sessions() { return *sessions_; }
  v1::ApiKeyService::Stub& keys() { return *keys_; }
  v1::SandboxService::Stub& sandboxes() { return *sandboxes_; }
  admin::v1::AdminService::Stub& admin() { return *admin_; }
  const Options& options() const { return options_; }

 private:
  Options options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::SessionService::Stub> sessions_;
  std::unique_ptr<v1::ApiKeyService::Stub> keys_;
  std::unique_ptr<v1::SandboxService::Stub> sandboxes_;
  std::unique_ptr<admin::v1::AdminService::Stub> admin_;
};

// Every page of a listing, in order: calls `method` of `stub` with `request` and then
// each next page's token, handing each page to `each`; stops after the last page or at
// the first failure, whose status it returns.
template <typename Stub, typename Request, typename Response, typename Each>
grpc::Status ForEachPage(const Connection& connection, Stub& stub,
                         grpc::Status (Stub::*method)(grpc::ClientContext*, const Request&,
                                                      Response*),
                         Request request, Each each) {
  do {
    Response response;
    grpc::Status status = (stub.*method)(connection.Context().get(), request, &response);
    if (!status.ok()) return status;
    each(response);
    request.set_page_token(response.next_page_token());
  } while (!request.page_token().empty());
  return grpc::Status::OK;
}

// Declares --addr, --api_key, --timeout and --json.
void AddConnectionFlags(Flags& flags, Options* options);

// Parses `flags` for `call`, exiting 2 with a clear line on a usage error. The number
// of positional arguments must lie in [min_args, max_args].
std::vector<std::string> ParseArgs(Flags& flags, const Invocation& call, size_t min_args,
                                   size_t max_args, const char* args_usage);

// Prints a failed call as one line on stderr ("parley: NOT_FOUND: session not found"
// with the reason, fields and retry delay the server attached; a JSON object with
// --json) and returns its exit status.
int ReportError(const grpc::Status& status, const Options& options);
// A usage error: one line, exit status 2.
int ReportUsage(const std::string& program, const std::string& message);

// One message as a single line of JSON (proto field names).
std::string ToJson(const google::protobuf::Message& message);
// Prints `message` as one JSON line on stdout.
void PrintJson(const google::protobuf::Message& message);

// Terminal styling, only when stdout is a terminal and NO_COLOR is unset.
struct Style {
  static Style ForStdout();
  std::string Dim(const std::string& text) const;
  std::string Bold(const std::string& text) const;
  std::string Red(const std::string& text) const;
  std::string Yellow(const std::string& text) const;
  std::string Cyan(const std::string& text) const;
  bool colour = false;
};

// An enum value's name as a word: ("TURN_STATUS_SUCCEEDED", "TURN_STATUS_") -> "succeeded".
std::string EnumWord(const std::string& name, absl::string_view prefix);

// Prints rows under a header line, the header only once a first row exists (so a failed
// listing prints nothing on stdout). For people only: --json prints objects instead.
class Table {
 public:
  explicit Table(std::string header) : header_(std::move(header)) {}
  void Row(const std::string& line);

 private:
  std::string header_;
  bool started_ = false;
};

// "2026-12-05 10:04:05Z"; "-" when unset.
std::string FormatTime(const google::protobuf::Timestamp& time);

}  // namespace parley::cli
