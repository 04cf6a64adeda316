// A TurnOutput for running the agent loop in-process: it records every event it is given,
// commits nothing, and waits on a TurnControl measured by the clock the test chooses.
//
//   FakeClock clock;
//   RecordingOutput output(clock);
//   runner.Run(input, output);  // a retry's backoff advances `clock` instead of sleeping
#pragma once

#include <functional>
#include <memory>
#include <utility>
#include <vector>

#include "common/clock.h"
#include "parley/v1/events.pb.h"
#include "session-svc/turn/turn_control.h"
#include "session-svc/turn/turn_runner.h"

namespace parley::session {

class RecordingOutput final : public TurnOutput {
 public:
  explicit RecordingOutput(Clock& clock = RealClock::Get()) : control(clock) {}

  absl::Status Emit(v1::Event event) override {
    events.push_back(std::move(event));
    return absl::OkStatus();
  }
  absl::Status Flush() override { return absl::OkStatus(); }
  absl::Status EndStep(v1::StepCompleted done) override {
    v1::Event event;
    *event.mutable_step_completed() = std::move(done);
    events.push_back(std::move(event));
    return absl::OkStatus();
  }
  absl::StatusOr<std::vector<v1::Message>> TakeSteering() override {
    return std::vector<v1::Message>();
  }
  bool stopping() const override { return control.stopping(); }
  bool WaitFor(absl::Duration duration) override { return control.WaitFor(duration); }
  std::unique_ptr<StopHook> OnStop(std::function<void()> hook) override {
    return control.OnStop(std::move(hook));
  }

  TurnControl control;
  std::vector<v1::Event> events;
};

}  // namespace parley::session
