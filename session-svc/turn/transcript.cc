// Folding events into messages. An assistant message collects a step's text,
// reasoning and tool calls; tool results go into a tool message after it; content
// arriving after a tool result starts the next assistant message.
#include "session-svc/turn/transcript.h"

#include <algorithm>

namespace parley::session {

v1::Message& Transcript::NewMessage(v1::Role role) {
  message_steps_.push_back(step_);
  v1::Message& message = messages_.emplace_back();
  message.set_role(role);
  return message;
}

v1::Message& Transcript::Assistant() {
  if (messages_.empty() || messages_.back().role() != v1::ROLE_ASSISTANT ||
      message_steps_.back() != step_) {
    return NewMessage(v1::ROLE_ASSISTANT);
  }
  return messages_.back();
}

void Transcript::AddUserMessage(const v1::Message& message) {
  NewMessage(v1::ROLE_USER) = message;
  committed_ = messages_.size();  // Never committed by the turn: stored already.
}

std::vector<v1::Message> Transcript::Uncommitted() const {
  return std::vector<v1::Message>(messages_.begin() + static_cast<ptrdiff_t>(committed_),
                                  messages_.end());
}

void Transcript::MarkStepsCommitted(uint32_t steps) {
  while (committed_ < messages_.size() && message_steps_[committed_] < steps) ++committed_;
}

void Transcript::AppendText(v1::Message& message, bool reasoning, const std::string& text) {
  const v1::Part::KindCase kind = reasoning ? v1::Part::kReasoning : v1::Part::kText;
  if (message.parts_size() == 0 || message.parts().rbegin()->kind_case() != kind) {
    message.add_parts();
  }
  v1::Part& part = *message.mutable_parts()->rbegin();
  if (reasoning) {
    part.mutable_reasoning()->append(text);
  } else {
    part.mutable_text()->append(text);
  }
}

void Transcript::Add(const v1::Event& event) {
  if (event.transient()) return;
  // Deltas carried their step before events did; older streams set only theirs.
  step_ = event.has_text_delta()        ? event.text_delta().step()
          : event.has_reasoning_delta() ? event.reasoning_delta().step()
                                        : event.step();
  auto step_seen = [this](uint32_t step) { steps_ = std::max(steps_, step + 1); };
  switch (event.payload_case()) {
    case v1::Event::kTextDelta:
      AppendText(Assistant(), false, event.text_delta().text());
      step_seen(step_);
      break;
    case v1::Event::kReasoningDelta: {
      v1::Message& message = Assistant();
      AppendText(message, true, event.reasoning_delta().text());
      for (const auto& [key, value] : event.reasoning_delta().provider_metadata()) {
        (*message.mutable_parts()->rbegin()->mutable_provider_metadata())[key] = value;
      }
      step_seen(step_);
      break;
    }
    case v1::Event::kToolCall:
      step_seen(step_);
      *Assistant().add_parts()->mutable_tool_call() = event.tool_call();
      open_calls_.emplace_back(event.tool_call().call_id(), step_);
      break;
    case v1::Event::kToolResult: {
      if (messages_.empty() || messages_.back().role() != v1::ROLE_TOOL) {
        NewMessage(v1::ROLE_TOOL);
      }
      *messages_.back().add_parts()->mutable_tool_result() = event.tool_result();
      std::erase_if(open_calls_,
                    [&](const auto& call) { return call.first == event.tool_result().call_id(); });
      break;
    }
    case v1::Event::kToolOutputDelta:
      break;  // Informational: the model sees only the result.
    case v1::Event::kStepCompleted:
      step_seen(step_);
      decode_ms_ += event.step_completed().decode_ms();
      return;
    case v1::Event::kUsage: {
      const v1::Usage& step = event.usage();
      usage_.set_input_tokens(usage_.input_tokens() + step.input_tokens());
      usage_.set_output_tokens(usage_.output_tokens() + step.output_tokens());
      usage_.set_cache_read_tokens(usage_.cache_read_tokens() + step.cache_read_tokens());
      usage_.set_cache_write_tokens(usage_.cache_write_tokens() + step.cache_write_tokens());
      context_tokens_ = step.input_tokens() + step.cache_read_tokens() + step.cache_write_tokens() +
                        step.output_tokens();
      return;  // Usage is accounting, not output.
    }
    default:
      return;
  }
  has_output_ = true;
}

std::vector<v1::Event> Transcript::DanglingToolCallResults(const std::string& why) const {
  std::vector<v1::Event> results;
  for (const auto& [call_id, step] : open_calls_) {
    v1::Event& event = results.emplace_back();
    event.set_step(step);
    event.mutable_tool_result()->set_call_id(call_id);
    event.mutable_tool_result()->set_output(why);
    event.mutable_tool_result()->set_is_error(true);
  }
  return results;
}

}  // namespace parley::session
