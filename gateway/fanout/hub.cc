#include "gateway/fanout/hub.h"

#include <google/protobuf/util/message_differencer.h>
#include <google/protobuf/util/time_util.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/status.h"

namespace parley::gateway {
namespace {

ResponsePtr Wrap(v1::Event event) {
  auto response = std::make_shared<v1::StreamEventsResponse>();
  *response->mutable_event() = std::move(event);
  return response;
}

ResponsePtr EpochChanged(uint64_t old_epoch, uint64_t new_epoch, const char* reason,
                         uint64_t resume_after_seq) {
  auto response = std::make_shared<v1::StreamEventsResponse>();
  v1::EpochChanged* changed = response->mutable_epoch_changed();
  changed->set_old_epoch(old_epoch);
  changed->set_new_epoch(new_epoch);
  changed->set_reason(reason);
  changed->set_resume_after_seq(resume_after_seq);
  return response;
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

}  // namespace

// ---------------------------------------------------------------------------------
// StreamCore

StreamCore::StreamCore(Hub& hub, StreamWriter* writer, StreamParams params)
    : hub_(hub), params_(std::move(params)), writer_(writer), last_write_(absl::Now()) {}

void StreamCore::OnLive(const ResponsePtr& response) {
  absl::MutexLock lock(&mu_);
  if (finished_) return;
  if (!live_) {
    // A read of history is under way; it will pick these up when it catches up.
    if (static_cast<int>(pending_.size()) < hub_.options().max_buffered) {
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

StreamCore::Offer StreamCore::AcceptLocked(const ResponsePtr& response, bool from_backfill) {
  const v1::Event& event = response->event();
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
  return Offer::kAccepted;
}

bool StreamCore::TransientSentLocked(const v1::Event& event) {
  // Live events carry no stream entry id, so a copy is recognised by its content.
  // Few per seq (RetryScheduled: one per attempt of a step).
  for (const ResponsePtr& sent : transients_sent_) {
    if (google::protobuf::util::MessageDifferencer::Equals(sent->event(), event)) return true;
  }
  return false;
}

void StreamCore::EnqueueLocked(ResponsePtr response) {
  if (finished_ || finish_after_drain_) return;
  if (static_cast<int>(queue_.size()) >= hub_.options().max_buffered) {
    hub_.cut().Increment();
    cut_slow_ = true;
    FinishLocked(SlowConsumer(last_written_seq_));
    return;
  }
  queue_.push_back(std::move(response));
  MaybeWriteLocked();
}

void StreamCore::MaybeWriteLocked() {
  if (writer_ == nullptr || in_flight_ != nullptr || finished_) return;
  if (queue_.empty()) {
    if (finish_after_drain_) FinishLocked(grpc::Status::OK);
    return;
  }
  in_flight_ = std::move(queue_.front());
  queue_.pop_front();
  last_write_ = absl::Now();
  writer_->WriteResponse(in_flight_.get());
}

void StreamCore::OnWriteDone(bool ok) {
  absl::MutexLock lock(&mu_);
  if (in_flight_ != nullptr && in_flight_->has_event()) {
    const v1::Event& event = in_flight_->event();
    if (ok && !event.transient()) last_written_seq_ = event.seq();
    if (ok && event.has_time()) {
      hub_.lag().Observe(absl::ToDoubleSeconds(
          absl::Now() -
          absl::FromUnixNanos(
              google::protobuf::util::TimeUtil::TimestampToNanoseconds(event.time()))));
    }
    if (ok) hub_.delivered().Increment();
  }
  in_flight_.reset();
  if (paused_ && static_cast<int>(queue_.size()) <= hub_.options().max_buffered / 4) {
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

void StreamCore::FinishLocked(const grpc::Status& status) {
  if (finished_) return;
  finished_ = true;
  queue_.clear();
  pending_.clear();
  if (writer_ == nullptr) return;
  // gRPC wants no Finish while a write is outstanding; OnWriteDone sends it.
  if (in_flight_ != nullptr) {
    deferred_finish_ = status;
  } else {
    writer_->FinishStream(status);
  }
}

void StreamCore::Shed() {
  absl::MutexLock lock(&mu_);
  if (finished_) return;
  shed_ = resolved_;
  FinishLocked(Draining(resolved_ ? std::optional<uint64_t>(last_written_seq_) : std::nullopt));
}

void StreamCore::Cancel() {
  End(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the client"));
}

void StreamCore::End(const grpc::Status& status) {
  absl::MutexLock lock(&mu_);
  FinishLocked(status);
}

bool StreamCore::finished() const {
  absl::MutexLock lock(&mu_);
  return finished_;
}

void StreamCore::Detach() {
  absl::MutexLock lock(&mu_);
  writer_ = nullptr;
  finished_ = true;
}

void StreamCore::Start() {
  absl::MutexLock lock(&mu_);
  ScheduleBackfillLocked();
}

void StreamCore::Resync() {
  absl::MutexLock lock(&mu_);
  if (finished_) return;
  live_ = false;
  if (backfill_scheduled_) {
    reread_ = true;  // The read under way may have missed what came meanwhile.
    return;
  }
  if (!paused_) ScheduleBackfillLocked();  // A paused read resumes on its own.
}

void StreamCore::ScheduleBackfillLocked() {
  if (backfill_scheduled_ || finished_) return;
  backfill_scheduled_ = true;
  hub_.ScheduleBackfill(shared_from_this());
}

void StreamCore::Tick(absl::Time now) {
  absl::MutexLock lock(&mu_);
  if (finished_) return;
  if (backfill_failed_ && now - last_backfill_failure_ > absl::Seconds(1)) {
    backfill_failed_ = false;
    ScheduleBackfillLocked();
  }
  if (in_flight_ == nullptr && queue_.empty() && now - last_write_ >= hub_.options().keepalive) {
    auto keepalive = std::make_shared<v1::StreamEventsResponse>();
    *keepalive->mutable_keepalive()->mutable_time() =
        google::protobuf::util::TimeUtil::NanosecondsToTimestamp(absl::ToUnixNanos(now));
    keepalive->mutable_keepalive()->set_last_seq(next_seq_ > 0 ? next_seq_ - 1 : 0);
    EnqueueLocked(std::move(keepalive));
  }
}

absl::Status StreamCore::ResolveStart() {
  HistorySource& history = hub_.history();
  // One store call answers the access check, the epoch and the turn to start from.
  absl::StatusOr<StreamStart> start =
      history.Start(params_.tenant_id, params_.session_id,
                    params_.start == StreamParams::Start::kTurn ? params_.turn_id : "");
  if (!start.ok()) return start.status();
  uint64_t next = params_.after_seq + 1;
  if (params_.start == StreamParams::Start::kTurn) {
    next = 0;  // Unknown until the turn says: then from the newest, below.
    if (start->turn.has_value()) {
      absl::StatusOr<uint64_t> first = history.TurnFirstSeq(params_.session_id, *start->turn);
      if (!first.ok()) return first.status();
      next = *first;
    }
  }
  if (params_.start == StreamParams::Start::kLatest ||
      (params_.start == StreamParams::Start::kTurn && next == 0)) {
    absl::StatusOr<uint64_t> last = history.LastSeq(params_.session_id, *start);
    if (!last.ok()) return last.status();
    next = *last + 1;
  }
  const uint64_t current_epoch = params_.client_epoch != 0 ? start->epoch : 0;
  absl::MutexLock lock(&mu_);
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
  return absl::OkStatus();
}

void StreamCore::CheckAccessThenRegister() {
  // Where the stream starts is known before it subscribes, but history is read only
  // once the subscription is confirmed (Hub::Register, then Resync), so whatever is
  // published in between is still read from Redis.
  const absl::Status start = ResolveStart();
  {
    absl::MutexLock lock(&mu_);
    backfill_scheduled_ = false;
    if (finished_) return;
    if (start.code() == absl::StatusCode::kUnavailable) {
      // The store could not answer: keep the stream open, the ticker retries.
      backfill_failed_ = true;
      last_backfill_failure_ = absl::Now();
      return;
    }
    if (!start.ok()) {
      FinishLocked(ToGrpcStatus(start));  // NOT_FOUND for someone else's session.
      return;
    }
  }
  hub_.Register(shared_from_this());
}

void StreamCore::RunBackfill() {
  bool resolved;
  {
    absl::MutexLock lock(&mu_);
    if (finished_) return;
    resolved = resolved_;
  }
  if (!resolved) {
    CheckAccessThenRegister();
    return;
  }
  // Bounded: a stream that keeps falling behind is cut by its buffer long before.
  for (int round = 0; round < 10000; ++round) {
    uint64_t from;
    {
      absl::MutexLock lock(&mu_);
      if (finished_) return;
      from = next_seq_;
    }
    int batch;
    {
      // Never read more history than the buffer can take: a long backfill pauses
      // while the client reads, instead of overflowing its own buffer.
      absl::MutexLock lock(&mu_);
      const int room = hub_.options().max_buffered / 2 - static_cast<int>(queue_.size());
      if (room <= 0) {
        backfill_scheduled_ = false;
        paused_ = true;
        return;
      }
      batch = std::min(hub_.options().backfill_batch, room);
    }
    absl::StatusOr<std::vector<v1::Event>> events =
        hub_.history().ReadFrom(params_.tenant_id, params_.session_id, from, batch);
    absl::MutexLock lock(&mu_);
    if (finished_) return;
    if (!events.ok()) {
      // Redis or the store is unreachable: keep the stream open and try again.
      backfill_scheduled_ = false;
      backfill_failed_ = true;
      last_backfill_failure_ = absl::Now();
      return;
    }
    for (v1::Event& event : *events) {
      AcceptLocked(Wrap(std::move(event)), /*from_backfill=*/true);
      if (finished_) return;
      if (reread_) break;
    }
    if (reread_) {
      // Redis reconnected meanwhile, or the stream restarted at a new epoch.
      reread_ = false;
      continue;
    }
    // Keep reading until a read brings nothing new: a short read from the store can
    // still be followed by the hot window.
    if (!events->empty() && next_seq_ != from) continue;
    if (pending_overflowed_) {
      // Live events were dropped while reading: read them from Redis.
      pending_overflowed_ = false;
      pending_.clear();
      continue;
    }
    // Caught up with the hot window: what arrived live meanwhile comes next.
    std::vector<ResponsePtr> pending;
    pending.swap(pending_);
    bool gap = false;
    for (const ResponsePtr& response : pending) {
      if (gap) {
        pending_.push_back(response);
      } else if (AcceptLocked(response, /*from_backfill=*/false) == Offer::kGap) {
        gap = true;
        pending_.push_back(response);
      }
      if (finished_) return;
    }
    if (!gap) {
      backfill_scheduled_ = false;
      live_ = true;
      return;
    }
  }
  absl::MutexLock lock(&mu_);
  backfill_scheduled_ = false;
}

// ---------------------------------------------------------------------------------
// Hub

Hub::Hub(HubOptions options, HistorySource& history, telemetry::Registry& registry)
    : options_(std::move(options)),
      keys_(options_.key_prefix),
      history_(history),
      streams_gauge_(
          registry.AddGauge("parley_fanout_streams", "Open StreamEvents calls.").WithLabels({})),
      channels_gauge_(
          registry.AddGauge("parley_fanout_sessions", "Sessions with a Redis subscription.")
              .WithLabels({})),
      delivered_(registry.AddCounter("parley_fanout_delivered_total", "Events written to streams.")
                     .WithLabels({})),
      cut_(registry
               .AddCounter("parley_fanout_slow_consumers_total",
                           "Streams ended because their buffer overflowed.")
               .WithLabels({})),
      backfills_(
          registry.AddCounter("parley_fanout_backfills_total", "History re-reads.").WithLabels({})),
      lag_(registry
               .AddHistogram("parley_fanout_lag_seconds",
                             "From the event's timestamp to its delivery to a client.", {})
               .WithLabels({})),
      subscriber_(options_.redis, *this) {}

Hub::~Hub() {
  {
    absl::MutexLock lock(&work_mu_);
    stopping_ = true;
  }
  for (std::thread& worker : workers_) worker.join();
  if (ticker_.joinable()) ticker_.join();
}

void Hub::Start() {
  subscriber_.Start();
  for (int i = 0; i < options_.backfill_workers; ++i) workers_.emplace_back([this] { Worker(); });
  ticker_ = std::thread([this] { Ticker(); });
}

size_t Hub::channel_count() {
  absl::MutexLock lock(&mu_);
  return channels_.size();
}

void Hub::Open(const std::shared_ptr<StreamCore>& stream) {
  bool over_cap = false;
  bool draining = false;
  {
    absl::MutexLock lock(&mu_);
    draining = draining_;
    // A call that ended before it was opened was unregistered already (or will find
    // nothing to unregister): it must not be left behind here.
    if (stream->finished()) return;
    const int cap = options_.max_streams_per_tenant;
    auto held = tenant_streams_.find(stream->tenant_id());
    over_cap = cap > 0 && held != tenant_streams_.end() && held->second >= cap;
    if (!over_cap && !draining) {
      ++tenant_streams_[stream->tenant_id()];
      opening_.emplace(stream.get(), stream);
      streams_gauge_.Add(1);
    }
  }
  // Outside the lock: finishing the call may reach back into the hub. A refused stream
  // was never counted, so its Unregister finds nothing to take away.
  if (draining) return stream->End(Draining(std::nullopt));
  if (!over_cap) return stream->Start();
  absl::Status refused = absl::ResourceExhaustedError(
      absl::StrCat("this tenant holds ", options_.max_streams_per_tenant,
                   " open streams on this gateway, its limit; close one or use another gateway"));
  SetErrorInfo(refused, "TOO_MANY_STREAMS",
               {{"limit", absl::StrCat(options_.max_streams_per_tenant)}});
  stream->End(ToGrpcStatus(refused));
}

void Hub::Drain() {
  std::vector<std::shared_ptr<StreamCore>> open;
  {
    absl::MutexLock lock(&mu_);
    draining_ = true;
    for (const auto& [raw, stream] : opening_) open.push_back(stream);
    for (const auto& [name, channel] : channels_) {
      open.insert(open.end(), channel.streams->begin(), channel.streams->end());
    }
  }
  // Outside the lock: finishing a call may reach back into the hub (Unregister).
  for (const std::shared_ptr<StreamCore>& stream : open) stream->Shed();
}

void Hub::StreamGoneLocked(const StreamCore& stream) {
  streams_gauge_.Add(-1);
  auto it = tenant_streams_.find(stream.tenant_id());
  if (it != tenant_streams_.end() && --it->second <= 0) tenant_streams_.erase(it);
}

void Hub::Register(const std::shared_ptr<StreamCore>& stream) {
  const std::string channel = keys_.EventChannel(stream->session_id());
  bool active = false;
  {
    absl::MutexLock lock(&mu_);
    // Gone from here means the call ended while its access was being checked.
    if (opening_.erase(stream.get()) == 0) return;
    auto [it, inserted] = channels_.try_emplace(channel);
    if (inserted) {
      it->second.session_id = stream->session_id();
      subscriber_.Subscribe(channel);
    }
    auto streams = std::make_shared<StreamList>(*it->second.streams);
    streams->push_back(stream);
    it->second.streams = std::move(streams);
    active = it->second.active;
    channels_gauge_.Set(static_cast<double>(channels_.size()));
  }
  // Subscribed already: read history now. Otherwise OnSubscribed starts the read.
  if (active) stream->Resync();
}

void Hub::Unregister(StreamCore* stream) {
  const std::string channel = keys_.EventChannel(stream->session_id());
  absl::MutexLock lock(&mu_);
  if (opening_.erase(stream) > 0) {
    StreamGoneLocked(*stream);
    return;
  }
  auto it = channels_.find(channel);
  if (it == channels_.end()) return;
  auto streams = std::make_shared<StreamList>();
  for (const auto& other : *it->second.streams) {
    if (other.get() != stream) streams->push_back(other);
  }
  if (streams->size() < it->second.streams->size()) StreamGoneLocked(*stream);
  if (streams->empty()) {
    subscriber_.Unsubscribe(channel);
    channels_.erase(it);
    channels_gauge_.Set(static_cast<double>(channels_.size()));
    return;
  }
  it->second.streams = std::move(streams);
}

void Hub::ScheduleBackfill(std::shared_ptr<StreamCore> stream) {
  backfills_.Increment();
  absl::MutexLock lock(&work_mu_);
  work_.push_back(std::move(stream));
}

void Hub::Worker() {
  for (;;) {
    std::shared_ptr<StreamCore> stream;
    {
      absl::MutexLock lock(&work_mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(work_mu_) {
        return stopping_ || !work_.empty();
      };
      work_mu_.Await(absl::Condition(&ready));
      if (stopping_) return;
      stream = std::move(work_.front());
      work_.pop_front();
    }
    stream->RunBackfill();
  }
}

void Hub::Ticker() {
  for (;;) {
    {
      absl::MutexLock lock(&work_mu_);
      auto stop = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(work_mu_) { return stopping_; };
      if (work_mu_.AwaitWithTimeout(absl::Condition(&stop), absl::Seconds(1))) return;
    }
    // The copy-on-write lists themselves, so the lock every event takes is held only
    // for one pointer copy per session.
    std::vector<std::shared_ptr<const StreamList>> lists;
    StreamList opening;
    {
      absl::MutexLock lock(&mu_);
      lists.reserve(channels_.size());
      for (auto& [name, channel] : channels_) lists.push_back(channel.streams);
      for (auto& [key, stream] : opening_) opening.push_back(stream);
    }
    const absl::Time now = absl::Now();
    for (const auto& list : lists) {
      for (const auto& stream : *list) stream->Tick(now);
    }
    for (const auto& stream : opening) stream->Tick(now);
  }
}

void Hub::OnSubscribed(const std::string& channel) {
  std::shared_ptr<const StreamList> streams;
  {
    absl::MutexLock lock(&mu_);
    auto it = channels_.find(channel);
    if (it == channels_.end()) return;
    it->second.active = true;
    streams = it->second.streams;
  }
  // New streams read history for the first time; after a reconnect, every stream
  // re-reads from its own next seq, so whatever was published meanwhile arrives.
  for (const auto& stream : *streams) stream->Resync();
}

void Hub::OnMessage(const std::string& channel, std::string payload) {
  v1::Event event;
  if (!event.ParseFromString(payload)) return;
  ResponsePtr response = Wrap(std::move(event));
  std::shared_ptr<const StreamList> streams;
  {
    absl::MutexLock lock(&mu_);
    auto it = channels_.find(channel);
    if (it == channels_.end()) return;
    streams = it->second.streams;
  }
  // Outside the hub lock: each stream guards itself, and a stream whose reactor is
  // gone has no writer left to touch.
  for (const auto& stream : *streams) stream->OnLive(response);
}

void Hub::OnDisconnected() {
  absl::MutexLock lock(&mu_);
  for (auto& [name, channel] : channels_) channel.active = false;
}

}  // namespace parley::gateway
