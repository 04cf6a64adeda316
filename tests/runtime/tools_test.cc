// The pieces of the built-in tools that need no sandbox: argument checks against each
// tool's schema, and the cap on what goes back to the model.
#include <gtest/gtest.h>

#include <string>

#include "absl/strings/match.h"
#include "session-svc/tools/schema.h"
#include "session-svc/tools/tool.h"

namespace parley::session::tools {
namespace {

TEST(ToolArguments, EachBuiltinToolChecksItsSchemaAndNamesTheField) {
  const Tool* bash = FindBuiltinTool("bash");
  ASSERT_NE(bash, nullptr);
  EXPECT_TRUE(CheckArguments(bash->schema(), R"({"command": "ls", "timeout_ms": 5})").ok());
  auto error = [&](const Tool* tool, const char* json) {
    absl::StatusOr<nlohmann::json> checked = CheckArguments(tool->schema(), json);
    EXPECT_FALSE(checked.ok()) << json;
    return checked.ok() ? std::string() : std::string(checked.status().message());
  };
  EXPECT_EQ(error(bash, R"({})"), "arguments.command: required");
  EXPECT_EQ(error(bash, R"({"command": ""})"), "arguments.command: must be at least 1 bytes");
  EXPECT_EQ(error(bash, R"({"command": "ls", "timeout_ms": 0})"),
            "arguments.timeout_ms: must be at least 1");
  EXPECT_EQ(error(bash, R"({"command": "ls", "timeout_ms": "5"})"),
            "arguments.timeout_ms: must be integer");
  EXPECT_EQ(error(bash, R"([1, 2])"), "arguments: must be object");
  EXPECT_EQ(error(bash, "{\"command\": "), "arguments: not valid JSON");
  const Tool* edit = FindBuiltinTool("edit_file");
  ASSERT_NE(edit, nullptr);
  EXPECT_EQ(error(edit, R"({"path": "a", "old_string": "", "new_string": "b"})"),
            "arguments.old_string: must be at least 1 bytes");
  EXPECT_EQ(FindBuiltinTool("rm_rf"), nullptr);
  for (const char* name : {"bash", "read_file", "write_file", "edit_file", "list_files"}) {
    const Tool* tool = FindBuiltinTool(name);
    ASSERT_NE(tool, nullptr) << name;
    EXPECT_TRUE(tool->needs_sandbox()) << name;
    EXPECT_FALSE(tool->spec().description.empty()) << name;
  }
  EXPECT_TRUE(FindBuiltinTool("read_file")->read_only());
  EXPECT_TRUE(FindBuiltinTool("list_files")->read_only());
  EXPECT_FALSE(FindBuiltinTool("bash")->read_only());
  EXPECT_FALSE(FindBuiltinTool("write_file")->read_only());
}

TEST(ToolOutput, WhatGoesBackToTheModelKeepsHeadAndTailAndSaysWhatWasCut) {
  EXPECT_EQ(CapForModel("short", 100), "short");
  std::string long_output =
      std::string(1000, 'h') + std::string(1000, 'm') + std::string(1000, 't');
  std::string capped = CapForModel(long_output, 200);
  EXPECT_TRUE(absl::StartsWith(capped, std::string(100, 'h'))) << capped;
  EXPECT_TRUE(absl::EndsWith(capped, std::string(100, 't'))) << capped;
  EXPECT_TRUE(absl::StrContains(capped, "[... 2800 bytes cut")) << capped;
  EXPECT_FALSE(absl::StrContains(capped, "m"));
  // Bytes the tool cut before (bash keeps only the head and tail of a huge output) are
  // part of the count.
  EXPECT_TRUE(absl::StrContains(CapForModel(long_output, 200, 5000), "[... 7800 bytes cut"));
  // A cut never splits a UTF-8 character: "é" is two bytes.
  std::string accents;
  for (int i = 0; i < 500; ++i) accents += "\xC3\xA9";
  std::string cut = CapForModel(accents, 101);
  const size_t marker = cut.find("\n[...");
  ASSERT_NE(marker, std::string::npos);
  EXPECT_EQ(marker % 2, 0u);
  EXPECT_EQ((cut.size() - cut.rfind("]\n") - 2) % 2, 0u);
}

}  // namespace
}  // namespace parley::session::tools
