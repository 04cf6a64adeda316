// History: the stored conversation, made valid and small enough for a model request.
//
// Stored history can hold what no provider accepts: a tool call whose result was never
// written (a crash between them), a result whose call is gone, a call id used twice, a
// result far from its call, arguments that are not JSON. Sent as-is, one bad row would
// make every later turn of the session fail with a 400. RepairHistory fixes each case
// the same way every time, so a repaired request is stable across turns:
//
//   - each assistant message's tool calls are answered by the tool message right after
//     it, results in call order; a call with no result gets a synthetic error result;
//   - a result that answers no earlier call, or a call already answered, is dropped;
//   - a call id seen before (in an earlier message) is dropped with its result;
//   - tool-call arguments that are not a JSON object become "{}" (the model sees a
//     synthetic note in the result when none was recorded);
//   - messages left without parts are dropped.
//
// FitToBudget then keeps the newest whole turns (a user message and what followed it)
// within a token budget — estimated at 4 bytes per token — always keeping the newest
// turn. The agent loop reaches it through HistoryPolicy, which a summarizer can
// implement instead.
//
//   std::vector<v1::Message> history = RepairHistory(stored, &repairs);
//   HistoryWindow window = FitToBudget(std::move(history), 100000);
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "parley/v1/resources.pb.h"

namespace parley::session {

// Repairs `messages` (oldest first); `*repairs` counts the changes made (may be null).
std::vector<v1::Message> RepairHistory(std::vector<v1::Message> messages, int* repairs);

struct HistoryWindow {
  std::vector<v1::Message> messages;
  // Messages left out (oldest first) to fit the budget.
  uint64_t dropped_messages = 0;
  uint64_t estimated_tokens = 0;
};

// The newest whole turns of `messages` within `budget_tokens` (0: no budget).
HistoryWindow FitToBudget(std::vector<v1::Message> messages, uint64_t budget_tokens);

// How stored history is made to fit a request's token budget: the seam where a
// summarizer (which would replace the oldest turns with a summary) takes over from
// leaving them out. Implementations are thread-safe (turns run concurrently).
class HistoryPolicy {
 public:
  virtual ~HistoryPolicy() = default;
  // `messages` are repaired, oldest first, the turn's user message last (always kept).
  virtual HistoryWindow Fit(std::vector<v1::Message> messages, uint64_t budget_tokens) const = 0;
};

// FitToBudget: the oldest whole turns are left out.
class DropOldestTurns final : public HistoryPolicy {
 public:
  HistoryWindow Fit(std::vector<v1::Message> messages, uint64_t budget_tokens) const override {
    return FitToBudget(std::move(messages), budget_tokens);
  }
  static const DropOldestTurns& Get() {
    static const DropOldestTurns policy;
    return policy;
  }
};

// The estimated tokens of one message (4 bytes per token, rounded up, plus overhead).
uint64_t EstimateTokens(const v1::Message& message);

}  // namespace parley::session
