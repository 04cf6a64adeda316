// SubscriberStream: one client's position, queue and backfill (see the header).
#include "gateway/fanout/subscriber_stream.h"

#include <google/protobuf/util/message_differencer.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/proto_time.h"
#include "common/status.h"

namespace parley::gateway {

namespace {

// A failed read of history is tried again after this long (by the ticker).
constexpr absl::Duration kRetryAfter = absl::Seconds(1);

ResponsePtr EpochChanged(uint64_t old_epoch, uint64_t new_epoch, const char* reason,
                         uint64_t resume_after_seq) {
  v1::StreamEventsResponse response;
  v1::EpochChanged* changed = response.mutable_epoch_changed();
  changed->set_old_epoch(old_epoch);
  changed->set_new_epoch(new_epoch);
  changed->set_reason(reason);
  changed->set_resume_after_seq(resume_after_seq);
  return Share(std::move(response));
}

grpc::Status SlowConsumer(uint64_t last_seq) {
  absl::Status status = absl::ResourceExhaustedError(absl::StrCat(
      "the stream fell too far behind and was closed; resume with after_seq=", last_seq));
  SetErrorInfo(status, "SLOW_CONSUMER", {{"last_seq", absl::StrCat(last_seq)}});
  return ToGrpcStatus(status);
}

// The gateway is shutting down. With the cursor when the stream knows where it is
// (`last_seq`), so the client resumes on another replica exactly there; without it
// (the start was not resolved yet) the client repeats its request as it was.
grpc::Status Draining(std::optional<uint64_t> last_seq) {
  absl::Status status = absl::UnavailableError(
      last_seq ? absl::StrCat("this gateway is shutting down; resume on another with after_seq=",
                              *last_seq)
               : std::string("this gateway is shutting down; send the request again"));
  if (last_seq) {
    SetErrorInfo(status, "GATEWAY_DRAINING", {{"last_seq", absl::StrCat(*last_seq)}});
  } else {
    SetErrorInfo(status, "GATEWAY_DRAINING");
  }
  return ToGrpcStatus(status);
}

// An emptied queue gives back what a burst made it allocate: most streams sit idle
// most of the time, and an idle stream should cost little more than its cursor.
void ReleaseIfIdle(std::vector<ResponsePtr>& responses) {
  constexpr size_t kKeep = 4;
  if (responses.empty() && responses.capacity() > kKeep) std::vector<ResponsePtr>().swap(responses);
}

}  // namespace

SubscriberStream::SubscriberStream(StreamContext& context, StreamWriter* writer,
                                   StreamParams params)
    : context_(context),
      params_(std::move(params)),
      writer_(writer),
      last_write_(context.clock().Now()) {}

void SubscriberStream::OnLive(const ResponsePtr& response) {
  absl::MutexLock lock(&mu_);
  if (finished_) return;
  if (!live_) {
    // A read of history is under way; it will pick these up when it catches up.
    if (static_cast<int>(pending_.size()) < context_.settings().max_buffered) {
      pending_.push_back(response);
    } else {
      pending_overflowed_ = true;  // Dropped here, re-read from Redis later.
    }
    return;
  }
  if (AcceptLocked(response, /*from_backfill=*/false) == Offer::kGap) {
    live_ = false;
    pending_.push_back(response);
    ScheduleBackfillLocked();
  }
}

SubscriberStream::Offer SubscriberStream::AcceptLocked(const ResponsePtr& response,
                                                       bool from_backfill) {
  const v1::Event& event = response->message().event();
  if (!event.transient() && event.seq() > next_seq_) {
    // Checked before any epoch change: the events in between come first.
    if (!from_backfill) return Offer::kGap;
    // Neither Redis nor the store has the missing events.
    absl::Status lost = absl::DataLossError(
        absl::StrCat("events ", next_seq_, "..", event.seq() - 1, " of the session are missing"));
    FinishLocked(ToGrpcStatus(lost));
    return Offer::kDropped;
  }
  if (epoch_ == 0) epoch_ = event.epoch();
  if (event.epoch() > epoch_) {
    // A new history epoch starts at this seq. Events this stream already sent from
    // here on were lost before they were persisted and are replaced: say so. (A
    // stream that had sent nothing past this point just moves on.)
    if (event.seq() < next_seq_) {
      EnqueueLocked(EpochChanged(epoch_, event.epoch(),
                                 "events were lost before they were persisted", event.seq() - 1));
      next_seq_ = event.seq();
    }
    epoch_ = event.epoch();
    transients_sent_.clear();
  } else if (event.epoch() < epoch_) {
    return Offer::kDropped;  // From before the change.
  }
  if (event.transient()) {
    // Only in place (right after the durable event it follows), and once.
    if (event.seq() + 1 != next_seq_ || TransientSentLocked(event)) return Offer::kDropped;
    EnqueueLocked(response);
    transients_sent_.push_back(response);
    return Offer::kAccepted;
  }
  if (event.seq() < next_seq_) return Offer::kDropped;
  EnqueueLocked(response);
  ++next_seq_;
  transients_sent_.clear();  // Those are over now.
  if (params_.until_turn_end && event.has_turn_sealed() &&
      (params_.turn_id.empty() || event.turn_id() == params_.turn_id)) {
    finish_after_drain_ = true;
  }
  if (awaiting_turn_start_) {
    if (event.turn_id() == params_.turn_id) {
      awaiting_turn_start_ = false;  // It started: its seal will come.
    } else if (event.has_turn_sealed()) {
      next_turn_check_ = context_.clock().Now();  // Ours is next, or gone.
    }
  }
  return Offer::kAccepted;
}

bool SubscriberStream::TransientSentLocked(const v1::Event& event) {
  // Live events carry no stream entry id, so a copy is recognised by its content.
  // Few per seq (RetryScheduled: one per attempt of a step).
  for (const ResponsePtr& sent : transients_sent_) {
    if (google::protobuf::util::MessageDifferencer::Equals(sent->message().event(), event))
      return true;
  }
  return false;
}

void SubscriberStream::EnqueueLocked(ResponsePtr response) {
  if (finished_ || finish_after_drain_) return;
  if (static_cast<int>(queue_.size()) >= context_.settings().max_buffered) {
    context_.metrics().cut.Increment();
    cut_slow_ = true;
    FinishLocked(SlowConsumer(last_written_seq_));
    return;
  }
  if (params_.batch) {
    queued_bytes_ += response->response_size();
    if (queue_.empty() && in_flight_.empty() && params_.batch_delay > absl::ZeroDuration()) {
      // The first to find no write in flight opens the window.
      flush_at_ = context_.clock().Now() + params_.batch_delay;
      context_.CallAt(flush_at_, weak_from_this());
    }
  }
  queue_.push_back(std::move(response));
  MaybeWriteLocked();
}

void SubscriberStream::MaybeWriteLocked() {
  if (writer_ == nullptr || !in_flight_.empty() || finished_) return;
  if (queue_.empty()) {
    if (finish_after_drain_) FinishLocked(grpc::Status::OK);
    return;
  }
  if (params_.batch && queued_bytes_ < context_.settings().max_batch_bytes &&
      static_cast<int>(queue_.size()) < context_.settings().max_buffered / 2 &&
      context_.clock().Now() < flush_at_) {
    // Within the delay: OnTimer writes, or the response that fills a batch (by bytes, or
    // half the buffer, so that a client keeping up is never cut for what waits).
    return;
  }
  const size_t take = NextWriteSizeLocked();
  flush_at_ = absl::InfinitePast();  // What queues during this write goes in the next.
  in_flight_.assign(std::make_move_iterator(queue_.begin()),
                    std::make_move_iterator(queue_.begin() + take));
  queue_.erase(queue_.begin(), queue_.begin() + take);
  ReleaseIfIdle(queue_);
  last_write_ = context_.clock().Now();
  writer_->Write(in_flight_);
}

size_t SubscriberStream::NextWriteSizeLocked() {
  if (!params_.batch) return std::min<size_t>(queue_.size(), std::max(writer_->max_batch(), 1));
  // Up to the byte limit; the response that reaches it goes too (a batch holds at least
  // one, however large).
  const size_t max_bytes = context_.settings().max_batch_bytes;
  size_t take = 0;
  size_t bytes = 0;
  while (take < queue_.size() && bytes < max_bytes) bytes += queue_[take++]->response_size();
  queued_bytes_ -= bytes;
  return take;
}

size_t SubscriberStream::waiting_responses() const {
  absl::MutexLock lock(&mu_);
  return queue_.size();
}

void SubscriberStream::OnTimer(absl::Time now) {
  absl::MutexLock lock(&mu_);
  // The window is over by the timer's clock reading even should the clock read earlier
  // again now (a wall clock stepped back): no other timer would come for it. A later
  // window has a timer of its own.
  if (now >= flush_at_) flush_at_ = absl::InfinitePast();
  MaybeWriteLocked();
}

void SubscriberStream::OnWriteDone(bool ok) {
  absl::MutexLock lock(&mu_);
  if (ok) {
    const absl::Time now = context_.clock().Now();
    for (const ResponsePtr& written : in_flight_) {
      if (!written->message().has_event()) continue;
      const v1::Event& event = written->message().event();
      if (!event.transient()) last_written_seq_ = event.seq();
      if (event.has_time()) {
        context_.metrics().lag.Observe(absl::ToDoubleSeconds(now - FromTimestamp(event.time())));
      }
      context_.metrics().delivered.Increment();
    }
  }
  in_flight_.clear();
  ReleaseIfIdle(in_flight_);
  if (paused_ && static_cast<int>(queue_.size()) <= context_.settings().max_buffered / 4) {
    paused_ = false;  // The client caught up with what history we read: read more.
    ScheduleBackfillLocked();
  }
  if (!ok) {
    FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "the client stopped reading"));
  }
  if (deferred_finish_ && writer_ != nullptr) {
    // A cut's cursor counts the write that was in flight when the cut was decided: that
    // event reaches the client before the status does.
    grpc::Status status = cut_slow_ ? SlowConsumer(last_written_seq_)
                          : shed_   ? Draining(last_written_seq_)
                                    : *std::move(deferred_finish_);
    deferred_finish_.reset();
    writer_->FinishStream(status);
    return;
  }
  MaybeWriteLocked();
}

void SubscriberStream::FinishLocked(const grpc::Status& status) {
  if (finished_) return;
  finished_ = true;
  queue_.clear();
  ReleaseIfIdle(queue_);
  queued_bytes_ = 0;
  pending_.clear();
  if (writer_ == nullptr) return;
  // gRPC wants no Finish while a write is outstanding; OnWriteDone sends it.
  if (!in_flight_.empty()) {
    deferred_finish_ = status;
  } else {
    writer_->FinishStream(status);
  }
}

void SubscriberStream::Shed() {
  absl::MutexLock lock(&mu_);
  if (finished_) return;
  shed_ = resolved_;
  FinishLocked(Draining(resolved_ ? std::optional<uint64_t>(last_written_seq_) : std::nullopt));
}

void SubscriberStream::Cancel() {
  End(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the client"));
}

void SubscriberStream::End(const grpc::Status& status) {
  absl::MutexLock lock(&mu_);
  FinishLocked(status);
}

bool SubscriberStream::finished() const {
  absl::MutexLock lock(&mu_);
  return finished_;
}

void SubscriberStream::Detach() {
  absl::MutexLock lock(&mu_);
  writer_ = nullptr;
  finished_ = true;
}

void SubscriberStream::Start() {
  absl::MutexLock lock(&mu_);
  ScheduleBackfillLocked();
}

void SubscriberStream::Resync() {
  absl::MutexLock lock(&mu_);
  if (finished_) return;
  live_ = false;
  if (backfill_scheduled_) {
    reread_ = true;  // The read under way may have missed what came meanwhile.
    return;
  }
  if (!paused_) ScheduleBackfillLocked();  // A paused read resumes on its own.
}

void SubscriberStream::ScheduleBackfillLocked() {
  if (backfill_scheduled_ || finished_) return;
  backfill_scheduled_ = true;
  context_.ScheduleBackfill(shared_from_this());
}

void SubscriberStream::Tick(absl::Time now) {
  absl::MutexLock lock(&mu_);
  if (finished_) return;
  if (backfill_failed_ && now - last_backfill_failure_ > kRetryAfter) {
    backfill_failed_ = false;
    ScheduleBackfillLocked();
  }
  if (awaiting_turn_start_ && live_ && !backfill_scheduled_ && now >= next_turn_check_) {
    turn_check_due_ = true;
    next_turn_check_ = now + context_.settings().queued_turn_recheck;
    ScheduleBackfillLocked();
  }
  if (!params_.multiplexed && in_flight_.empty() && queue_.empty() &&
      now - last_write_ >= context_.settings().keepalive) {
    v1::StreamEventsResponse keepalive;
    *keepalive.mutable_keepalive()->mutable_time() = ToTimestamp(now);
    keepalive.mutable_keepalive()->set_last_seq(next_seq_ > 0 ? next_seq_ - 1 : 0);
    EnqueueLocked(Share(std::move(keepalive)));
  }
}

absl::StatusOr<SubscriberStream::Resolved> SubscriberStream::ResolveStart() {
  HistorySource& history = context_.history();
  // One store call answers the access check, the epoch and the turn to start from.
  absl::StatusOr<StreamStart> start =
      history.Start(params_.tenant_id, params_.session_id,
                    params_.start == StreamParams::Start::kTurn ? params_.turn_id : "");
  if (!start.ok()) return start.status();
  uint64_t next = params_.after_seq + 1;
  if (params_.start == StreamParams::Start::kTurn) {
    next = 0;  // Stays 0 for a turn that ended without starting: from the newest.
    if (start->turn.has_value()) {
      absl::StatusOr<uint64_t> first = history.TurnFirstSeq(params_.session_id, *start);
      if (!first.ok()) return first.status();
      next = *first;
    }
  }
  const bool turn_never_started = params_.start == StreamParams::Start::kTurn && next == 0;
  if (turn_never_started && params_.until_turn_end) {
    absl::MutexLock lock(&mu_);
    resolved_ = true;
    return Resolved::kNothingToStream;
  }
  if (params_.start == StreamParams::Start::kLatest || turn_never_started) {
    absl::StatusOr<uint64_t> last = history.LastSeq(params_.session_id, *start);
    if (!last.ok()) return last.status();
    next = *last + 1;
  }
  const uint64_t current_epoch = params_.client_epoch != 0 ? start->epoch : 0;
  absl::MutexLock lock(&mu_);
  // Queued, or running without a TurnStarted yet (a running turn can still go back to
  // the queue, handed back by a draining worker, and be cancelled there).
  if (params_.until_turn_end && start->turn.has_value() &&
      (start->turn->status() == v1::TURN_STATUS_QUEUED ||
       (start->turn->status() == v1::TURN_STATUS_RUNNING && start->turn->first_seq() == 0))) {
    awaiting_turn_start_ = true;
    next_turn_check_ = context_.clock().Now() + context_.settings().queued_turn_recheck;
  }
  next_seq_ = next;
  // The client holds everything before where its stream starts: a cut before the first
  // write must hand that back as the cursor, not 0.
  last_written_seq_ = next - 1;
  resolved_ = true;
  if (current_epoch != 0 && current_epoch != params_.client_epoch) {
    // The client's cursor belongs to a history that no longer exists: it must rebuild
    // its view from the start of the current one.
    EnqueueLocked(EpochChanged(params_.client_epoch, current_epoch,
                               "the cursor is from an earlier epoch", 0));
    next_seq_ = 1;
    last_written_seq_ = 0;
  }
  return Resolved::kStream;
}

void SubscriberStream::RunBackfill() {
  bool resolved;
  bool check_turn;
  {
    absl::MutexLock lock(&mu_);
    if (finished_) return;
    resolved = resolved_;
    check_turn = std::exchange(turn_check_due_, false);
  }
  if (check_turn) return CheckQueuedTurn();
  if (resolved) return CatchUp();
  CheckAccessThenJoin();
}

void SubscriberStream::CheckQueuedTurn() {
  const absl::StatusOr<StreamStart> start =
      context_.history().Start(params_.tenant_id, params_.session_id, params_.turn_id);
  absl::MutexLock lock(&mu_);
  backfill_scheduled_ = false;
  if (finished_) return;
  // (A seal seen while the store was asked has moved the next check up: it stays so.)
  if (awaiting_turn_start_ && start.ok() && start->turn.has_value() &&
      EndedWithoutStarting(*start->turn)) {
    finish_after_drain_ = true;  // Nothing will ever come for it.
    MaybeWriteLocked();
    return;
  }
  if (!live_) {
    // A resync came during the check: read history again.
    reread_ = false;
    ScheduleBackfillLocked();
  }
}

void SubscriberStream::CheckAccessThenJoin() {
  // Where the stream starts is known before it subscribes, but history is read only
  // once the subscription is confirmed (Join, then Resync), so whatever is published in
  // between is still read from Redis.
  const absl::StatusOr<Resolved> start = ResolveStart();
  {
    absl::MutexLock lock(&mu_);
    backfill_scheduled_ = false;
    if (finished_) return;
    if (start.status().code() == absl::StatusCode::kUnavailable) return RetryLaterLocked();
    if (!start.ok()) {
      FinishLocked(ToGrpcStatus(start.status()));  // NOT_FOUND for someone else's session.
      return;
    }
    if (*start == Resolved::kNothingToStream) {
      FinishLocked(grpc::Status::OK);  // Its end is already past: nothing will come.
      return;
    }
  }
  context_.Join(shared_from_this());
}

void SubscriberStream::CatchUp() {
  // Bounded: a stream that keeps falling behind is cut by its buffer long before.
  for (int round = 0; round < 10000; ++round) {
    const std::optional<HistoryRead> read = NextRead();
    if (!read.has_value()) return;
    absl::StatusOr<std::vector<v1::Event>> events = context_.history().ReadFrom(
        params_.tenant_id, params_.session_id, read->from_seq, read->max);
    absl::MutexLock lock(&mu_);
    if (finished_) return;
    if (!events.ok()) return RetryLaterLocked();
    switch (AcceptHistoryLocked(*events, read->from_seq)) {
      case AfterRead::kFinished:
        return;
      case AfterRead::kReadAgain:
        continue;
      case AfterRead::kCaughtUp:
        if (GoLiveLocked()) return;
    }
  }
  absl::MutexLock lock(&mu_);
  backfill_scheduled_ = false;
}

std::optional<SubscriberStream::HistoryRead> SubscriberStream::NextRead() {
  absl::MutexLock lock(&mu_);
  if (finished_) return std::nullopt;
  // Never read more history than the buffer can take: a long backfill pauses while the
  // client reads, instead of overflowing its own buffer.
  const int room = context_.settings().max_buffered / 2 - static_cast<int>(queue_.size());
  if (room <= 0) {
    backfill_scheduled_ = false;
    paused_ = true;
    return std::nullopt;
  }
  return HistoryRead{.from_seq = next_seq_,
                     .max = std::min(context_.settings().backfill_batch, room)};
}

SubscriberStream::AfterRead SubscriberStream::AcceptHistoryLocked(std::vector<v1::Event>& events,
                                                                  uint64_t from_seq) {
  for (v1::Event& event : events) {
    AcceptLocked(WrapEvent(std::move(event)), /*from_backfill=*/true);
    if (finished_) return AfterRead::kFinished;
    if (reread_) break;
  }
  if (reread_) {
    // Redis reconnected meanwhile, or the stream restarted at a new epoch.
    reread_ = false;
    return AfterRead::kReadAgain;
  }
  // Keep reading until a read brings nothing new: a short read from the store can still
  // be followed by the hot window.
  if (!events.empty() && next_seq_ != from_seq) return AfterRead::kReadAgain;
  if (pending_overflowed_) {
    // Live events were dropped while reading: read them from Redis.
    pending_overflowed_ = false;
    pending_.clear();
    return AfterRead::kReadAgain;
  }
  return AfterRead::kCaughtUp;
}

bool SubscriberStream::GoLiveLocked() {
  // Caught up with the hot window: what arrived live meanwhile comes next.
  std::vector<ResponsePtr> held;
  held.swap(pending_);
  bool gap = false;
  for (const ResponsePtr& response : held) {
    if (gap) {
      pending_.push_back(response);
    } else if (AcceptLocked(response, /*from_backfill=*/false) == Offer::kGap) {
      gap = true;
      pending_.push_back(response);
    }
    if (finished_) return true;
  }
  if (gap) return false;
  backfill_scheduled_ = false;
  live_ = true;
  return true;
}

void SubscriberStream::RetryLaterLocked() {
  backfill_scheduled_ = false;
  backfill_failed_ = true;
  last_backfill_failure_ = context_.clock().Now();
}

}  // namespace parley::gateway
