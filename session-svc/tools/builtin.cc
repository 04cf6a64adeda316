// The built-in tools. Each is a schema plus a few sandbox calls; what they tell the model
// is written for a model to act on: what happened, and on failure what to try instead.
#include <algorithm>
#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "session-svc/model/scripted.h"
#include "session-svc/tools/schema.h"
#include "session-svc/tools/tool.h"

namespace parley::session::tools {
namespace {

using nlohmann::json;

// Largest file read_file and edit_file handle whole.
constexpr uint64_t kMaxFileBytes = 1 << 20;
// What a tool keeps of a long output before the model's cap applies: head and tail.
constexpr size_t kKeepBytes = 256 << 10;

// A tool defined by its spec; subclasses implement Run().
class BuiltinTool : public Tool {
 public:
  BuiltinTool(std::string name, std::string description, std::string schema, bool read_only)
      : spec_{std::move(name), std::move(description), std::move(schema)},
        schema_(json::parse(spec_.parameters_json_schema)),
        read_only_(read_only) {}
  const model::ToolSpec& spec() const override { return spec_; }
  const json& schema() const override { return schema_; }
  bool read_only() const override { return read_only_; }

 private:
  const model::ToolSpec spec_;
  const json schema_;
  const bool read_only_;
};

ToolRun Failed(std::string text) { return ToolRun{.output = std::move(text), .is_error = true}; }

// A failed sandbox operation: the ones that say nothing about the tool's input (the
// sandbox is gone or unreachable, the turn is stopping) are the loop's to report.
absl::StatusOr<ToolRun> OperationFailed(const absl::Status& status, absl::string_view what) {
  if (IsSandboxGone(status) || status.code() == absl::StatusCode::kUnavailable ||
      status.code() == absl::StatusCode::kCancelled) {
    return status;
  }
  if (status.code() == absl::StatusCode::kDeadlineExceeded) {
    return Failed(absl::StrCat(what, ": timed out"));
  }
  return Failed(absl::StrCat(what, ": ", status.message()));
}

bool IsUtf8(absl::string_view text) {
  for (size_t i = 0; i < text.size();) {
    const auto c = static_cast<unsigned char>(text[i]);
    const size_t n = c < 0x80           ? 1
                     : (c >> 5) == 0x6  ? 2
                     : (c >> 4) == 0xE  ? 3
                     : (c >> 3) == 0x1E ? 4
                                        : 0;
    if (n == 0 || i + n > text.size()) return false;
    for (size_t k = 1; k < n; ++k) {
      if ((static_cast<unsigned char>(text[i + k]) >> 6) != 0x2) return false;
    }
    i += n;
  }
  return true;
}

// Keeps the head and the tail of a stream that may be far longer than memory allows.
class HeadTail {
 public:
  void Append(absl::string_view data) {
    total_ += data.size();
    const size_t to_head = std::min(data.size(), kKeepBytes - std::min(kKeepBytes, head_.size()));
    absl::StrAppend(&head_, data.substr(0, to_head));
    absl::StrAppend(&tail_, data.substr(to_head));
    if (tail_.size() > 2 * kKeepBytes) tail_.erase(0, tail_.size() - kKeepBytes);
  }
  std::string Text() const {
    const size_t tail = std::min(tail_.size(), kKeepBytes);
    const uint64_t cut = total_ - head_.size() - tail;
    if (cut == 0) return head_ + tail_;
    return absl::StrCat(head_, "\n[... ", cut, " bytes cut ...]\n",
                        tail_.substr(tail_.size() - tail));
  }
  uint64_t total() const { return total_; }

 private:
  std::string head_, tail_;
  uint64_t total_ = 0;
};

class BashTool final : public BuiltinTool {
 public:
  BashTool()
      : BuiltinTool("bash",
                    "Run a bash command in the session's sandbox, in the workspace directory. "
                    "Returns stdout and stderr as they were written, and the exit code when it "
                    "is not 0. Files persist between calls; the network may be off.",
                    R"({"type":"object","properties":{
                        "command":{"type":"string","minLength":1,"maxLength":65536,
                                   "description":"The command, run with bash -c."},
                        "timeout_ms":{"type":"integer","minimum":1,"maximum":3600000,
                                      "description":"Wall-clock limit; the process tree is killed after it."}},
                        "required":["command"],"additionalProperties":false})",
                    /*read_only=*/false) {}

  absl::StatusOr<ToolRun> Run(const json& arguments, ToolContext& context) const override {
    absl::Duration timeout = context.timeout;
    if (arguments.contains("timeout_ms")) {
      timeout = std::min(timeout, absl::Milliseconds(arguments["timeout_ms"].get<int64_t>()));
    }
    HeadTail output;
    absl::StatusOr<v1::ExecExit> exit =
        context.sandbox->Exec({"bash", "-c", arguments["command"].get<std::string>()}, timeout,
                              [&](v1::OutputStream stream, const std::string& data) {
                                output.Append(data);
                                if (context.on_output) context.on_output(stream, data);
                              });
    if (!exit.ok()) return OperationFailed(exit.status(), "bash");
    ToolRun run{.output = output.Text()};
    // What the model's marker must count beyond what it cuts itself: every byte of the
    // real output not in this text (the text's own marker line counts as cut).
    run.already_cut = output.total() > run.output.size() ? output.total() - run.output.size() : 0;
    if (output.total() == 0) run.output = "(no output)";
    if (exit->timed_out()) {
      absl::StrAppend(&run.output, "\n[timed out after ", absl::FormatDuration(timeout),
                      ": the command and its processes were killed]");
      run.is_error = true;
    } else if (exit->signal() != 0) {
      absl::StrAppend(&run.output, "\n[killed by signal ", exit->signal(), "]");
      run.is_error = true;
    } else if (exit->exit_code() != 0) {
      absl::StrAppend(&run.output, "\n[exit code ", exit->exit_code(), "]");
      run.is_error = true;
    }
    return run;
  }
};

class ReadFileTool final : public BuiltinTool {
 public:
  ReadFileTool()
      : BuiltinTool("read_file",
                    "Read a text file of the workspace. Optionally only some lines: offset is "
                    "the first line (1-based), limit the number of lines.",
                    R"({"type":"object","properties":{
                        "path":{"type":"string","minLength":1,"maxLength":4096,
                                "description":"Path relative to the workspace."},
                        "offset":{"type":"integer","minimum":1},
                        "limit":{"type":"integer","minimum":1}},
                        "required":["path"],"additionalProperties":false})",
                    /*read_only=*/true) {}

  absl::StatusOr<ToolRun> Run(const json& arguments, ToolContext& context) const override {
    const std::string path = arguments["path"].get<std::string>();
    uint64_t size = 0;
    absl::StatusOr<std::string> content =
        context.sandbox->ReadFile(path, kMaxFileBytes, &size, context.timeout);
    if (!content.ok()) return OperationFailed(content.status(), path);
    if (!IsUtf8(*content)) {
      return Failed(
          absl::StrCat(path, " is not a text file (", size, " bytes); use bash to inspect it"));
    }
    std::string text = *std::move(content);
    if (arguments.contains("offset") || arguments.contains("limit")) {
      const int64_t first = arguments.value("offset", int64_t{1});
      const int64_t limit = arguments.value("limit", int64_t{1} << 40);
      std::vector<absl::string_view> lines = absl::StrSplit(text, '\n');
      std::string selected;
      for (int64_t i = first - 1;
           i >= 0 && i < static_cast<int64_t>(lines.size()) && i < first - 1 + limit; ++i) {
        absl::StrAppend(&selected, lines[i], "\n");
      }
      text = std::move(selected);
    }
    if (size > kMaxFileBytes) {
      absl::StrAppend(&text, "\n[the file has ", size, " bytes; only the first ", kMaxFileBytes,
                      " were read]");
    }
    return ToolRun{.output = std::move(text)};
  }
};

class WriteFileTool final : public BuiltinTool {
 public:
  WriteFileTool()
      : BuiltinTool("write_file",
                    "Create or replace a file of the workspace with the given content. Missing "
                    "parent directories are created.",
                    R"({"type":"object","properties":{
                        "path":{"type":"string","minLength":1,"maxLength":4096},
                        "content":{"type":"string","maxLength":8388608}},
                        "required":["path","content"],"additionalProperties":false})",
                    /*read_only=*/false) {}

  absl::StatusOr<ToolRun> Run(const json& arguments, ToolContext& context) const override {
    const std::string path = arguments["path"].get<std::string>();
    const std::string& content = arguments["content"].get_ref<const std::string&>();
    absl::Status written = context.sandbox->WriteFile(path, content, context.timeout);
    if (!written.ok()) return OperationFailed(written, path);
    return ToolRun{.output = absl::StrCat("wrote ", content.size(), " bytes to ", path)};
  }
};

class EditFileTool final : public BuiltinTool {
 public:
  EditFileTool()
      : BuiltinTool("edit_file",
                    "Replace one exact occurrence of old_string with new_string in a file. "
                    "Fails when old_string does not occur or occurs more than once: include "
                    "enough surrounding text to make it unique.",
                    R"({"type":"object","properties":{
                        "path":{"type":"string","minLength":1,"maxLength":4096},
                        "old_string":{"type":"string","minLength":1},
                        "new_string":{"type":"string"}},
                        "required":["path","old_string","new_string"],
                        "additionalProperties":false})",
                    /*read_only=*/false) {}

  absl::StatusOr<ToolRun> Run(const json& arguments, ToolContext& context) const override {
    const std::string path = arguments["path"].get<std::string>();
    const std::string& old_string = arguments["old_string"].get_ref<const std::string&>();
    const std::string& new_string = arguments["new_string"].get_ref<const std::string&>();
    uint64_t size = 0;
    absl::StatusOr<std::string> content =
        context.sandbox->ReadFile(path, kMaxFileBytes + 1, &size, context.timeout);
    if (!content.ok()) return OperationFailed(content.status(), path);
    if (size > kMaxFileBytes) {
      return Failed(absl::StrCat(path, " is larger than ", kMaxFileBytes,
                                 " bytes; edit it with bash instead"));
    }
    size_t matches = 0, at = 0;
    for (size_t pos = content->find(old_string); pos != std::string::npos;
         pos = content->find(old_string, pos + old_string.size())) {
      if (matches++ == 0) at = pos;
    }
    if (matches == 0) return Failed(absl::StrCat("old_string was not found in ", path));
    if (matches > 1) {
      return Failed(absl::StrCat("old_string occurs ", matches, " times in ", path,
                                 "; include more surrounding text so that it occurs once"));
    }
    content->replace(at, old_string.size(), new_string);
    absl::Status written = context.sandbox->WriteFile(path, *content, context.timeout);
    if (!written.ok()) return OperationFailed(written, path);
    return ToolRun{.output = absl::StrCat("edited ", path)};
  }
};

class ListFilesTool final : public BuiltinTool {
 public:
  ListFilesTool()
      : BuiltinTool("list_files",
                    "List a directory of the workspace (the workspace itself by default); "
                    "recursive lists the whole tree. Directories end with /.",
                    R"({"type":"object","properties":{
                        "path":{"type":"string","maxLength":4096},
                        "recursive":{"type":"boolean"}},
                        "additionalProperties":false})",
                    /*read_only=*/true) {}

  absl::StatusOr<ToolRun> Run(const json& arguments, ToolContext& context) const override {
    const std::string path = arguments.value("path", std::string());
    constexpr uint32_t kMaxEntries = 1000;
    absl::StatusOr<sandboxd::v1::ListDirResponse> listing = context.sandbox->ListFiles(
        path == "." ? "" : path, arguments.value("recursive", false), kMaxEntries, context.timeout);
    if (!listing.ok()) return OperationFailed(listing.status(), path.empty() ? "." : path);
    std::string text;
    for (const v1::FileInfo& entry : listing->entries()) {
      switch (entry.type()) {
        case v1::FILE_TYPE_DIRECTORY:
          absl::StrAppend(&text, entry.path(), "/\n");
          break;
        case v1::FILE_TYPE_SYMLINK:
          absl::StrAppend(&text, entry.path(), " -> ", entry.symlink_target(), "\n");
          break;
        default:
          absl::StrAppend(&text, entry.path(), " (", entry.size_bytes(), " bytes)\n");
      }
    }
    if (listing->entries().empty()) text = "(empty)";
    if (listing->truncated()) {
      absl::StrAppend(&text, "[more than ", kMaxEntries, " entries; list a subdirectory]");
    }
    return ToolRun{.output = std::move(text)};
  }
};

class ScriptedWaitTool final : public BuiltinTool {
 public:
  ScriptedWaitTool()
      : BuiltinTool(model::ScriptedProvider::kWaitTool,
                    "Wait the given number of milliseconds (the scripted model's own tool).",
                    R"({"type":"object","properties":{
                        "ms":{"type":"integer","minimum":0,"maximum":3600000}},
                        "required":["ms"],"additionalProperties":false})",
                    /*read_only=*/true) {}
  bool needs_sandbox() const override { return false; }

  absl::StatusOr<ToolRun> Run(const json& arguments, ToolContext& context) const override {
    const int64_t ms = arguments["ms"].get<int64_t>();
    if (!context.stop.WaitFor(absl::Milliseconds(ms))) {
      return absl::CancelledError("the turn is stopping");
    }
    return ToolRun{.output = absl::StrCat("waited ", ms, " ms")};
  }
};

}  // namespace

const Tool* FindBuiltinTool(absl::string_view name) {
  static const auto* const kTools = [] {
    auto* tools = new std::vector<std::unique_ptr<Tool>>();
    tools->push_back(std::make_unique<BashTool>());
    tools->push_back(std::make_unique<ReadFileTool>());
    tools->push_back(std::make_unique<WriteFileTool>());
    tools->push_back(std::make_unique<EditFileTool>());
    tools->push_back(std::make_unique<ListFilesTool>());
    tools->push_back(std::make_unique<ScriptedWaitTool>());
    return tools;
  }();
  for (const auto& tool : *kTools) {
    if (tool->name() == name) return tool.get();
  }
  return nullptr;
}

std::string CapForModel(absl::string_view output, size_t max_bytes, uint64_t already_cut) {
  if (output.size() <= max_bytes) return std::string(output);
  // Back off to a character boundary: never start or end inside a UTF-8 sequence.
  auto continuation = [&](size_t i) {
    return i < output.size() && (static_cast<unsigned char>(output[i]) >> 6) == 0x2;
  };
  size_t head = max_bytes / 2;
  while (head > 0 && continuation(head)) --head;
  size_t tail_start = output.size() - max_bytes / 2;
  while (tail_start < output.size() && continuation(tail_start)) ++tail_start;
  return absl::StrCat(output.substr(0, head), "\n[... ", tail_start - head + already_cut,
                      " bytes cut; the full output is in the tool's output events ...]\n",
                      output.substr(tail_start));
}

}  // namespace parley::session::tools
