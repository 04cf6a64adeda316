#include "telemetry/log.h"

#include <unistd.h>

#include <cerrno>
#include <nlohmann/json.hpp>

#include "absl/container/inlined_vector.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "telemetry/tracer.h"

namespace parley::telemetry {
namespace {

absl::string_view LevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return "debug";
    case LogLevel::kInfo:
      return "info";
    case LogLevel::kWarn:
      return "warn";
    case LogLevel::kError:
      return "error";
  }
  return "info";
}

void WriteAll(int fd, absl::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // Nowhere left to report a failing log sink.
    data.remove_prefix(static_cast<size_t>(n));
  }
}

}  // namespace

absl::StatusOr<LogLevel> ParseLogLevel(absl::string_view text) {
  std::string lower = absl::AsciiStrToLower(text);
  if (lower == "debug") return LogLevel::kDebug;
  if (lower == "info") return LogLevel::kInfo;
  if (lower == "warn" || lower == "warning") return LogLevel::kWarn;
  if (lower == "error") return LogLevel::kError;
  return absl::InvalidArgumentError("expected debug, info, warn or error");
}

namespace {

bool IsTokenChar(char c) { return absl::ascii_isalnum(c) || c == '_' || c == '-'; }

// A credential's shape: what it starts with and how long the whole token must at least
// be (shorter runs are words, not keys).
struct CredentialShape {
  absl::string_view prefix;
  size_t min_length;
};

constexpr CredentialShape kCredentialShapes[] = {
    {"pk_", 16},          // Parley: pk_<12-char prefix>_<40-char secret>.
    {"sk-", 20},          // OpenAI (sk-, sk-proj-), Anthropic (sk-ant-), most OpenAI-compatibles.
    {"AIza", 30},         // Google.
    {"AKIA", 20},         // AWS access key id.
    {"ghp_", 20},         // GitHub.
    {"github_pat_", 30},  // GitHub fine-grained.
};

constexpr absl::string_view kBearer = "Bearer ";

}  // namespace

std::string RedactSecret(absl::string_view text, absl::string_view secret) {
  std::string out(text);
  if (!secret.empty()) absl::StrReplaceAll({{secret, kRedacted}}, &out);
  return RedactCredentials(out);
}

std::string RedactCredentials(absl::string_view text) {
  std::string out;
  size_t copied = 0;  // text[0, copied) is in `out` already.
  for (size_t i = 0; i < text.size(); ++i) {
    if (i > 0 && IsTokenChar(text[i - 1])) continue;  // Not at a word boundary.
    size_t start = i, min_length = 0;
    if (absl::StartsWithIgnoreCase(text.substr(i), kBearer)) {
      start = i + kBearer.size();
      min_length = 8;
    } else {
      for (const CredentialShape& shape : kCredentialShapes) {
        if (absl::StartsWith(text.substr(i), shape.prefix)) {
          min_length = shape.min_length;
          break;
        }
      }
    }
    if (min_length == 0) continue;
    size_t end = start;
    while (end < text.size() && (IsTokenChar(text[end]) || text[end] == '.')) ++end;
    if (end - start < min_length) continue;
    absl::StrAppend(&out, text.substr(copied, start - copied), kRedacted);
    copied = end;
    i = end;
  }
  if (copied == 0) return std::string(text);
  absl::StrAppend(&out, text.substr(copied));
  return out;
}

bool IsSensitiveKey(absl::string_view key) {
  const std::string lower = absl::AsciiStrToLower(key);
  for (absl::string_view word :
       {"authorization", "api_key", "apikey", "secret", "password", "token", "credential"}) {
    // "input_tokens" and friends are counts, not credentials.
    if (absl::StrContains(lower, word) && !absl::EndsWith(lower, "tokens")) {
      return true;
    }
  }
  return false;
}

namespace {
thread_local const LogScope* current_log_scope = nullptr;
}  // namespace

LogScope::LogScope(std::vector<LogField> fields)
    : fields_(std::move(fields)), previous_(current_log_scope) {
  current_log_scope = this;
}

LogScope::~LogScope() { current_log_scope = previous_; }

std::vector<LogField> LogScope::Current() {
  std::vector<const LogScope*> scopes;
  for (const LogScope* s = current_log_scope; s != nullptr; s = s->previous_) scopes.push_back(s);
  std::vector<LogField> fields;
  for (auto it = scopes.rbegin(); it != scopes.rend(); ++it) {
    fields.insert(fields.end(), (*it)->fields_.begin(), (*it)->fields_.end());
  }
  return fields;
}

Logger::Logger(std::string service, LogLevel min_level, int fd)
    : service_(std::move(service)), min_level_(min_level), fd_(fd) {}

std::string Logger::Format(LogLevel level, absl::string_view message,
                           std::initializer_list<LogField> fields,
                           const TraceContext* trace) const {
  nlohmann::ordered_json line;
  line["ts"] = absl::FormatTime("%Y-%m-%dT%H:%M:%E6SZ", absl::Now(), absl::UTCTimeZone());
  line["level"] = std::string(LevelName(level));
  line["service"] = service_;
  line["msg"] = RedactCredentials(message);
  std::optional<TraceContext> current;
  if (trace == nullptr && (current = ContextScope::Current()).has_value()) trace = &*current;
  if (trace != nullptr) {
    line["trace_id"] = trace->TraceIdHex();
    line["span_id"] = trace->SpanIdHex();
  }
  auto add = [&line](const LogField& field) {
    if (IsSensitiveKey(field.key) || std::holds_alternative<Secret>(field.value)) {
      line[field.key] = std::string(kRedacted);
      return;
    }
    std::visit(
        [&](const auto& value) {
          using T = std::decay_t<decltype(value)>;
          if constexpr (std::is_same_v<T, std::string>) {
            line[field.key] = RedactCredentials(value);
          } else if constexpr (!std::is_same_v<T, Secret>) {
            line[field.key] = value;
          }
        },
        field.value);
  };
  absl::InlinedVector<const LogScope*, 4> scopes;  // Innermost first.
  for (const LogScope* s = current_log_scope; s != nullptr; s = s->previous_) scopes.push_back(s);
  for (auto it = scopes.rbegin(); it != scopes.rend(); ++it) {
    for (const LogField& field : (*it)->fields_) add(field);
  }
  for (const LogField& field : fields) add(field);
  // Invalid UTF-8 in a message must not throw out of a log call.
  return line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

void Logger::Log(LogLevel level, absl::string_view message, std::initializer_list<LogField> fields,
                 const TraceContext* trace) const {
  if (!Enabled(level)) return;
  std::string text = Format(level, message, fields, trace);
  text.push_back('\n');
  WriteAll(fd_, text);
}

}  // namespace parley::telemetry
