// Flag and environment parsing. Kept dependency-free (no absl flags) because Parley
// needs exit status 2 on every bad input and PARLEY_* variables as a second source,
// neither of which absl's global flag registry offers.
#include "common/config.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <optional>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/strip.h"

extern char** environ;

namespace parley {

Environment ProcessEnvironment() {
  Environment env;
  for (char** entry = environ; entry != nullptr && *entry != nullptr; ++entry) {
    absl::string_view kv(*entry);
    if (!absl::StartsWith(kv, "PARLEY_") && !absl::StartsWith(kv, "OTEL_")) continue;
    size_t eq = kv.find('=');
    if (eq == absl::string_view::npos) continue;
    env.emplace(std::string(kv.substr(0, eq)), std::string(kv.substr(eq + 1)));
  }
  return env;
}

std::string EnvVarForFlag(absl::string_view flag) {
  return absl::StrCat("PARLEY_", absl::AsciiStrToUpper(flag));
}

absl::Status ValidateHostPort(absl::string_view value) {
  size_t colon = value.rfind(':');
  if (colon == absl::string_view::npos || colon == 0) {
    return absl::InvalidArgumentError("expected host:port");
  }
  absl::string_view host = value.substr(0, colon);
  if (host.front() == '[' && host.back() != ']') {
    return absl::InvalidArgumentError("expected [ipv6]:port");
  }
  int port = 0;
  if (!absl::SimpleAtoi(value.substr(colon + 1), &port) || port < 0 || port > 65535) {
    return absl::InvalidArgumentError("expected a port number in 0..65535");
  }
  return absl::OkStatus();
}

Flags::Flags(std::string program, std::string summary)
    : program_(std::move(program)), summary_(std::move(summary)) {}

void Flags::Add(Option option) { options_.push_back(std::move(option)); }

const Flags::Option* Flags::Find(absl::string_view name) const {
  // "--from-latest" and "--from_latest" name the same flag.
  const std::string canonical = absl::StrReplaceAll(name, {{"-", "_"}});
  for (const Option& option : options_) {
    if (option.name == canonical) return &option;
  }
  return nullptr;
}

void Flags::String(std::string name, std::string* target, std::string help,
                   std::function<absl::Status(absl::string_view)> validate) {
  Add({name, std::move(help), *target, false, [target, validate](absl::string_view v) {
         if (validate) {
           absl::Status status = validate(v);
           if (!status.ok()) return status;
         }
         *target = std::string(v);
         return absl::OkStatus();
       }});
}

void Flags::Int(std::string name, int64_t* target, std::string help, int64_t min, int64_t max) {
  Add({name, std::move(help), absl::StrCat(*target), false,
       [target, min, max](absl::string_view v) {
         int64_t parsed = 0;
         if (!absl::SimpleAtoi(v, &parsed)) {
           return absl::InvalidArgumentError("expected an integer");
         }
         if (parsed < min || parsed > max) {
           return absl::InvalidArgumentError(absl::StrCat("must be between ", min, " and ", max));
         }
         *target = parsed;
         return absl::OkStatus();
       }});
}

void Flags::Bool(std::string name, bool* target, std::string help) {
  Add({name, std::move(help), *target ? "true" : "false", true, [target](absl::string_view v) {
         std::string lower = absl::AsciiStrToLower(v);
         if (lower == "true" || lower == "1" || lower == "yes") {
           *target = true;
         } else if (lower == "false" || lower == "0" || lower == "no") {
           *target = false;
         } else {
           return absl::InvalidArgumentError("expected true or false");
         }
         return absl::OkStatus();
       }});
}

void Flags::Duration(std::string name, absl::Duration* target, std::string help) {
  Add({name, std::move(help), absl::FormatDuration(*target), false, [target](absl::string_view v) {
         absl::Duration parsed;
         if (!absl::ParseDuration(v, &parsed) || parsed < absl::ZeroDuration()) {
           return absl::InvalidArgumentError(
               "expected a non-negative duration such as 250ms, 5s or 1m30s");
         }
         *target = parsed;
         return absl::OkStatus();
       }});
}

void Flags::HostPort(std::string name, std::string* target, std::string help) {
  Add({name, std::move(help), *target, false, [target](absl::string_view v) {
         absl::Status status = ValidateHostPort(v);
         if (!status.ok()) return status;
         *target = std::string(v);
         return absl::OkStatus();
       }});
}

void Flags::Choice(std::string name, std::string* target, std::string help,
                   std::vector<std::string> choices) {
  std::string listed = absl::StrJoin(choices, "|");
  Add({name, absl::StrCat(help, " (", listed, ")"), *target, false,
       [target, choices = std::move(choices), listed](absl::string_view v) {
         for (const std::string& choice : choices) {
           if (choice == v) {
             *target = choice;
             return absl::OkStatus();
           }
         }
         return absl::InvalidArgumentError(absl::StrCat("expected one of ", listed));
       }});
}

absl::StatusOr<std::vector<std::string>> Flags::Parse(int argc, const char* const* argv,
                                                      const Environment& env) {
  for (const Option& option : options_) {
    std::string var = EnvVarForFlag(option.name);
    auto it = env.find(var);
    if (it == env.end()) continue;
    absl::Status status = option.set(it->second);
    if (!status.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("bad value in environment ", var, "=\"",
                                                     it->second, "\": ", status.message()));
    }
  }

  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg(argv[i]);
    if (arg == "--") {
      for (++i; i < argc; ++i) positional.emplace_back(argv[i]);
      break;
    }
    if (arg == "--help" || arg == "-h" || arg == "-help") {
      help_requested_ = true;
      return positional;
    }
    if (!absl::StartsWith(arg, "-") || arg == "-") {
      positional.emplace_back(arg);
      continue;
    }
    absl::string_view body = absl::StripPrefix(absl::StripPrefix(arg, "-"), "-");
    absl::string_view name = body;
    std::optional<absl::string_view> value;
    if (size_t eq = body.find('='); eq != absl::string_view::npos) {
      name = body.substr(0, eq);
      value = body.substr(eq + 1);
    }
    const Option* option = Find(name);
    bool negated = false;
    if (option == nullptr && absl::StartsWith(name, "no")) {
      const Option* positive = Find(name.substr(2));
      if (positive != nullptr && positive->is_bool && !value) {
        option = positive;
        negated = true;
      }
    }
    if (option == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name));
    }
    if (!value) {
      if (option->is_bool) {
        value = negated ? "false" : "true";
      } else if (i + 1 < argc) {
        value = argv[++i];
      } else {
        return absl::InvalidArgumentError(absl::StrCat("flag --", name, " needs a value"));
      }
    }
    absl::Status status = option->set(*value);
    if (!status.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("bad value for --", name, "=\"", *value, "\": ", status.message()));
    }
  }
  return positional;
}

std::string Flags::Usage() const {
  std::string out = absl::StrCat("Usage: ", program_, " [flags]\n\n", summary_, "\n\nFlags:\n");
  for (const Option& option : options_) {
    absl::StrAppend(&out, "  --", option.name, " (env ", EnvVarForFlag(option.name), ")\n      ",
                    option.help, "\n      default: \"", option.default_text, "\"\n");
  }
  absl::StrAppend(&out, "  --help\n      print this message and exit\n");
  return out;
}

absl::Status ValidateNonEmpty(absl::string_view value) {
  return value.empty() ? absl::InvalidArgumentError("must not be empty") : absl::OkStatus();
}

std::vector<std::string> ParseFlagsOrExit(Flags& flags, int argc, const char* const* argv,
                                          const Environment& env, bool allow_positional) {
  absl::StatusOr<std::vector<std::string>> parsed = flags.Parse(argc, argv, env);
  if (parsed.ok() && !allow_positional && !parsed->empty() && !flags.help_requested()) {
    parsed =
        absl::InvalidArgumentError(absl::StrCat("unexpected argument \"", parsed->front(), "\""));
  }
  if (!parsed.ok()) {
    std::cerr << flags.program() << ": " << parsed.status().message() << "\n"
              << "Run '" << flags.program() << " --help' for the list of flags.\n";
    std::exit(2);
  }
  if (flags.help_requested()) {
    std::cout << flags.Usage();
    std::exit(0);
  }
  return *std::move(parsed);
}

}  // namespace parley
