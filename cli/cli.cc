#include "cli/cli.h"

#include <unistd.h>

#include <cstdlib>
#include <iostream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "common/proto_time.h"
#include "common/status.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"

namespace parley::cli {

ExitCode ExitCodeFor(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK:
      return kExitOk;
    case grpc::StatusCode::INVALID_ARGUMENT:
    case grpc::StatusCode::OUT_OF_RANGE:
      return kExitUsage;
    case grpc::StatusCode::UNAUTHENTICATED:
    case grpc::StatusCode::PERMISSION_DENIED:
      return kExitAuth;
    case grpc::StatusCode::NOT_FOUND:
      return kExitNotFound;
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::DEADLINE_EXCEEDED:
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
    case grpc::StatusCode::CANCELLED:
      return kExitUnavailable;
    case grpc::StatusCode::FAILED_PRECONDITION:
    case grpc::StatusCode::ABORTED:
    case grpc::StatusCode::ALREADY_EXISTS:
      return kExitConflict;
    default:
      return kExitFailed;
  }
}

std::string SubcommandOf(const Invocation& call) { return call.argc > 1 ? call.argv[1] : ""; }

Invocation Subcommand(const Invocation& call) {
  return {absl::StrCat(call.program, " ", SubcommandOf(call)), call.argc - 1, call.argv + 1};
}

Connection::Connection(const Options& options)
    : options_(options),
      channel_(grpc::CreateChannel(options.addr, grpc::InsecureChannelCredentials())),
      sessions_(v1::SessionService::NewStub(channel_)),
      keys_(v1::ApiKeyService::NewStub(channel_)),
      sandboxes_(v1::SandboxService::NewStub(channel_)),
      admin_(admin::v1::AdminService::NewStub(channel_)) {}

std::unique_ptr<grpc::ClientContext> Connection::Context(bool stream) const {
  auto context = std::make_unique<grpc::ClientContext>();
  if (!options_.api_key.empty()) {
    context->AddMetadata("authorization", "Bearer " + options_.api_key);
  }
  if (!stream) context->set_deadline(absl::ToChronoTime(absl::Now() + options_.timeout));
  return context;
}

void AddConnectionFlags(Flags& flags, Options* options) {
  flags.HostPort("addr", &options->addr, "the gateway's address");
  flags.String("api_key", &options->api_key,
               "the API key to present (a secret: prefer the "
               "variable to the flag, which shows in `ps`)");
  flags.Duration("timeout", &options->timeout, "deadline of each unary call");
  flags.Bool("json", &options->json, "print one JSON object per line, for scripts");
}

std::vector<std::string> ParseArgs(Flags& flags, const Invocation& call, size_t min_args,
                                   size_t max_args, const char* args_usage) {
  std::vector<std::string> args = ParseFlagsOrExit(flags, call.argc, call.argv,
                                                   ProcessEnvironment(), /*allow_positional=*/true);
  if (args.size() < min_args || args.size() > max_args) {
    std::exit(ReportUsage(call.program, absl::StrCat("expected ", args_usage)));
  }
  return args;
}

int ReportError(const grpc::Status& status, const Options& options) {
  const absl::Status error = FromGrpcStatus(status);
  const std::string code = absl::StatusCodeToString(error.code());
  std::string reason;
  std::vector<std::string> fields;
  int64_t retry_ms = -1;
  if (auto info = GetErrorInfo(error); info.has_value()) reason = info->reason();
  if (auto bad = GetBadRequest(error); bad.has_value()) {
    for (const auto& v : bad->field_violations()) {
      fields.push_back(v.description().empty() ? v.field()
                                               : absl::StrCat(v.field(), " ", v.description()));
    }
  }
  if (auto retry = GetRetryInfo(error); retry.has_value()) retry_ms = retry->retry_delay_ms();

  if (options.json) {
    google::protobuf::Struct body;
    auto& f = *body.mutable_fields();
    f["code"].set_string_value(code);
    f["message"].set_string_value(std::string(error.message()));
    if (!reason.empty()) f["reason"].set_string_value(reason);
    for (const std::string& field : fields) {
      f["fields"].mutable_list_value()->add_values()->set_string_value(field);
    }
    if (retry_ms >= 0) f["retry_delay_ms"].set_number_value(static_cast<double>(retry_ms));
    google::protobuf::Struct wrapper;
    *(*wrapper.mutable_fields())["error"].mutable_struct_value() = std::move(body);
    std::cerr << ToJson(wrapper) << "\n";
  } else {
    std::string line = absl::StrCat("parley: ", code, ": ", error.message());
    if (!reason.empty()) absl::StrAppend(&line, " (", reason, ")");
    if (!fields.empty()) absl::StrAppend(&line, " [", absl::StrJoin(fields, "; "), "]");
    if (retry_ms >= 0) absl::StrAppend(&line, "; retry in ", retry_ms, " ms");
    std::cerr << line << "\n";
  }
  return ExitCodeFor(status.error_code());
}

int ReportUsage(const std::string& program, const std::string& message) {
  std::cerr << program << ": " << message << "\nRun '" << program << " --help' for its flags.\n";
  return kExitUsage;
}

std::string ToJson(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  std::string out;
  (void)google::protobuf::util::MessageToJsonString(message, &out, options);
  return out;
}

void PrintJson(const google::protobuf::Message& message) {
  std::cout << ToJson(message) << "\n" << std::flush;
}

Style Style::ForStdout() {
  Style style;
  style.colour = isatty(STDOUT_FILENO) == 1 && std::getenv("NO_COLOR") == nullptr;
  return style;
}

namespace {
std::string Wrap(bool on, const char* sgr, const std::string& text) {
  return on ? absl::StrCat("\x1b[", sgr, "m", text, "\x1b[0m") : text;
}
}  // namespace

std::string Style::Dim(const std::string& text) const { return Wrap(colour, "2", text); }
std::string Style::Bold(const std::string& text) const { return Wrap(colour, "1", text); }
std::string Style::Red(const std::string& text) const { return Wrap(colour, "31", text); }
std::string Style::Yellow(const std::string& text) const { return Wrap(colour, "33", text); }
std::string Style::Cyan(const std::string& text) const { return Wrap(colour, "36", text); }

std::string EnumWord(const std::string& name, absl::string_view prefix) {
  absl::string_view word(name);
  absl::ConsumePrefix(&word, prefix);
  return absl::AsciiStrToLower(word);
}

void Table::Row(const std::string& line) {
  if (!started_) std::cout << header_ << "\n";
  started_ = true;
  std::cout << line << "\n";
}

std::string FormatTime(const google::protobuf::Timestamp& time) {
  if (time.seconds() == 0 && time.nanos() == 0) return "-";
  return absl::FormatTime("%Y-%m-%d %H:%M:%SZ", FromTimestamp(time), absl::UTCTimeZone());
}

}  // namespace parley::cli
