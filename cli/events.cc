#include "cli/events.h"

#include <algorithm>
#include <iostream>
#include <set>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/status.h"

namespace parley::cli {
namespace {

constexpr int kMaxAttemptsWithoutProgress = 5;

// Renders events for a person. Text deltas continue the current line; everything else
// starts a line of its own.
class EventPrinter {
 public:
  // `prefix` starts every line (a session's name when several share the terminal).
  explicit EventPrinter(Style style, std::string prefix = "")
      : style_(style), prefix_(std::move(prefix)) {}

  void Print(const v1::StreamEventsResponse& item) {
    if (item.has_epoch_changed()) {
      const v1::EpochChanged& changed = item.epoch_changed();
      Line(
          style_.Yellow(absl::StrCat("[history moved to epoch ", changed.new_epoch(), " after seq ",
                                     changed.resume_after_seq(), ": ", changed.reason(), "]")));
      return;
    }
    if (!item.has_event()) return;  // A keepalive says nothing to a person.
    const v1::Event& event = item.event();
    switch (event.payload_case()) {
      case v1::Event::kMessageAppended: {
        const v1::Message& message = event.message_appended().message();
        if (message.role() != v1::ROLE_USER) return;
        std::string text;
        for (const v1::Part& part : message.parts()) absl::StrAppend(&text, part.text());
        Line(style_.Bold(absl::StrCat("> ", text)));
        return;
      }
      case v1::Event::kTurnStarted: {
        const v1::TurnStarted& started = event.turn_started();
        std::string what = absl::StrCat("[turn ", started.turn_id(), " started");
        if (!started.model().empty()) absl::StrAppend(&what, ", model ", started.model());
        if (started.attempt() > 1) absl::StrAppend(&what, ", attempt ", started.attempt());
        Line(style_.Dim(what + "]"));
        return;
      }
      case v1::Event::kTextDelta:
        Inline(event.text_delta().text());
        return;
      case v1::Event::kReasoningDelta:
        Inline(style_.Dim(event.reasoning_delta().text()));
        return;
      case v1::Event::kToolCall:
        Line(style_.Cyan(absl::StrCat("[tool ", event.tool_call().name(), " ",
                                      event.tool_call().arguments_json(), "]")));
        return;
      case v1::Event::kToolOutputDelta:
        streamed_calls_.insert(event.tool_output_delta().call_id());
        Inline(style_.Dim(event.tool_output_delta().data()));
        return;
      case v1::Event::kToolResult: {
        const v1::ToolResult& result = event.tool_result();
        // A tool that streamed nothing (file tools, errors) shows its result instead.
        if (streamed_calls_.erase(result.call_id()) == 0 && !result.output().empty()) {
          constexpr size_t kShown = 2000;
          std::string shown = result.output().substr(0, kShown);
          if (result.output().size() > kShown) absl::StrAppend(&shown, "…");
          Inline(style_.Dim(shown));
          Finish();
        }
        Line(style_.Cyan(absl::StrCat("[tool result", result.is_error() ? " (error)" : "", ", ",
                                      result.duration_ms(), " ms]")));
        return;
      }
      case v1::Event::kSandboxAttached: {
        const v1::SandboxAttached& attached = event.sandbox_attached();
        std::string what = absl::StrCat("[sandbox ", attached.sandbox_id(),
                                        attached.created()   ? " created"
                                        : attached.resumed() ? " resumed"
                                                             : " attached");
        if (!attached.replaced_sandbox_id().empty()) {
          absl::StrAppend(&what, ", replacing lost ", attached.replaced_sandbox_id(),
                          ": earlier files are gone");
        }
        Line(style_.Dim(what + "]"));
        return;
      }
      case v1::Event::kSandboxLost:
        Line(style_.Yellow(absl::StrCat("[sandbox ", event.sandbox_lost().sandbox_id(),
                                        " lost: ", event.sandbox_lost().reason(),
                                        "; its files may be gone]")));
        return;
      case v1::Event::kHistoryTrimmed:
        Line(style_.Dim(absl::StrCat("[", event.history_trimmed().dropped_messages(),
                                     " older messages left out of the model's context]")));
        return;
      case v1::Event::kRetryScheduled: {
        const v1::RetryScheduled& retry = event.retry_scheduled();
        Line(style_.Yellow(absl::StrCat("[retrying in ", retry.delay_ms(), " ms (attempt ",
                                        retry.attempt(), "): ", retry.reason(), "]")));
        return;
      }
      case v1::Event::kTurnCompleted: {
        const v1::TurnCompleted& done = event.turn_completed();
        std::string what = absl::StrCat(
            "[turn ", EnumWord(v1::TurnStatus_Name(done.status()), "TURN_STATUS_"), " (",
            EnumWord(v1::FinishReason_Name(done.finish_reason()), "FINISH_REASON_"), "), ",
            done.usage().input_tokens(), " tokens in, ", done.usage().output_tokens(), " out, ",
            done.duration_ms(), " ms]");
        if (done.has_error()) absl::StrAppend(&what, " ", done.error().message());
        Line(done.status() == v1::TURN_STATUS_SUCCEEDED ? style_.Dim(what) : style_.Red(what));
        return;
      }
      case v1::Event::kSessionStatusChanged:
        Line(style_.Dim(absl::StrCat(
            "[session ",
            EnumWord(v1::SessionStatus_Name(event.session_status_changed().new_status()),
                     "SESSION_STATUS_"),
            "]")));
        return;
      case v1::Event::kError:
        Line(style_.Red(absl::StrCat(
            "[error ", EnumWord(v1::TurnErrorKind_Name(event.error().kind()), "TURN_ERROR_KIND_"),
            ": ", event.error().message(), "]")));
        return;
      default:
        return;  // Usage, TurnSealed, and payloads newer than this client.
    }
  }

  // Ends a line of streamed text, if one is open.
  void Finish() {
    if (mid_line_) std::cout << "\n" << std::flush;
    mid_line_ = false;
  }

 private:
  void Inline(const std::string& text) {
    if (text.empty()) return;
    if (!mid_line_) std::cout << prefix_;
    std::cout << text << std::flush;
    mid_line_ = text.back() != '\n';
  }
  void Line(const std::string& text) {
    Finish();
    std::cout << prefix_ << text << "\n" << std::flush;
  }

  Style style_;
  const std::string prefix_;
  bool mid_line_ = false;
  std::set<std::string> streamed_calls_;  // Calls whose output was shown as it came.
};

// Whether a stream (or a subscription) that ended with `status` can resume from its
// cursor: a dropped connection, a gateway shutting down, or this client reading too slowly.
bool Resumable(const grpc::Status& status) {
  return status.error_code() == grpc::StatusCode::UNAVAILABLE ||
         status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED;
}

absl::Duration Backoff(int fruitless_attempts) {
  return std::min(absl::Milliseconds(250) * (1 << fruitless_attempts), absl::Seconds(4));
}

}  // namespace

int FollowEvents(Connection& connection, v1::StreamEventsRequest request) {
  const bool json = connection.options().json;
  EventPrinter printer(Style::ForStdout());
  // With from_turn_id, the turn being followed: the start is kept until its TurnStarted
  // arrived (a resume from a seq would end at the next TurnSealed of any turn), and
  // only its end counts.
  const std::string turn_id = request.from_turn_id();
  bool turn_started = turn_id.empty();
  std::optional<v1::TurnStatus> completed;
  int fruitless_attempts = 0;
  for (;;) {
    std::unique_ptr<grpc::ClientContext> context = connection.Context(/*stream=*/true);
    auto reader = connection.sessions().StreamEvents(context.get(), request);
    v1::StreamEventsResponse item;
    bool progressed = false, sealed = false;
    while (!sealed && reader->Read(&item)) {
      // Following one turn: another turn still running ahead of it is not shown.
      const bool other_turn = !turn_id.empty() && item.has_event() &&
                              !item.event().turn_id().empty() && item.event().turn_id() != turn_id;
      if (json && !other_turn) {
        PrintJson(item);
      } else if (!other_turn) {
        printer.Print(item);
      }
      if (item.has_event()) {
        const v1::Event& event = item.event();
        progressed = true;
        const bool ours = turn_id.empty() || event.turn_id() == turn_id;
        turn_started = turn_started || (ours && event.has_turn_started());
        if (turn_started) {
          // The resume cursor: everything up to this seq of this epoch has arrived.
          request.set_after_seq(event.seq());
          request.set_epoch(event.epoch());
        }
        if (ours && event.has_turn_completed()) completed = event.turn_completed().status();
        sealed = request.until_turn_end() && ours && event.has_turn_sealed();
      } else if (item.has_epoch_changed() && turn_started) {
        // The new epoch's numbering: resume after the point it gives.
        request.set_after_seq(item.epoch_changed().resume_after_seq());
        request.set_epoch(item.epoch_changed().new_epoch());
      }
    }
    if (sealed) context->TryCancel();  // Done; the server ends the stream anyway.
    const grpc::Status status = reader->Finish();
    printer.Finish();
    if (status.ok() || sealed) {
      if (!request.until_turn_end()) return kExitOk;
      if (!turn_started && !json) {
        // The server ends such a stream at once: the turn has no events to show.
        std::cout << "[turn " << turn_id << " was cancelled before it started]\n";
      }
      return completed == v1::TURN_STATUS_SUCCEEDED ? kExitOk : kExitFailed;
    }
    fruitless_attempts = progressed ? 1 : fruitless_attempts + 1;
    if (!Resumable(status) || fruitless_attempts >= kMaxAttemptsWithoutProgress) {
      return ReportError(status, connection.options());
    }
    if (!json) {
      std::cerr << "parley: stream interrupted (" << status.error_message() << "); resuming "
                << (turn_started ? absl::StrCat("after seq ", request.after_seq())
                                 : std::string("from the turn's start"))
                << "\n";
    }
    absl::SleepFor(Backoff(fruitless_attempts));
  }
}

namespace {

// One session followed over a Subscribe stream; its subscription id is its index.
struct Watched {
  v1::StreamEventsRequest request;  // Its cursor moves with every event received.
  EventPrinter printer;
  bool done = false;
  std::optional<v1::TurnStatus> completed;
  grpc::Status ended = grpc::Status::OK;  // Why it ended, when it did.
};

v1::StreamEventsResponse Wrap(const v1::Event& event) {
  v1::StreamEventsResponse item;
  *item.mutable_event() = event;
  return item;
}

v1::StreamEventsResponse Wrap(const v1::EpochChanged& changed) {
  v1::StreamEventsResponse item;
  *item.mutable_epoch_changed() = changed;
  return item;
}

v1::SubscribeRequest AddOf(size_t index, const v1::StreamEventsRequest& request) {
  v1::SubscribeRequest add;
  add.mutable_add()->set_subscription_id(absl::StrCat(index));
  *add.mutable_add()->mutable_request() = request;
  return add;
}

}  // namespace

int FollowMany(Connection& connection, const std::vector<v1::StreamEventsRequest>& requests) {
  const bool json = connection.options().json;
  std::vector<Watched> watched;
  for (const v1::StreamEventsRequest& request : requests) {
    watched.push_back(
        {.request = request,
         .printer = EventPrinter(Style::ForStdout(), absl::StrCat(request.session_id(), ": "))});
  }
  size_t open_line = watched.size();  // Whose streamed text the terminal's line holds.
  auto remaining = [&] {
    return std::count_if(watched.begin(), watched.end(), [](const Watched& w) { return !w.done; });
  };
  int fruitless_attempts = 0;
  for (;;) {
    std::unique_ptr<grpc::ClientContext> context = connection.Context(/*stream=*/true);
    auto stream = connection.sessions().Subscribe(context.get());
    for (size_t i = 0; i < watched.size(); ++i) {
      if (!watched[i].done) stream->Write(AddOf(i, watched[i].request));
    }
    bool progressed = false;
    v1::SubscribeResponse response;
    while (remaining() > 0 && stream->Read(&response)) {
      if (json) PrintJson(response);
      for (const v1::Delivery& delivery : response.deliveries()) {
        size_t i = 0;
        if (!absl::SimpleAtoi(delivery.subscription_id(), &i) || i >= watched.size()) continue;
        Watched& w = watched[i];
        if (!json && open_line != i && open_line < watched.size()) {
          watched[open_line].printer.Finish();
        }
        open_line = i;
        if (delivery.has_event()) {
          const v1::Event& event = delivery.event();
          progressed = true;
          w.request.set_after_seq(event.seq());
          w.request.set_epoch(event.epoch());
          if (event.has_turn_completed()) w.completed = event.turn_completed().status();
          if (!json) w.printer.Print(Wrap(event));
        } else if (delivery.has_epoch_changed()) {
          w.request.set_after_seq(delivery.epoch_changed().resume_after_seq());
          w.request.set_epoch(delivery.epoch_changed().new_epoch());
          if (!json) w.printer.Print(Wrap(delivery.epoch_changed()));
        } else if (delivery.has_ended()) {
          const grpc::Status status(static_cast<grpc::StatusCode>(delivery.ended().code()),
                                    delivery.ended().message(),
                                    delivery.ended().SerializeAsString());
          if (Resumable(status)) {
            stream->Write(AddOf(i, w.request));  // Its id is free again: resume it.
            continue;
          }
          w.done = true;
          w.ended = status;
        }
      }
    }
    if (remaining() == 0) {
      stream->WritesDone();
      context->TryCancel();
      (void)stream->Finish();
      for (Watched& w : watched) w.printer.Finish();
      int exit_code = kExitOk;
      for (const Watched& w : watched) {
        if (!w.ended.ok()) {
          std::cerr << "parley: " << w.request.session_id() << ": ";
          exit_code = std::max(exit_code, ReportError(w.ended, connection.options()));
        } else if (w.request.until_turn_end() && w.completed != v1::TURN_STATUS_SUCCEEDED) {
          exit_code = std::max(exit_code, static_cast<int>(kExitFailed));
        }
      }
      return exit_code;
    }
    const grpc::Status status = stream->Finish();
    for (Watched& w : watched) w.printer.Finish();
    fruitless_attempts = progressed ? 1 : fruitless_attempts + 1;
    if (status.ok()) return kExitOk;
    if (!Resumable(status) || fruitless_attempts >= kMaxAttemptsWithoutProgress) {
      return ReportError(status, connection.options());
    }
    if (!json) {
      std::cerr << "parley: stream interrupted (" << status.error_message()
                << "); resuming each session after its last seq\n";
    }
    absl::SleepFor(Backoff(fruitless_attempts));
  }
}

}  // namespace parley::cli
