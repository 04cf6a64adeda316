// TurnRunner: the agent behind a turn — the seam between scheduling and the agent loop.
//
// session-svc claims a turn, takes its lease and publishes TurnStarted; then it hands
// the turn to a TurnRunner, which produces the turn's content (text, reasoning, tool
// calls and results, usage) as events through TurnOutput. Everything around the
// content — seq numbers, fencing, TurnCompleted, committing the messages, TurnSealed,
// cancel, recovery — belongs to the executor, so every runner gets it for free.
//
//   class EchoRunner : public TurnRunner {
//     absl::StatusOr<RunOutcome> Run(const TurnInput& in, TurnOutput& out) override {
//       v1::Event e; e.mutable_text_delta()->set_text("hi");
//       if (absl::Status s = out.Emit(std::move(e)); !s.ok()) return s;
//       return RunOutcome{.finish_reason = v1::FINISH_REASON_STOP};
//     }
//   };
//
// The agent loop (AgentRunner in session-svc/agent/agent_runner.h: model providers and tools) is
// the runner in production; tests may plug in their own.
#pragma once

#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "parley/v1/events.pb.h"
#include "parley/v1/resources.pb.h"
#include "session-svc/turn/turn_control.h"

namespace parley::session {

// What a runner sees of the turn.
struct TurnInput {
  const v1::Turn& turn;
  const v1::Session& session;
  // The configuration captured when the turn was enqueued (not the session's current).
  const v1::AgentConfig& config;
  // The user message that started the turn.
  const v1::Message& user_message;
};

// Where a runner's content goes. Implemented by the executor. Its StopSignal side says
// when the turn must stop (cancel, lost lease, drain).
class TurnOutput : public StopSignal {
 public:
  // Publishes `event` (payload and step set; seq, epoch, session, turn and time are
  // filled in) as the turn's next event. Errors: CANCELLED once the turn must stop: the
  // runner returns promptly; UNAVAILABLE when the event could not be published after
  // retries.
  virtual absl::Status Emit(v1::Event event) = 0;
  // Text and reasoning deltas emitted back to back may be held briefly to go out in one
  // batch; Flush() sends what is held. Call it before blocking on anything that is not
  // a TurnOutput call (a network read): WaitFor, EndStep and every other event flush
  // by themselves.
  virtual absl::Status Flush() = 0;
  // Ends model step `done.step()`: commits the messages of the events emitted since the
  // previous step ended (so ListMessages shows them), then publishes StepCompleted.
  // Errors: CANCELLED once the turn must stop. A store that cannot be reached is not
  // an error: the messages are committed with the turn instead.
  virtual absl::Status EndStep(v1::StepCompleted done) = 0;
  // The steering messages (MULTITASK_POLICY_STEER) that joined the turn since the last
  // call, oldest first, each published as MessageAppended. Call at a step boundary.
  // Empty when there are none or store-svc cannot be reached (they are then taken at a
  // later boundary, or start the next turn). Errors: CANCELLED once the turn must stop.
  virtual absl::StatusOr<std::vector<v1::Message>> TakeSteering() = 0;
};

// How the content ended, as the runner saw it.
struct RunOutcome {
  v1::FinishReason finish_reason = v1::FINISH_REASON_STOP;
  // Set when the runner failed (finish_reason ERROR).
  std::optional<v1::TurnError> error;
};

class TurnRunner {
 public:
  virtual ~TurnRunner() = default;
  // Produces the turn's content. Called on a slot thread; may block (it is the turn).
  // A stop request makes Emit/WaitFor fail; the runner then returns whatever it has.
  virtual absl::StatusOr<RunOutcome> Run(const TurnInput& input, TurnOutput& output) = 0;
  // The model a turn with `config` runs, as "provider/model" (named in TurnStarted).
  virtual std::string ModelName(const v1::AgentConfig& config) const = 0;
};

}  // namespace parley::session
