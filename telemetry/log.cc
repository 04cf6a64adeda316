#include "telemetry/log.h"

#include <unistd.h>

#include <cerrno>
#include <nlohmann/json.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace parley::telemetry {
namespace {

constexpr absl::string_view kRedacted = "[REDACTED]";

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

Logger::Logger(std::string service, LogLevel min_level, int fd)
    : service_(std::move(service)), min_level_(min_level), fd_(fd) {}

std::string Logger::Format(LogLevel level, absl::string_view message,
                           std::initializer_list<LogField> fields,
                           const TraceContext* trace) const {
  nlohmann::ordered_json line;
  line["ts"] = absl::FormatTime("%Y-%m-%dT%H:%M:%E6SZ", absl::Now(), absl::UTCTimeZone());
  line["level"] = std::string(LevelName(level));
  line["service"] = service_;
  line["msg"] = std::string(message);
  if (trace != nullptr) {
    line["trace_id"] = trace->TraceIdHex();
    line["span_id"] = trace->SpanIdHex();
  }
  for (const LogField& field : fields) {
    if (IsSensitiveKey(field.key) || std::holds_alternative<Secret>(field.value)) {
      line[field.key] = std::string(kRedacted);
      continue;
    }
    std::visit(
        [&](const auto& value) {
          if constexpr (!std::is_same_v<std::decay_t<decltype(value)>, Secret>) {
            line[field.key] = value;
          }
        },
        field.value);
  }
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
