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
// turn; a summarizer can replace it behind the same signature later.
//
//   std::vector<v1::Message> history = RepairHistory(stored, &repairs);
//   HistoryWindow window = FitToBudget(std::move(history), 100000);
#pragma once

#include <cstdint>
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

// The estimated tokens of one message (4 bytes per token, rounded up, plus overhead).
uint64_t EstimateTokens(const v1::Message& message);

}  // namespace parley::session
