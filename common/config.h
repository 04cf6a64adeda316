// Command-line flags and PARLEY_* environment variables, in one place per binary.
//
// Each server fills a plain config struct from a `Flags` declaration in its main.cc and
// passes the struct down; nothing deeper reads the environment. (The CLI declares each
// command's flags next to the command and parses them per command.) Precedence is
// flag > environment > default. A flag `--grpc_addr` is also read from the variable
// `PARLEY_GRPC_ADDR`.
//
//   ServerOptions options;
//   Flags flags("parley-store", "Owns every Postgres table.");
//   flags.HostPort("grpc_addr", &options.grpc_addr, "gRPC listen address");
//   std::vector<std::string> args = ParseFlagsOrExit(flags, argc, argv, ProcessEnvironment());
//
// Errors (unknown flag, missing or malformed value, value out of range) name the flag or
// variable and what was expected. `ParseFlagsOrExit` prints them and exits with status 2;
// `--help` prints every option with its variable, default and help, and exits 0.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace parley {

using Environment = std::map<std::string, std::string, std::less<>>;

// The PARLEY_* and OTEL_* variables of this process. Call from main() (or the CLI's argument
// parser) only.
Environment ProcessEnvironment();

// The environment variable that backs a flag: "grpc_addr" -> "PARLEY_GRPC_ADDR".
std::string EnvVarForFlag(absl::string_view flag);

class Flags {
 public:
  Flags(std::string program, std::string summary);

  // Each declaration binds a flag to a target whose current value is the default.
  // Targets must outlive Parse().
  // `validate`, when given, checks the value before it is stored.
  void String(std::string name, std::string* target, std::string help,
              std::function<absl::Status(absl::string_view)> validate = nullptr);
  void Int(std::string name, int64_t* target, std::string help, int64_t min, int64_t max);
  void Bool(std::string name, bool* target, std::string help);
  // Accepts Go-style durations: "250ms", "5s", "1m30s".
  void Duration(std::string name, absl::Duration* target, std::string help);
  // "host:port" or "[v6]:port" with a port in 0..65535 (0 = pick a free port).
  void HostPort(std::string name, std::string* target, std::string help);
  // One of a fixed set of values.
  void Choice(std::string name, std::string* target, std::string help,
              std::vector<std::string> choices);

  // Applies environment values, then argv flags (argv[0] is skipped). Returns the
  // positional arguments in order. `--` ends flag parsing. Sets help_requested()
  // on --help/-h and stops. A dash in a flag's name may stand for an underscore
  // (--from-latest is --from_latest).
  absl::StatusOr<std::vector<std::string>> Parse(int argc, const char* const* argv,
                                                 const Environment& env);

  bool help_requested() const { return help_requested_; }
  std::string Usage() const;
  const std::string& program() const { return program_; }

 private:
  struct Option {
    std::string name;
    std::string help;
    std::string default_text;
    bool is_bool = false;
    // Parses and stores the value; returns an error describing what was expected.
    std::function<absl::Status(absl::string_view)> set;
  };
  void Add(Option option);
  const Option* Find(absl::string_view name) const;

  std::string program_;
  std::string summary_;
  std::vector<Option> options_;
  bool help_requested_ = false;
};

// Parses or exits: --help prints usage to stdout and exits 0; any error prints
// "<program>: <error>" and a hint to stderr and exits 2. Positional arguments are an
// error unless `allow_positional`.
std::vector<std::string> ParseFlagsOrExit(Flags& flags, int argc, const char* const* argv,
                                          const Environment& env, bool allow_positional = false);

// Validator for String(): rejects "".
absl::Status ValidateNonEmpty(absl::string_view value);

// Validates "host:port"; exposed for tests and for values read from files.
absl::Status ValidateHostPort(absl::string_view value);

}  // namespace parley
