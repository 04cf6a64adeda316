// Transcript: a turn's events folded into the messages the turn commits.
//
// The live executor feeds it every event it publishes; recovery feeds it the events a
// dead owner left in the stream. Either way the result is the same: assistant messages
// (text, reasoning and tool-call parts, in order) and tool messages (results), ready
// for CompleteTurn, plus the turn's usage and step count. A tool call still without a
// result when the turn ends gets a synthetic error result (DanglingToolCallResults), so
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

  // True once any content (text, reasoning, tool activity) was produced.
  bool has_output() const { return has_output_; }
  const std::vector<v1::Message>& messages() const { return messages_; }
  const v1::Usage& usage() const { return usage_; }
  uint32_t steps() const { return steps_; }

 private:
  v1::Message& Assistant();
  void AppendText(v1::Message& message, bool reasoning, const std::string& text);

  std::vector<v1::Message> messages_;
  std::vector<std::string> open_calls_;
  v1::Usage usage_;
  uint32_t steps_ = 0;
  bool has_output_ = false;
};

}  // namespace parley::session
