// Tool: one thing the model can do in the session's sandbox, and the built-in set.
//
// A tool declares its schema (what the model is told) and whether it only reads (such
// calls of one step run in parallel); Run() does the work. A tool that fails in a way
// the model can act on (file not found, non-zero exit, no match to edit) returns a
// ToolRun with is_error; a non-OK status means the tool could not run at all (the
// sandbox is gone or unreachable, the turn is stopping), which the agent loop reports.
//
//   const Tool* bash = FindBuiltinTool("bash");
//   absl::StatusOr<nlohmann::json> args = CheckArguments(bash->schema(), call.arguments_json());
//   absl::StatusOr<ToolRun> run = bash->Run(*args, context);
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "session-svc/model/model.h"
#include "session-svc/tools/session_sandbox.h"
#include "session-svc/turn/turn_control.h"

namespace parley::session::tools {

// What a running tool may use.
struct ToolContext {
  // The session's sandbox, attached before sandbox tools run; null when none is needed.
  SessionSandbox* sandbox = nullptr;
  StopSignal& stop;
  // The tool's wall-clock limit (the smaller of the per-tool limit and the turn's time
  // left).
  absl::Duration timeout;
  // Output as it is produced (bash). Called on the thread running the tool.
  SessionSandbox::OutputFn on_output;
};

struct ToolRun {
  // Everything the tool has to say; the loop caps what goes back to the model.
  std::string output;
  bool is_error = false;
  // Bytes the tool cut from `output` already (bash keeps only the head and tail of a
  // very long output); counted in the model's cut marker.
  uint64_t already_cut = 0;
};

class Tool {
 public:
  virtual ~Tool() = default;
  virtual const model::ToolSpec& spec() const = 0;
  const std::string& name() const { return spec().name; }
  // The parsed JSON schema of the arguments.
  virtual const nlohmann::json& schema() const = 0;
  // True when the tool changes nothing: calls of one step may run in parallel.
  virtual bool read_only() const = 0;
  virtual bool needs_sandbox() const { return true; }
  // Thread-safe (read-only tools run concurrently).
  virtual absl::StatusOr<ToolRun> Run(const nlohmann::json& arguments,
                                      ToolContext& context) const = 0;
};

// The built-in tools: "bash", "read_file", "write_file", "edit_file", "list_files", and
// "scripted_wait" (the scripted model's own: it waits, no sandbox). Null when unknown.
const Tool* FindBuiltinTool(absl::string_view name);

// `output` as the model gets it: at most `max_bytes`, keeping the head and the tail
// with a line saying how much was cut in between (cuts never split a UTF-8 character),
// `already_cut` bytes (cut before) included.
std::string CapForModel(absl::string_view output, size_t max_bytes, uint64_t already_cut = 0);

}  // namespace parley::session::tools
