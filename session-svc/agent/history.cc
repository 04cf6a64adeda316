// Repair is one pass over the messages: results are collected by call id first, then
// the conversation is rebuilt with each call's result right after its message.
#include "session-svc/agent/history.h"

#include <nlohmann/json.hpp>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"

namespace parley::session {
namespace {

constexpr char kMissingResult[] =
    "[no result was recorded for this tool call; it may not have run]";

bool IsJsonObject(const std::string& text) {
  nlohmann::json parsed = nlohmann::json::parse(text, nullptr, false);
  return parsed.is_object();
}

}  // namespace

std::vector<v1::Message> RepairHistory(std::vector<v1::Message> messages, int* repairs) {
  int changed = 0;
  // The first result recorded for each call id, wherever it is.
  absl::flat_hash_map<std::string, v1::ToolResult> results;
  for (const v1::Message& message : messages) {
    if (message.role() != v1::ROLE_TOOL) continue;
    for (const v1::Part& part : message.parts()) {
      if (part.has_tool_result())
        results.try_emplace(part.tool_result().call_id(), part.tool_result());
    }
  }
  absl::flat_hash_set<std::string> seen_calls;
  std::vector<v1::Message> out;
  out.reserve(messages.size());
  size_t tool_parts_seen = 0, tool_parts_kept = 0;
  for (v1::Message& message : messages) {
    if (message.role() == v1::ROLE_TOOL) {
      tool_parts_seen += message.parts_size();
      continue;  // Rebuilt after the assistant message it answers.
    }
    if (message.role() != v1::ROLE_ASSISTANT) {
      if (message.parts_size() > 0) {
        out.push_back(std::move(message));
      } else {
        ++changed;
      }
      continue;
    }
    v1::Message assistant = message;
    assistant.clear_parts();
    v1::Message answers;
    answers.set_role(v1::ROLE_TOOL);
    answers.set_session_id(message.session_id());
    answers.set_turn_id(message.turn_id());
    for (v1::Part& part : *message.mutable_parts()) {
      if (!part.has_tool_call()) {
        *assistant.add_parts() = std::move(part);
        continue;
      }
      v1::ToolCall& call = *part.mutable_tool_call();
      if (!seen_calls.insert(call.call_id()).second) {
        ++changed;  // A call id used again: the first one stands.
        continue;
      }
      if (!IsJsonObject(call.arguments_json())) {
        call.set_arguments_json("{}");
        ++changed;
      }
      v1::ToolResult result;
      if (auto it = results.find(call.call_id()); it != results.end()) {
        result = it->second;
        ++tool_parts_kept;
      } else {
        result.set_call_id(call.call_id());
        result.set_output(kMissingResult);
        result.set_is_error(true);
        ++changed;
      }
      *answers.add_parts()->mutable_tool_result() = std::move(result);
      *assistant.add_parts() = std::move(part);
    }
    if (assistant.parts_size() == 0) {
      ++changed;
      continue;
    }
    out.push_back(std::move(assistant));
    if (answers.parts_size() > 0) out.push_back(std::move(answers));
  }
  // Results that answered no call (or answered one a second time) were left out.
  changed += static_cast<int>(tool_parts_seen - tool_parts_kept);
  if (repairs != nullptr) *repairs = changed;
  return out;
}

uint64_t EstimateTokens(const v1::Message& message) {
  uint64_t bytes = 0;
  for (const v1::Part& part : message.parts()) {
    bytes += part.text().size() + part.reasoning().size() + part.tool_call().name().size() +
             part.tool_call().arguments_json().size() + part.tool_result().output().size();
    if (part.has_image() || part.has_file()) bytes += 1024 * 4;  // Roughly 1k tokens each.
  }
  return (bytes + 3) / 4 + 4;  // Plus the message's own framing.
}

HistoryWindow FitToBudget(std::vector<v1::Message> messages, uint64_t budget_tokens) {
  HistoryWindow window;
  uint64_t total = 0;
  for (const v1::Message& m : messages) total += EstimateTokens(m);
  if (budget_tokens == 0 || total <= budget_tokens) {
    window.estimated_tokens = total;
    window.messages = std::move(messages);
    return window;
  }
  // Walk back over whole turns (each starts at a user message) while they fit.
  size_t keep_from = messages.size();
  uint64_t kept = 0, turn_tokens = 0;
  for (size_t i = messages.size(); i-- > 0;) {
    turn_tokens += EstimateTokens(messages[i]);
    if (messages[i].role() != v1::ROLE_USER) continue;
    const bool newest = keep_from == messages.size();
    if (!newest && kept + turn_tokens > budget_tokens) break;
    kept += turn_tokens;
    turn_tokens = 0;
    keep_from = i;
  }
  window.dropped_messages = keep_from;
  window.estimated_tokens = kept;
  window.messages.assign(
      std::make_move_iterator(messages.begin() + static_cast<ptrdiff_t>(keep_from)),
      std::make_move_iterator(messages.end()));
  return window;
}

}  // namespace parley::session
