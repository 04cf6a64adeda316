// Structured logs: one JSON object per line on stderr.
//
//   Logger log("parley-gateway", LogLevel::kInfo);
//   log.Info("turn started", {{"session_id", id}, {"step", 3}}, &trace);
//   // {"ts":"...","level":"info","service":"parley-gateway","msg":"turn started",
//   //  "trace_id":"...","span_id":"...","session_id":"ses_...","step":3}
//
// Every line carries `trace_id` and `span_id`: of the TraceContext given, else of the
// thread's current ContextScope (tracer.h), so code running a turn or an RPC need not
// pass one. A LogScope adds fields (session_id, turn_id) to every line of its thread. Secrets
// never reach a log: a value wrapped in Secret prints as "[REDACTED]", and so does any
// field whose key names a credential (authorization, api_key, secret, password, token).
// A credential logged by mistake under an innocent key or inside a message is caught by
// its shape (RedactCredentials): Parley API keys and the providers' keys.
// Thread-safe; each line is written with a single write(2), so lines from different
// threads never interleave.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "telemetry/trace_context.h"

namespace parley::telemetry {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };

absl::StatusOr<LogLevel> ParseLogLevel(absl::string_view text);

// What every redacted credential becomes, in logs, errors and captured bodies alike.
inline constexpr absl::string_view kRedacted = "[REDACTED]";

// A credential. Logging it prints "[REDACTED]".
struct Secret {
  std::string value;
};

struct LogField {
  using Value = std::variant<std::string, int64_t, double, bool, Secret>;
  LogField(absl::string_view key, absl::string_view value) : key(key), value(std::string(value)) {}
  LogField(absl::string_view key, const char* value) : key(key), value(std::string(value)) {}
  LogField(absl::string_view key, const std::string& value) : key(key), value(value) {}
  LogField(absl::string_view key, int value) : key(key), value(int64_t{value}) {}
  LogField(absl::string_view key, int64_t value) : key(key), value(value) {}
  LogField(absl::string_view key, uint64_t value) : key(key), value(static_cast<int64_t>(value)) {}
  LogField(absl::string_view key, double value) : key(key), value(value) {}
  LogField(absl::string_view key, bool value) : key(key), value(value) {}
  LogField(absl::string_view key, Secret value) : key(key), value(std::move(value)) {}
  std::string key;
  Value value;
};

// Fields added to every line logged on this thread while the scope is open, outer
// scopes' first; a field given to the call itself wins over a scope's of the same key.
//
//   LogScope scope({{"session_id", turn.session_id()}, {"turn_id", turn.id()}});
//
// Work handed to another thread takes the fields along: LogScope scope(fields_copy)
// there, with fields_copy = LogScope::Current() taken here.
class LogScope {
 public:
  explicit LogScope(std::vector<LogField> fields);
  ~LogScope();
  LogScope(const LogScope&) = delete;
  LogScope& operator=(const LogScope&) = delete;

  // Every open scope's fields on this thread, outermost first.
  static std::vector<LogField> Current();

 private:
  friend class Logger;
  std::vector<LogField> fields_;
  const LogScope* previous_;
};

class Logger {
 public:
  // Writes to `fd` (stderr by default); does not take ownership of it.
  Logger(std::string service, LogLevel min_level, int fd = 2);

  bool Enabled(LogLevel level) const { return level >= min_level_; }
  void Log(LogLevel level, absl::string_view message, std::initializer_list<LogField> fields = {},
           const TraceContext* trace = nullptr) const;

  void Debug(absl::string_view m, std::initializer_list<LogField> f = {},
             const TraceContext* t = nullptr) const {
    Log(LogLevel::kDebug, m, f, t);
  }
  void Info(absl::string_view m, std::initializer_list<LogField> f = {},
            const TraceContext* t = nullptr) const {
    Log(LogLevel::kInfo, m, f, t);
  }
  void Warn(absl::string_view m, std::initializer_list<LogField> f = {},
            const TraceContext* t = nullptr) const {
    Log(LogLevel::kWarn, m, f, t);
  }
  void Error(absl::string_view m, std::initializer_list<LogField> f = {},
             const TraceContext* t = nullptr) const {
    Log(LogLevel::kError, m, f, t);
  }

  // The line Log() would write, without the trailing newline. For tests.
  std::string Format(LogLevel level, absl::string_view message,
                     std::initializer_list<LogField> fields, const TraceContext* trace) const;

 private:
  std::string service_;
  LogLevel min_level_;
  int fd_;
};

// True for keys that name credentials and are therefore always redacted.
bool IsSensitiveKey(absl::string_view key);

// `text` with every credential-shaped token replaced by "[REDACTED]": Parley API keys
// (pk_<prefix>_<secret>), OpenAI-style keys (sk-..., sk-proj-..., sk-ant-... for
// Anthropic), Google API keys (AIza...), AWS access key ids (AKIA...), GitHub tokens
// (ghp_..., github_pat_...) and the credential after "Bearer ". A token is a run of
// [A-Za-z0-9_-] that starts at a word boundary and is long enough to be a key, so prose
// that merely mentions "sk-" or "pk_" is left alone.
std::string RedactCredentials(absl::string_view text);

// `text` with `secret` — a key the caller holds, e.g. the provider key of the request
// whose answer `text` is — replaced wherever it occurs (an error body may echo it), then
// every credential-shaped token (RedactCredentials). The one redaction of text that may
// hold a key the caller knows.
std::string RedactSecret(absl::string_view text, absl::string_view secret);

}  // namespace parley::telemetry
