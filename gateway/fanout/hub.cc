// The hub: channels, the streams opening, the backfill workers and the ticker (see
// the header). Each stream's own logic is in subscriber_stream.cc.
#include "gateway/fanout/hub.h"

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace parley::gateway {

Hub::Hub(HubOptions options, HistorySource& history, telemetry::Registry& registry)
    : options_(std::move(options)),
      clock_(*options_.clock),
      keys_(options_.key_prefix),
      history_(history),
      streams_gauge_(registry
                         .AddGauge("parley_fanout_streams",
                                   "Open StreamEvents calls and Subscribe subscriptions.")
                         .WithLabels({})),
      channels_gauge_(
          registry.AddGauge("parley_fanout_sessions", "Sessions with a Redis subscription.")
              .WithLabels({})),
      backfills_(
          registry.AddCounter("parley_fanout_backfills_total", "History re-reads.").WithLabels({})),
      metrics_{
          .delivered =
              registry.AddCounter("parley_fanout_delivered_total", "Events written to streams.")
                  .WithLabels({}),
          .cut = registry
                     .AddCounter("parley_fanout_slow_consumers_total",
                                 "Streams ended because their buffer overflowed.")
                     .WithLabels({}),
          .lag = registry
                     .AddHistogram("parley_fanout_lag_seconds",
                                   "From the event's timestamp to its delivery to a client.", {})
                     .WithLabels({})},
      subscriber_(options_.redis, *this) {}

Hub::~Hub() {
  {
    absl::MutexLock lock(&work_mu_);
    stopping_ = true;
  }
  for (std::thread& worker : workers_) worker.join();
  if (ticker_.joinable()) ticker_.join();
  {
    absl::MutexLock lock(&timer_mu_);
    timers_stopping_ = true;
  }
  if (timer_thread_.joinable()) timer_thread_.join();
}

void Hub::Start() {
  subscriber_.Start();
  for (int i = 0; i < options_.backfill_workers; ++i) workers_.emplace_back([this] { Worker(); });
  // Both on the real clock only: a FakeClock's owner ticks and runs timers itself.
  if (options_.tick_interval > absl::ZeroDuration()) {
    ticker_ = std::thread([this] { Ticker(); });
    timer_thread_ = std::thread([this] { TimerLoop(); });
  }
}

size_t Hub::channel_count() {
  absl::MutexLock lock(&mu_);
  return channels_.size();
}

void Hub::Open(const std::shared_ptr<SubscriberStream>& stream) {
  const int cap = stream->multiplexed() ? options_.max_subscriptions_per_tenant
                                        : options_.max_streams_per_tenant;
  bool over_cap = false;
  bool draining = false;
  {
    absl::MutexLock lock(&mu_);
    draining = draining_;
    // A call that ended before it was opened was unregistered already (or will find
    // nothing to unregister): it must not be left behind here.
    if (stream->finished()) return;
    absl::flat_hash_map<std::string, int>& counts = TenantCountLocked(*stream);
    auto held = counts.find(stream->tenant_id());
    over_cap = cap > 0 && held != counts.end() && held->second >= cap;
    if (!over_cap && !draining) {
      ++counts[stream->tenant_id()];
      opening_.emplace(stream.get(), stream);
      streams_gauge_.Add(1);
    }
  }
  // Outside the lock: finishing the call may reach back into the hub. A refused stream
  // was never counted, so its Unregister finds nothing to take away.
  if (draining) return stream->Shed();  // Not started: no cursor to hand back.
  if (!over_cap) return stream->Start();
  stream->End(
      stream->multiplexed()
          ? TooManySubscriptions(
                absl::StrCat("this tenant holds ", cap, " subscriptions on this gateway"), cap)
          : TooManyStreams(cap));
}

grpc::Status TooManyStreams(int limit) {
  absl::Status refused = absl::ResourceExhaustedError(
      absl::StrCat("this tenant holds ", limit,
                   " open streams on this gateway, its limit; close one or use another gateway"));
  SetErrorInfo(refused, "TOO_MANY_STREAMS", {{"limit", absl::StrCat(limit)}});
  return ToGrpcStatus(refused);
}

grpc::Status TooManySubscriptions(absl::string_view holder, int limit) {
  absl::Status refused = absl::ResourceExhaustedError(
      absl::StrCat(holder, ", its limit; remove one or open another stream elsewhere"));
  SetErrorInfo(refused, "TOO_MANY_SUBSCRIPTIONS", {{"limit", absl::StrCat(limit)}});
  return ToGrpcStatus(refused);
}

absl::flat_hash_map<std::string, int>& Hub::TenantCountLocked(const SubscriberStream& stream) {
  return stream.multiplexed() ? tenant_subscriptions_ : tenant_streams_;
}

void Hub::Drain() {
  std::vector<std::shared_ptr<SubscriberStream>> open;
  {
    absl::MutexLock lock(&mu_);
    draining_ = true;
    for (const auto& [raw, stream] : opening_) open.push_back(stream);
    for (const auto& [name, channel] : channels_) {
      open.insert(open.end(), channel.streams->begin(), channel.streams->end());
    }
  }
  // Outside the lock: finishing a call may reach back into the hub (Unregister).
  for (const std::shared_ptr<SubscriberStream>& stream : open) stream->Shed();
}

void Hub::StreamGoneLocked(const SubscriberStream& stream) {
  streams_gauge_.Add(-1);
  absl::flat_hash_map<std::string, int>& counts = TenantCountLocked(stream);
  auto it = counts.find(stream.tenant_id());
  if (it != counts.end() && --it->second <= 0) counts.erase(it);
}

void Hub::Join(const std::shared_ptr<SubscriberStream>& stream) {
  const std::string channel = keys_.EventChannel(stream->session_id());
  bool active = false;
  {
    absl::MutexLock lock(&mu_);
    // Gone from here means the call ended while its access was being checked.
    if (opening_.erase(stream.get()) == 0) return;
    auto [it, inserted] = channels_.try_emplace(channel);
    if (inserted) subscriber_.Subscribe(channel);
    auto streams = std::make_shared<StreamList>(*it->second.streams);
    streams->push_back(stream);
    it->second.streams = std::move(streams);
    active = it->second.active;
    channels_gauge_.Set(static_cast<double>(channels_.size()));
  }
  // Subscribed already: read history now. Otherwise OnSubscribed starts the read.
  if (active) stream->Resync();
}

void Hub::Unregister(SubscriberStream* stream) {
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

void Hub::ScheduleBackfill(std::shared_ptr<SubscriberStream> stream) {
  backfills_.Increment();
  absl::MutexLock lock(&work_mu_);
  work_.push_back(std::move(stream));
}

void Hub::Worker() {
  for (;;) {
    std::shared_ptr<SubscriberStream> stream;
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
      if (clock_.AwaitWithTimeout(work_mu_, absl::Condition(&stop), options_.tick_interval)) {
        return;
      }
    }
    TickOnce();
  }
}

void Hub::TickOnce() {
  // The copy-on-write lists themselves, so the lock every event takes is held only for
  // one pointer copy per session.
  std::vector<std::shared_ptr<const StreamList>> lists;
  StreamList opening;
  std::vector<std::shared_ptr<Ticked>> others;
  {
    absl::MutexLock lock(&mu_);
    lists.reserve(channels_.size());
    for (auto& [name, channel] : channels_) lists.push_back(channel.streams);
    for (auto& [key, stream] : opening_) opening.push_back(stream);
    std::erase_if(ticked_, [&](const std::weak_ptr<Ticked>& weak) {
      std::shared_ptr<Ticked> ticked = weak.lock();
      if (ticked == nullptr) return true;
      others.push_back(std::move(ticked));
      return false;
    });
  }
  const absl::Time now = clock_.Now();
  for (const auto& list : lists) {
    for (const auto& stream : *list) stream->Tick(now);
  }
  for (const auto& stream : opening) stream->Tick(now);
  for (const auto& ticked : others) ticked->Tick(now);
}

void Hub::CallAt(absl::Time due, std::weak_ptr<Timed> target) {
  absl::MutexLock lock(&timer_mu_);
  timers_.push(Timer{.due = due, .target = std::move(target)});
}

std::vector<std::shared_ptr<Timed>> Hub::TakeDueTimers(absl::Time now) {
  std::vector<std::shared_ptr<Timed>> due;
  while (!timers_.empty() && timers_.top().due <= now) {
    if (std::shared_ptr<Timed> target = timers_.top().target.lock()) {
      due.push_back(std::move(target));
    }
    timers_.pop();
  }
  return due;
}

void Hub::RunTimersOnce() {
  const absl::Time now = clock_.Now();
  std::vector<std::shared_ptr<Timed>> due;
  {
    absl::MutexLock lock(&timer_mu_);
    due = TakeDueTimers(now);
  }
  for (const auto& target : due) target->OnTimer(now);
}

void Hub::TimerLoop() {
  // Real time only (see Start): a flush window is milliseconds, the ticker's period a
  // second.
  absl::MutexLock lock(&timer_mu_);
  for (;;) {
    if (timers_stopping_) return;
    const absl::Time now = clock_.Now();
    std::vector<std::shared_ptr<Timed>> due = TakeDueTimers(now);
    if (!due.empty()) {
      timer_mu_.Unlock();
      for (const auto& target : due) target->OnTimer(now);
      timer_mu_.Lock();
      continue;
    }
    // Until the earliest timer, or a new one that may be earlier, or stopping.
    const size_t queued = timers_.size();
    const absl::Time next = timers_.empty() ? now + absl::Seconds(1) : timers_.top().due;
    auto changed = [this, queued]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(timer_mu_) {
      return timers_stopping_ || timers_.size() != queued;
    };
    timer_mu_.AwaitWithTimeout(absl::Condition(&changed), next - now);
  }
}

void Hub::AddTicked(std::weak_ptr<Ticked> ticked) {
  absl::MutexLock lock(&mu_);
  ticked_.push_back(std::move(ticked));
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
  ResponsePtr response = WrapEvent(std::move(event));
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
