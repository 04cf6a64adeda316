// Transcript: a turn's events folded into the messages the turn commits.
//
// The live executor feeds it every event it publishes; recovery feeds it the events a
// dead owner left in the stream. Either way the result is the same: assistant messages
// (text, reasoning and tool-call parts, in order) and tool messages (results), ready
// for CommitTurnStep and CompleteTurn, plus the turn's usage and step count. Each step
// gets its own assistant message; a step's results follow it in one tool message. A tool call still
// without a result when the turn ends gets a synthetic error result (DanglingToolCallResults), so
// the history stays valid for the next model request.
//
//   Transcript transcript;
//   for (const v1::Event& e : events) transcript.Add(e);
//   for (v1::Event& r : transcript.DanglingToolCallResults("worker lost")) {
//     transcript.Add(r);  // Or publish it through something that Adds what it sent.
//   }
//   request.mutable_messages()->Assign(transcript.messages().begin(), ...);
//
// Not thread-safe: one turn, one thread.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "parley/v1/events.pb.h"
#include "parley/v1/resources.pb.h"

namespace parley::session {

class Transcript {
 public:
  // Folds one event in. Events that carry no content (lifecycle, transient) are ignored.
  void Add(const v1::Event& event);

  // ToolResult events (is_error, duration 0) for every call that has no result yet, in
  // call order; `why` becomes the result's text. Not folded in: the caller publishes
  // them (Publish folds what it published) or Adds them itself.
  std::vector<v1::Event> DanglingToolCallResults(const std::string& why) const;

  // Adds a user message that joined the turn (steering) to the conversation. For the
  // agent loop's view of the conversation only: such messages are stored already and
  // are not part of what the turn commits.
  void AddUserMessage(const v1::Message& message);

  // True once any content (text, reasoning, tool activity) was produced.
  bool has_output() const { return has_output_; }
  // Every message of the turn, committed or not.
  const std::vector<v1::Message>& messages() const { return messages_; }
  // The messages not committed yet (by a step commit), in order.
  std::vector<v1::Message> Uncommitted() const;
  // Everything folded in so far is committed.
  void MarkCommitted() { committed_ = messages_.size(); }
  // The messages of steps below `steps` were committed by an earlier owner (recovery).
  void MarkStepsCommitted(uint32_t steps);
  const v1::Usage& usage() const { return usage_; }
  // Tokens of the conversation after the newest step that reported usage: its input
  // (cached or not) plus its output.
  uint64_t context_tokens() const { return context_tokens_; }
  uint32_t steps() const { return steps_; }
  // The steps' decode times (StepCompleted.decode_ms), summed.
  uint64_t decode_ms() const { return decode_ms_; }

 private:
  v1::Message& Assistant();
  v1::Message& NewMessage(v1::Role role);
  void AppendText(v1::Message& message, bool reasoning, const std::string& text);

  std::vector<v1::Message> messages_;
  std::vector<uint32_t> message_steps_;  // The step each message belongs to.
  size_t committed_ = 0;                 // messages_[0, committed_) are stored.
  uint32_t step_ = 0;                    // Step of the event being folded.

  std::vector<std::pair<std::string, uint32_t>> open_calls_;  // Call id, step.
  v1::Usage usage_;
  uint64_t context_tokens_ = 0;
  uint32_t steps_ = 0;
  uint64_t decode_ms_ = 0;
  bool has_output_ = false;
};

}  // namespace parley::session
