// One turn, from its lease to its seal. See turn_executor.h for the order of work and
// session-svc/README.md for why each step is where it is.
#include "session-svc/turn/turn_executor.h"

#include <algorithm>
#include <deque>
#include <iterator>
#include <optional>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/events/event_log_reader.h"
#include "common/proto_time.h"
#include "session-svc/turn/transcript.h"
#include "telemetry/log.h"
#include "telemetry/tracer.h"

namespace parley::session {
namespace {

namespace store_pb = ::parley::store::v1;
v1::TurnError MakeError(v1::TurnErrorKind kind, std::string reason, std::string message,
                        bool retryable) {
  v1::TurnError error;
  error.set_kind(kind);
  error.set_reason(std::move(reason));
  error.set_message(std::move(message));
  error.set_retryable(retryable);
  return error;
}

}  // namespace

// The state of one run. Implements TurnOutput for the runner.
class TurnExecutor::Run_ final : public TurnOutput {
 public:
  Run_(TurnExecutor& executor, const store_pb::ClaimNextTurnResponse& claim, TurnControl& control)
      : x_(executor),
        claim_(claim),
        turn_(claim.turn()),
        session_id_(claim.turn().session_id()),
        tenant_id_(claim.session().tenant_id()),
        lease_epoch_(claim.lease_epoch()),
        epoch_(std::max<uint64_t>(1, claim.session().epoch())),
        control_(control) {}

  RunResult Go();

  // TurnOutput: the runner's content. Refused once the turn is asked to stop.
  absl::Status Emit(v1::Event event) override {
    if (control_.stopping()) return absl::CancelledError("the turn is stopping");
    if (!first_output_ &&
        (event.has_text_delta() || event.has_reasoning_delta() || event.has_tool_call())) {
      first_output_ = x_.clock_.Now();
    }
    // Text and reasoning deltas that arrive back to back go out together (one Redis
    // round trip for a batch); anything else, a full batch, or Flush() sends them.
    const bool delta = event.has_text_delta() || event.has_reasoning_delta();
    Stage(std::move(event));
    if (delta && pending_.size() < kMaxBatchEvents && pending_bytes_ < kMaxBatchBytes) {
      return absl::OkStatus();
    }
    return FlushPending();
  }
  absl::Status Flush() override {
    if (control_.stopping()) return absl::CancelledError("the turn is stopping");
    return FlushPending();
  }
  absl::Status EndStep(v1::StepCompleted done) override;
  absl::StatusOr<std::vector<v1::Message>> TakeSteering() override;
  bool stopping() const override { return control_.stopping(); }
  bool WaitFor(absl::Duration duration) override {
    // Nothing waits in the batch while the runner waits.
    if (!FlushPending().ok()) return false;
    return control_.WaitFor(duration);
  }
  std::unique_ptr<StopHook> OnStop(std::function<void()> hook) override {
    return control_.OnStop(std::move(hook));
  }

 private:
  // Takes the session's stream lease; returns the stream's newest entries as they stand
  // once it is held, newest first (SealPredecessor's).
  absl::StatusOr<std::vector<EventLogEntry>> TakeLease();
  absl::Status RecoverEpoch();
  absl::Status Publish(v1::Event event, bool after_commit = false) {
    Stage(std::move(event));
    return FlushPending(after_commit);
  }
  // Adds `event` to the batch going out next (session, turn and time filled in).
  void Stage(v1::Event event);
  // Publishes the batch under the lease epoch, each event with the next seq, and folds
  // it into the transcript. A lost lease seen locally (a refused heartbeat) stops it,
  // except `after_commit`: once CompleteTurn committed, a heartbeat refused because the
  // turn ended says nothing about the stream, and the Redis script is the fence that
  // counts. On failure the batch is dropped (its events were never published).
  // A publish that broke off (UNAVAILABLE) or was refused (SEQ_MISMATCH, LEASE_LOST) is
  // reconciled with the stream before anything is sent again (Reconcile).
  absl::Status FlushPending(bool after_commit = false);
  // What FlushPending does after reading the stream.
  enum class Reconciled {
    kDone,   // The batch is in the stream.
    kSend,   // It is not: send it as it is.
    kRetry,  // The lease or the seqs changed (restored events, a new epoch): renumber,
             // then read again.
    kStop,   // A second writer: stopped_status_ says which; nothing more is written.
  };
  // Reads what the stream holds for `batch` (EventPublisher::CheckPublished) and acts:
  // re-takes a lease a failover lost, restores events Redis lost into the front of
  // `batch` (counting them in `restored`), starts a new epoch when it cannot. A newer
  // epoch or other events under ours stop the turn (kStop). Errors: Redis' or the
  // store's, to retry.
  absl::StatusOr<Reconciled> Reconcile(std::vector<v1::Event>& batch, size_t& restored);
  // Moves the events this run published after `stream_last_seq` from recent_ to the
  // front of `batch`; false when recent_ does not hold all of them.
  bool Restore(std::vector<v1::Event>& batch, size_t& restored, uint64_t stream_last_seq);
  // Records a published batch: seqs, transcript (but the `restored` first events, which
  // were folded in when first published), recent_.
  absl::Status Published(const std::vector<v1::Event>& batch, size_t restored);
  // Seals the turn before this one if its owner's TurnSealed lost the race for the
  // lease (see the README), from the stream's `tail` read with the lease.
  void SealPredecessor(const std::vector<EventLogEntry>& tail);
  absl::StatusOr<std::vector<v1::Event>> ReadOwnEvents();
  absl::StatusOr<v1::Message> LoadUserMessage();
  RunResult Finish(v1::TurnStatus status, v1::FinishReason reason,
                   std::optional<v1::TurnError> error);
  RunResult HandBack();
  // Ends the turn after its runner returned (or before it began): by the stop reason
  // when one was given, else by the runner's result.
  RunResult Stopped(const absl::Status& status, const RunOutcome* outcome = nullptr);
  bool lease_lost() const { return control_.reason() == StopReason::kLeaseLost; }
  // Redis calls are retried while the lease lasts: past it, another owner takes over.
  absl::Duration retry_budget() const { return x_.options_.lease_ttl; }

  TurnExecutor& x_;
  const store_pb::ClaimNextTurnResponse& claim_;
  const v1::Turn& turn_;
  const std::string session_id_;
  const std::string tenant_id_;
  const uint64_t lease_epoch_;
  uint64_t epoch_;  // History epoch of the events we write.
  TurnControl& control_;
  static constexpr size_t kMaxBatchEvents = 64;
  static constexpr size_t kMaxBatchBytes = 64 << 10;
  std::vector<v1::Event> pending_;  // Staged, not published yet.
  // The newest events this run published, exactly as sent: what a failover that lost
  // acknowledged writes needs published again. Bounded: Redis loses at most what its
  // replicas had not received, a few batches at the worst.
  static constexpr size_t kRecentEvents = 4096;
  std::deque<v1::Event> recent_;
  absl::Status stopped_status_;  // Why Reconcile stopped the turn.
  size_t pending_bytes_ = 0;
  uint64_t last_seq_ = 0;
  uint64_t first_seq_ = 0;
  // How much of the stream's tail TakeLease reads for SealPredecessor.
  static constexpr int kPredecessorTail = 16;
  Transcript transcript_;
  std::string last_message_id_;  // Of the newest message a step commit stored.
  absl::Time started_ = absl::InfinitePast();
  std::optional<absl::Time> first_output_;
};

TurnExecutor::TurnExecutor(ExecutorOptions options, StoreStub& store, TurnRunner& runner,
                           Clock& clock, const telemetry::Logger& logger)
    : options_(std::move(options)),
      store_(store),
      runner_(runner),
      clock_(clock),
      logger_(logger) {}

TurnExecutor::~TurnExecutor() = default;

absl::Status TurnExecutor::EnsureRedis() {
  if (redis_ != nullptr && !redis_->broken()) return absl::OkStatus();
  DropRedis();
  absl::StatusOr<std::unique_ptr<RedisConnection>> connection =
      RedisConnection::Connect(options_.redis, absl::Seconds(2));
  if (!connection.ok()) return connection.status();
  redis_ = *std::move(connection);
  publisher_ = std::make_unique<EventPublisher>(
      *redis_,
      PublisherOptions{.key_prefix = options_.key_prefix,
                       .wait_replicas = options_.redis_wait_replicas,
                       .wait_timeout = options_.redis_wait_timeout},
      clock_);
  return absl::OkStatus();
}

void TurnExecutor::DropRedis() {
  publisher_.reset();
  redis_.reset();
}

RunResult TurnExecutor::Run(const store_pb::ClaimNextTurnResponse& claim, TurnControl& control) {
  // The turn continues the trace of the call that enqueued it (stored with the turn),
  // whichever replica runs it and however much later: every call made for it below,
  // and the runner's spans, join that trace.
  telemetry::ContextScope trace(telemetry::TraceContext::Parse(claim.traceparent()));
  // Every line logged while the turn runs, the agent loop's included, names it.
  telemetry::LogScope log_scope(
      {{"session_id", claim.turn().session_id()}, {"turn_id", claim.turn().id()}});
  Run_ run(*this, claim, control);
  return run.Go();
}

absl::StatusOr<std::vector<EventLogEntry>> TurnExecutor::Run_::TakeLease() {
  const EventLogReader log{RedisKeys(x_.options_.key_prefix)};
  const absl::Time deadline = absl::Now() + retry_budget();
  absl::Status status;
  for (absl::Duration backoff = absl::Milliseconds(50); absl::Now() < deadline;
       backoff = std::min(backoff * 2, absl::Seconds(1))) {
    status = x_.EnsureRedis();
    if (status.ok()) {
      // One round trip: the lease, and the stream's tail as it stands once we hold it.
      // The lease hash is never deleted: missing after an earlier
      // lease means Redis lost the session's state (flush, failover without data).
      absl::StatusOr<EventPublisher::Lease> lease = x_.publisher_->AcquireLease(
          session_id_, x_.options_.owner, lease_epoch_,
          {.floor_seq = claim_.session().last_seq(),
           .expect_existing = lease_epoch_ > 1,
           .read = log.BackwardCommand(session_id_, std::nullopt, kPredecessorTail)});
      if (lease.ok()) {
        last_seq_ = lease->last_seq;
        return EventLogReader::EntriesOf(lease->read.get());
      }
      status = lease.status();
      if (ErrorReason(status) == "STATE_LOST") {
        PARLEY_RETURN_IF_ERROR(RecoverEpoch());
        // A tail that cannot be read seals nothing: the turn goes on regardless.
        absl::StatusOr<std::vector<EventLogEntry>> tail =
            log.ReadBackward(*x_.redis_, session_id_, std::nullopt, kPredecessorTail);
        return tail.ok() ? *std::move(tail) : std::vector<EventLogEntry>();
      }
      if (ErrorReason(status) == "LEASE_LOST") return status;
    }
    if (status.code() == absl::StatusCode::kUnavailable) x_.DropRedis();
    absl::SleepFor(backoff);
  }
  return status;
}

absl::Status TurnExecutor::Run_::RecoverEpoch() {
  store_pb::AdvanceEpochRequest request;
  request.set_tenant_id(tenant_id_);
  request.set_session_id(session_id_);
  request.set_expected_epoch(epoch_);
  request.set_reason("redis lost events of the session before they were persisted");
  store_pb::AdvanceEpochResponse response;
  absl::Status status =
      StoreCall(x_.store_, &StoreStub::AdvanceEpoch, request, &response, {.attempts = 5});
  if (!status.ok()) return status;
  x_.logger_.Warn("redis lost the session's stream; new history epoch",
                  {{"session_id", session_id_},
                   {"epoch", response.epoch()},
                   {"resume_after_seq", response.resume_after_seq()},
                   {"advanced", response.advanced()}});
  epoch_ = response.epoch();
  recent_.clear();  // The abandoned history's events: never to be published again.
  if (absl::Status redis = x_.EnsureRedis(); !redis.ok()) return redis;
  absl::StatusOr<uint64_t> last = x_.publisher_->AcquireLease(
      session_id_, x_.options_.owner, lease_epoch_, response.resume_after_seq());
  if (!last.ok()) return last.status();
  last_seq_ = *last;
  return absl::OkStatus();
}

void TurnExecutor::Run_::Stage(v1::Event event) {
  event.set_session_id(session_id_);
  if (event.turn_id().empty() && !event.has_session_status_changed()) {
    event.set_turn_id(turn_.id());
  }
  *event.mutable_time() = ToTimestamp(x_.clock_.Now());
  pending_bytes_ += event.ByteSizeLong();
  pending_.push_back(std::move(event));
}

absl::Status TurnExecutor::Run_::FlushPending(bool after_commit) {
  if (pending_.empty()) return absl::OkStatus();
  std::vector<v1::Event> batch;
  batch.swap(pending_);
  pending_bytes_ = 0;
  if (lease_lost() && !after_commit) return absl::CancelledError("lease lost");
  size_t restored = 0;     // Leading events of `batch` that Redis lost after acknowledging.
  bool uncertain = false;  // The stream must be read before sending: an attempt may have run.
  const uint64_t prior_last_seq = last_seq_;
  const uint64_t prior_epoch = epoch_;
  const absl::Time deadline = absl::Now() + retry_budget();
  absl::Status status;
  for (absl::Duration backoff = absl::Milliseconds(20); absl::Now() < deadline;
       backoff = std::min(backoff * 2, absl::Seconds(1))) {
    // Seqs and the epoch are set per attempt: recovering the epoch changes both, and
    // restored events get back the seqs they had.
    uint64_t seq = last_seq_;
    for (v1::Event& event : batch) {
      if (!event.transient()) ++seq;
      event.set_seq(seq);
      event.set_epoch(epoch_);
    }
    status = x_.EnsureRedis();
    if (status.ok() && uncertain) {
      absl::StatusOr<Reconciled> next = Reconcile(batch, restored);
      status = next.status();
      if (next.ok()) {
        switch (*next) {
          case Reconciled::kDone:
            return Published(batch, restored);
          case Reconciled::kStop:
            return stopped_status_;
          case Reconciled::kRetry:
            continue;  // The lease or the seqs changed: renumber, then read again.
          case Reconciled::kSend:
            uncertain = false;
            break;
        }
      }
    }
    if (status.ok()) status = x_.publisher_->PublishBatch(batch, lease_epoch_);
    if (status.ok()) return Published(batch, restored);
    const std::string reason = ErrorReason(status);
    if (reason == "LEASE_LOST" || reason == "SEQ_MISMATCH") {
      // A newer writer, or Redis lost our lease or events in a failover: the stream
      // tells which (Reconcile), and only a real second writer stops the turn.
      uncertain = true;
    } else if (status.code() == absl::StatusCode::kUnavailable) {
      // The script may or may not have run before the connection broke.
      uncertain = true;
      x_.DropRedis();
    }
    absl::SleepFor(backoff);
  }
  // Out of budget. Events Restore took out of `recent_` go back with the seqs they had,
  // so the next publish finds the stream behind again and restores them, instead of
  // writing other events over seqs subscribers already saw.
  if (restored > 0 && epoch_ == prior_epoch) {
    recent_.insert(recent_.end(), std::make_move_iterator(batch.begin()),
                   std::make_move_iterator(batch.begin() + static_cast<ptrdiff_t>(restored)));
    last_seq_ = prior_last_seq;
  }
  return status;
}

absl::StatusOr<TurnExecutor::Run_::Reconciled> TurnExecutor::Run_::Reconcile(
    std::vector<v1::Event>& batch, size_t& restored) {
  absl::StatusOr<PublishCheck> check = x_.publisher_->CheckPublished(batch, lease_epoch_);
  if (!check.ok()) return check.status();
  using Outcome = PublishCheck::Outcome;
  switch (check->outcome) {
    case Outcome::kPublished:
      x_.logger_.Info("a publish lost its reply but is in the stream",
                      {{"session_id", session_id_}, {"last_seq", check->last_seq}});
      return Reconciled::kDone;
    case Outcome::kNotPublished:
      return Reconciled::kSend;
    case Outcome::kLeaseLost:
      control_.Stop(StopReason::kLeaseLost);
      stopped_status_ = absl::CancelledError("lease lost: another owner holds the session");
      return Reconciled::kStop;
    case Outcome::kConflict:
      // Other events under our epoch where ours belong: never write past them.
      control_.Stop(StopReason::kLeaseLost);
      stopped_status_ = absl::InternalError(absl::StrCat(
          "seq mismatch: the stream ends at ", check->last_seq, ", not with this turn's events"));
      return Reconciled::kStop;
    case Outcome::kLeaseBehind:
      if (check->lease_epoch == 0) {
        // The lease hash vanished: Redis lost the session's state.
        PARLEY_RETURN_IF_ERROR(RecoverEpoch());
        return Reconciled::kRetry;
      }
      // Our lease acquisition was lost with a failover; it may only grow, so take it
      // again and look once more.
      // (Gone since the check: STATE_LOST, and the next check recovers the epoch.)
      PARLEY_RETURN_IF_ERROR(
          x_.publisher_
              ->AcquireLease(session_id_, x_.options_.owner, lease_epoch_,
                             {.floor_seq = claim_.session().last_seq(), .expect_existing = true})
              .status());
      return Reconciled::kRetry;
    case Outcome::kStreamBehind:
      x_.logger_.Warn("redis lost acknowledged events (a failover); publishing them again",
                      {{"session_id", session_id_},
                       {"stream_last_seq", check->last_seq},
                       {"published_last_seq", last_seq_}});
      if (!Restore(batch, restored, check->last_seq)) {
        x_.logger_.Warn("redis lost events this run cannot publish again; new history epoch",
                        {{"session_id", session_id_}, {"last_seq", check->last_seq}});
        PARLEY_RETURN_IF_ERROR(RecoverEpoch());
      }
      return Reconciled::kRetry;
  }
  return absl::InternalError("unknown publish check outcome");
}

bool TurnExecutor::Run_::Restore(std::vector<v1::Event>& batch, size_t& restored,
                                 uint64_t stream_last_seq) {
  // The lost events are the newest ones this run published: those after the stream's
  // last seq (a transient event carries the seq before it). All must still be here.
  size_t keep = recent_.size();
  while (keep > 0 && recent_[keep - 1].seq() > stream_last_seq) --keep;
  const bool covered = keep < recent_.size() && !recent_[keep].transient() &&
                       recent_[keep].seq() == stream_last_seq + 1;
  if (!covered) return false;
  batch.insert(batch.begin(), std::make_move_iterator(recent_.begin() + keep),
               std::make_move_iterator(recent_.end()));
  restored += recent_.size() - keep;
  recent_.erase(recent_.begin() + keep, recent_.end());
  last_seq_ = stream_last_seq;
  return true;
}

absl::Status TurnExecutor::Run_::Published(const std::vector<v1::Event>& batch, size_t restored) {
  for (size_t i = 0; i < batch.size(); ++i) {
    const v1::Event& event = batch[i];
    if (!event.transient()) {
      last_seq_ = event.seq();
      if (first_seq_ == 0) first_seq_ = event.seq();
    }
    if (i >= restored) transcript_.Add(event);  // Restored ones were folded in before.
    recent_.push_back(event);
  }
  while (recent_.size() > kRecentEvents) recent_.pop_front();
  control_.first_seq.store(first_seq_);
  control_.last_seq.store(last_seq_);
  control_.steps.store(transcript_.steps());
  return absl::OkStatus();
}

void TurnExecutor::Run_::SealPredecessor(const std::vector<EventLogEntry>& tail) {
  for (const EventLogEntry& entry : tail) {
    if (!entry.id.durable()) continue;  // Transient: look further back.
    absl::StatusOr<v1::Event> last = entry.Parse(session_id_);
    if (!last.ok() || !last->has_turn_completed() || last->turn_id() == turn_.id()) return;
    // The predecessor committed (the store freed the session only then) but its seal
    // lost the race for the lease. Find its last message and seal it.
    store_pb::ListMessagesRequest list;
    list.set_tenant_id(tenant_id_);
    list.mutable_request()->set_session_id(session_id_);
    list.mutable_request()->set_latest(true);
    list.mutable_request()->set_limit(64);
    store_pb::ListMessagesResponse messages;
    v1::Event sealed;
    sealed.set_turn_id(last->turn_id());
    sealed.mutable_turn_sealed()->set_turn_id(last->turn_id());
    if (StoreCall(x_.store_, &StoreStub::ListMessages, list, &messages, {.attempts = 3}).ok()) {
      for (const v1::Message& m : messages.messages()) {
        if (m.turn_id() == last->turn_id() && m.role() != v1::ROLE_USER) {
          sealed.mutable_turn_sealed()->set_last_message_id(m.id());
        }
      }
    }
    (void)Publish(std::move(sealed));
    return;
  }
}

absl::StatusOr<std::vector<v1::Event>> TurnExecutor::Run_::ReadOwnEvents() {
  // Newest first through the hot window until an event of another turn; what the hot
  // window no longer holds is durable, so the rest comes from store-svc.
  const EventLogReader log{RedisKeys(x_.options_.key_prefix)};
  std::vector<v1::Event> newest_first;
  std::optional<EntryId> before;  // None: from the newest entry.
  uint64_t oldest_seen = 0;
  bool boundary = false;
  while (!boundary) {
    absl::StatusOr<std::vector<EventLogEntry>> page =
        log.ReadBackward(*x_.redis_, session_id_, before, 256);
    if (!page.ok()) return page.status();
    if (page->empty()) break;
    for (size_t i = 0; i < page->size() && !boundary; ++i) {
      const EventLogEntry& entry = (*page)[i];
      oldest_seen = entry.id.seq;
      before = entry.id;
      absl::StatusOr<v1::Event> event = entry.Parse(session_id_);
      if (!event.ok() || event->transient()) continue;
      if (event->turn_id() != turn_.id()) {
        boundary = true;
      } else {
        newest_first.push_back(*std::move(event));
      }
    }
  }
  std::vector<v1::Event> events(newest_first.rbegin(), newest_first.rend());
  if (boundary || turn_.first_seq() == 0 || oldest_seen == 0 || oldest_seen <= turn_.first_seq()) {
    return events;
  }
  // The hot window was trimmed past the turn's start: read the durable part, page by
  // page (a page stops at its byte budget), up to what the hot window holds.
  std::vector<v1::Event> merged;
  uint64_t after = turn_.first_seq() - 1;
  for (bool more = true; more && after + 1 < oldest_seen;) {
    store_pb::ReadEventsRequest read;
    read.set_tenant_id(tenant_id_);
    read.set_session_id(session_id_);
    read.set_after_seq(after);
    read.set_limit(10000);
    store_pb::ReadEventsResponse durable;
    absl::Status status =
        StoreCall(x_.store_, &StoreStub::ReadEvents, read, &durable, {.attempts = 3});
    if (!status.ok()) return status;
    for (const v1::Event& event : durable.events()) {
      if (event.seq() < oldest_seen && event.turn_id() == turn_.id()) merged.push_back(event);
      after = event.seq();
    }
    more = durable.has_more() && !durable.events().empty();
  }
  merged.insert(merged.end(), events.begin(), events.end());
  return merged;
}

absl::StatusOr<v1::Message> TurnExecutor::Run_::LoadUserMessage() {
  if (claim_.user_message().id() == turn_.user_message_id()) return claim_.user_message();
  store_pb::ListMessagesRequest list;
  list.set_tenant_id(tenant_id_);
  list.mutable_request()->set_session_id(session_id_);
  list.mutable_request()->set_latest(true);
  list.mutable_request()->set_limit(100);
  for (int page = 0; page < 100; ++page) {
    store_pb::ListMessagesResponse messages;
    absl::Status status =
        StoreCall(x_.store_, &StoreStub::ListMessages, list, &messages, {.attempts = 5});
    if (!status.ok()) return status;
    for (const v1::Message& m : messages.messages()) {
      if (m.id() == turn_.user_message_id()) return m;
    }
    if (!messages.has_more() || messages.messages().empty()) break;
    list.mutable_request()->set_before_message_id(messages.messages(0).id());
  }
  return absl::NotFoundError(absl::StrCat("user message ", turn_.user_message_id(), " not found"));
}

RunResult TurnExecutor::Run_::Finish(v1::TurnStatus status, v1::FinishReason reason,
                                     std::optional<v1::TurnError> error) {
  if (lease_lost()) return RunResult::kLeaseLost;
  const std::string stop_detail = control_.detail();  // A later lost lease clears it.
  const std::string why = error ? absl::StrCat("interrupted: ", error->message())
                                : "interrupted before the tool finished";
  for (v1::Event& result : transcript_.DanglingToolCallResults(why)) {
    // Published so viewers see the call closed (Publish folds it into the transcript);
    // committed even when the stream is unreachable, so the next model call is valid.
    if (!Publish(result).ok()) transcript_.Add(result);
  }
  if (error && status == v1::TURN_STATUS_FAILED) {
    v1::Event failed;
    *failed.mutable_error() = *error;
    (void)Publish(std::move(failed));
  }
  const absl::Time now = x_.clock_.Now();
  v1::Event completed;
  v1::TurnCompleted& done = *completed.mutable_turn_completed();
  done.set_finish_reason(reason);
  done.set_status(status);
  *done.mutable_usage() = transcript_.usage();
  done.set_steps(transcript_.steps());
  done.set_context_tokens(transcript_.context_tokens());
  done.set_decode_ms(transcript_.decode_ms());
  if (first_output_ && started_ != absl::InfinitePast()) {
    done.set_time_to_first_token_ms(absl::ToInt64Milliseconds(*first_output_ - started_));
  }
  if (started_ != absl::InfinitePast()) {
    done.set_duration_ms(std::max<int64_t>(0, absl::ToInt64Milliseconds(now - started_)));
  }
  if (error) *done.mutable_error() = *error;
  const uint64_t before = last_seq_;
  if (!Publish(completed).ok() && lease_lost()) return RunResult::kLeaseLost;
  const uint64_t completed_seq = last_seq_ > before ? last_seq_ : 0;

  store_pb::CompleteTurnRequest request;
  request.set_tenant_id(tenant_id_);
  request.set_turn_id(turn_.id());
  request.set_owner(x_.options_.owner);
  request.set_lease_epoch(lease_epoch_);
  request.set_status(status);
  request.set_finish_reason(reason);
  *request.mutable_usage() = transcript_.usage();
  if (error) *request.mutable_error() = *error;
  for (v1::Message& m : transcript_.Uncommitted()) *request.add_messages() = std::move(m);
  request.set_steps(transcript_.steps());
  request.set_time_to_first_token_ms(done.time_to_first_token_ms());
  request.set_first_seq(first_seq_);
  request.set_last_seq(completed_seq);
  store_pb::CompleteTurnResponse response;
  absl::Status committed =
      StoreCall(x_.store_, &StoreStub::CompleteTurn, request, &response,
                {.attempts = std::max<int>(3, absl::ToInt64Seconds(x_.options_.lease_ttl))});
  if (!committed.ok()) {
    if (ErrorReason(committed) == "LEASE_LOST") {
      control_.Stop(StopReason::kLeaseLost);
      return RunResult::kLeaseLost;
    }
    x_.logger_.Error(
        "could not commit the turn; its lease will expire and it is recovered",
        {{"session_id", session_id_}, {"turn_id", turn_.id()}, {"error", committed.ToString()}});
    return RunResult::kAbandoned;
  }
  control_.committed.store(true);
  v1::Event sealed;
  sealed.mutable_turn_sealed()->set_turn_id(turn_.id());
  sealed.mutable_turn_sealed()->set_last_message_id(
      response.messages_size() > 0 ? response.messages().rbegin()->id() : last_message_id_);
  // Refused only when the next turn's owner already took the lease; it seals for us.
  (void)Publish(std::move(sealed), /*after_commit=*/true);
  if (stop_detail == "SESSION_CLOSED") {
    v1::Event closed;
    closed.mutable_session_status_changed()->set_old_status(v1::SESSION_STATUS_ACTIVE);
    closed.mutable_session_status_changed()->set_new_status(v1::SESSION_STATUS_CLOSED);
    (void)Publish(std::move(closed), /*after_commit=*/true);
  }
  return RunResult::kCompleted;
}

absl::Status TurnExecutor::Run_::EndStep(v1::StepCompleted done) {
  if (control_.stopping()) return absl::CancelledError("the turn is stopping");
  // The step's last deltas belong to what is committed.
  if (absl::Status flushed = FlushPending(); !flushed.ok()) return flushed;
  const uint32_t step = done.step();
  store_pb::CommitTurnStepRequest request;
  request.set_tenant_id(tenant_id_);
  request.set_turn_id(turn_.id());
  request.set_owner(x_.options_.owner);
  request.set_lease_epoch(lease_epoch_);
  request.set_step(step);
  for (v1::Message& m : transcript_.Uncommitted()) *request.add_messages() = std::move(m);
  *request.mutable_usage() = transcript_.usage();
  request.set_first_seq(first_seq_);
  request.set_last_seq(last_seq_);
  store_pb::CommitTurnStepResponse response;
  absl::Status committed =
      StoreCall(x_.store_, &StoreStub::CommitTurnStep, request, &response, {.attempts = 3});
  if (committed.ok()) {
    transcript_.MarkCommitted();
    if (response.messages_size() > 0) last_message_id_ = response.messages().rbegin()->id();
  } else if (ErrorReason(committed) == "LEASE_LOST") {
    control_.Stop(StopReason::kLeaseLost);
    return absl::CancelledError("lease lost: another owner holds the session");
  } else {
    // Not fatal: the messages stay uncommitted and go with the next commit.
    x_.logger_.Warn("could not commit a step; it is committed with the turn",
                    {{"turn_id", turn_.id()},
                     {"step", static_cast<int64_t>(step)},
                     {"error", committed.ToString()}});
  }
  v1::Event event;
  event.set_step(step);
  *event.mutable_step_completed() = std::move(done);
  return Emit(std::move(event));
}

absl::StatusOr<std::vector<v1::Message>> TurnExecutor::Run_::TakeSteering() {
  if (control_.stopping()) return absl::CancelledError("the turn is stopping");
  store_pb::TakeSteeringMessagesRequest request;
  request.set_tenant_id(tenant_id_);
  request.set_turn_id(turn_.id());
  request.set_owner(x_.options_.owner);
  request.set_lease_epoch(lease_epoch_);
  store_pb::TakeSteeringMessagesResponse response;
  absl::Status taken =
      StoreCall(x_.store_, &StoreStub::TakeSteeringMessages, request, &response, {.attempts = 3});
  if (ErrorReason(taken) == "LEASE_LOST") {
    control_.Stop(StopReason::kLeaseLost);
    return absl::CancelledError("lease lost: another owner holds the session");
  }
  if (!taken.ok()) {
    x_.logger_.Warn("could not read steering messages; trying at the next step",
                    {{"turn_id", turn_.id()}, {"error", taken.ToString()}});
    return std::vector<v1::Message>();
  }
  std::vector<v1::Message> messages(response.messages().begin(), response.messages().end());
  for (const v1::Message& message : messages) {
    v1::Event appended;
    *appended.mutable_message_appended()->mutable_message() = message;
    if (absl::Status status = Emit(std::move(appended)); !status.ok()) return status;
  }
  return messages;
}

RunResult TurnExecutor::Run_::HandBack() {
  if (transcript_.has_output()) {
    return Finish(v1::TURN_STATUS_FAILED, v1::FINISH_REASON_ERROR,
                  MakeError(v1::TURN_ERROR_KIND_INTERNAL, "WORKER_SHUTDOWN",
                            "the worker running the turn shut down before it finished", true));
  }
  store_pb::ReleaseTurnRequest request;
  request.set_tenant_id(tenant_id_);
  request.set_turn_id(turn_.id());
  request.set_owner(x_.options_.owner);
  request.set_lease_epoch(lease_epoch_);
  request.set_reason("drain");
  store_pb::ReleaseTurnResponse response;
  absl::Status status =
      StoreCall(x_.store_, &StoreStub::ReleaseTurn, request, &response, {.attempts = 5});
  if (status.ok()) return RunResult::kReleased;
  if (ErrorReason(status) == "LEASE_LOST") return RunResult::kLeaseLost;
  x_.logger_.Warn("could not hand the turn back; its lease will expire",
                  {{"turn_id", turn_.id()}, {"error", status.ToString()}});
  return RunResult::kAbandoned;
}

RunResult TurnExecutor::Run_::Go() {
  absl::StatusOr<std::vector<EventLogEntry>> tail = TakeLease();
  if (!tail.ok()) {
    if (ErrorReason(tail.status()) == "LEASE_LOST") return RunResult::kLeaseLost;
    x_.logger_.Error("could not take the session's stream lease",
                     {{"session_id", session_id_},
                      {"turn_id", turn_.id()},
                      {"error", tail.status().ToString()}});
    return RunResult::kAbandoned;
  }
  SealPredecessor(*tail);

  if (claim_.recovery()) {
    absl::StatusOr<std::vector<v1::Event>> events = ReadOwnEvents();
    if (!events.ok()) return RunResult::kAbandoned;
    std::optional<v1::TurnCompleted> finished;
    for (const v1::Event& event : *events) {
      transcript_.Add(event);
      if (first_seq_ == 0) first_seq_ = event.seq();
      if (event.has_turn_completed()) finished = event.turn_completed();
    }
    // What the dead owner committed step by step is stored; only the rest goes along.
    transcript_.MarkStepsCommitted(claim_.committed_steps());
    if (finished) {
      // The old owner ended the turn but died before committing it.
      return Finish(finished->status(), finished->finish_reason(),
                    finished->has_error() ? std::optional(finished->error()) : std::nullopt);
    }
    if (transcript_.has_output() ||
        turn_.attempt() > static_cast<uint32_t>(x_.options_.max_attempts)) {
      return Finish(v1::TURN_STATUS_FAILED, v1::FINISH_REASON_ERROR,
                    MakeError(v1::TURN_ERROR_KIND_INTERNAL, "WORKER_LOST",
                              transcript_.has_output()
                                  ? "the worker running the turn was lost after it emitted output"
                                  : "the worker running the turn was lost on every attempt",
                              true));
    }
    first_seq_ = 0;  // A fresh attempt: its TurnStarted is the turn's new first event.
  } else if (x_.clock_.Now() - FromTimestamp(turn_.create_time()) > x_.options_.queued_turn_ttl) {
    return Finish(v1::TURN_STATUS_CANCELLED, v1::FINISH_REASON_CANCELLED,
                  MakeError(v1::TURN_ERROR_KIND_CANCELLED, "QUEUED_TTL_EXPIRED",
                            absl::StrCat("the turn waited longer than the queue allows (",
                                         absl::FormatDuration(x_.options_.queued_turn_ttl), ")"),
                            true));
  }

  if (control_.stopping()) return Stopped(absl::OkStatus());  // Stopped before it began.
  started_ = x_.clock_.Now();
  v1::Event started;
  started.mutable_turn_started()->set_turn_id(turn_.id());
  started.mutable_turn_started()->set_model(x_.runner_.ModelName(claim_.agent_config()));
  started.mutable_turn_started()->set_attempt(std::max<uint32_t>(1, turn_.attempt()));
  if (!Publish(std::move(started)).ok() && lease_lost()) return RunResult::kLeaseLost;

  absl::StatusOr<RunOutcome> outcome = absl::UnknownError("not run");
  absl::StatusOr<v1::Message> user_message = LoadUserMessage();
  if (user_message.ok()) {
    TurnInput input{.turn = turn_,
                    .session = claim_.session(),
                    .config = claim_.agent_config(),
                    .user_message = *user_message};
    outcome = x_.runner_.Run(input, *this);
  } else {
    outcome = user_message.status();
  }

  return Stopped(outcome.status(), outcome.ok() ? &*outcome : nullptr);
}

RunResult TurnExecutor::Run_::Stopped(const absl::Status& status, const RunOutcome* outcome) {
  switch (control_.reason()) {
    case StopReason::kLeaseLost:
      return RunResult::kLeaseLost;
    case StopReason::kHandBack:
      return HandBack();
    case StopReason::kCancelled: {
      std::string detail = control_.detail().empty() ? "CANCELLED" : control_.detail();
      return Finish(
          v1::TURN_STATUS_CANCELLED, v1::FINISH_REASON_CANCELLED,
          MakeError(v1::TURN_ERROR_KIND_CANCELLED, detail, "the turn was cancelled", false));
    }
    case StopReason::kNone:
      break;
  }
  if (!status.ok()) {
    return Finish(v1::TURN_STATUS_FAILED, v1::FINISH_REASON_ERROR,
                  MakeError(v1::TURN_ERROR_KIND_INTERNAL, "", std::string(status.message()),
                            status.code() == absl::StatusCode::kUnavailable));
  }
  if (outcome->error) {
    return Finish(v1::TURN_STATUS_FAILED, v1::FINISH_REASON_ERROR, outcome->error);
  }
  return Finish(v1::TURN_STATUS_SUCCEEDED, outcome->finish_reason, std::nullopt);
}

}  // namespace parley::session
