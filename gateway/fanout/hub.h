// The fan-out hub: every live event of every watched session, to every local stream.
//
// One Redis subscription per session per gateway process, whatever the number of
// viewers: the hub keeps a Channel per watched session with the streams reading it,
// subscribes when the first stream joins and unsubscribes when the last one leaves.
// A stream joins in two steps: Open hands it to a backfill worker, which checks that
// the session belongs to the caller's tenant and resolves where the stream starts;
// only a stream that passed joins its channel (Join). A request for someone else's
// session ends with NOT_FOUND having subscribed to nothing.
// A published event is parsed once, wrapped once in a shared StreamEventsResponse, and
// offered to each stream of its channel; the publisher side (Redis) never waits for
// any client. What each stream does with it — its position, buffer and re-reads of
// history — is SubscriberStream's (subscriber_stream.h), which sees the hub only as a
// StreamContext (stream_context.h).
//
//   Hub hub(options, history, registry);
//   hub.Start();
//   hub.Open(std::make_shared<SubscriberStream>(hub, writer, params));
//
// Threads: the RedisSubscriber loop thread (OnMessage / OnSubscribed / OnDisconnected),
// `backfill_workers` threads running streams' backfill steps, one ticker thread
// (keepalives, retrying failed backfills; every `tick_interval` of `clock`), one timer
// thread (the flush windows of Subscribe streams and batched StreamEvents, CallAt), and gRPC's
// callback threads (Open, Unregister, Drain). Lock order: Hub::mu_, then SubscriberStream::mu_,
// then Hub::work_mu_. Fan-out itself runs outside Hub::mu_ on a copy-on-write snapshot of the
// session's streams.
#pragma once

#include <grpcpp/grpcpp.h>

#include <deque>
#include <memory>
#include <optional>
#include <queue>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "gateway/fanout/history.h"
#include "gateway/fanout/redis_subscriber.h"
#include "gateway/fanout/stream_context.h"
#include "gateway/fanout/subscriber_stream.h"
#include "telemetry/metrics.h"

namespace parley::gateway {

struct HubOptions {
  RedisEndpoint redis;
  std::string key_prefix;
  StreamSettings stream;  // Each stream's buffer, history batch and keepalive.
  int backfill_workers = 2;
  // Open streams one tenant may hold on this gateway; more are refused with
  // RESOURCE_EXHAUSTED "TOO_MANY_STREAMS". 0: no cap.
  int max_streams_per_tenant = 0;
  // Subscriptions of Subscribe streams one tenant may hold on this gateway, and one
  // stream may hold; more are refused (that subscription only) with
  // RESOURCE_EXHAUSTED "TOO_MANY_SUBSCRIPTIONS". 0: no cap.
  int max_subscriptions_per_tenant = 100'000;
  int max_subscriptions_per_stream = 10'000;
  // Every timestamp and timed decision of the hub and its streams; must outlive the hub.
  Clock* clock = &RealClock::Get();
  // The ticker's period (keepalives, retries). Zero starts no ticker thread: the owner
  // calls TickOnce() (tests, on a FakeClock).
  absl::Duration tick_interval = absl::Seconds(1);
};

// RESOURCE_EXHAUSTED refusals: a tenant at its stream limit ("TOO_MANY_STREAMS"), and
// a subscription over a limit of `holder` ("TOO_MANY_SUBSCRIPTIONS"); both carry
// `limit` in their ErrorInfo.
grpc::Status TooManyStreams(int limit);
grpc::Status TooManySubscriptions(absl::string_view holder, int limit);

// What the ticker visits besides the streams of its channels: a Subscribe stream, for
// its one keepalive.
class Ticked {
 public:
  virtual ~Ticked() = default;
  virtual void Tick(absl::Time now) = 0;
};

class Hub final : public RedisSubscriber::Listener, public StreamContext {
 public:
  // `history` and `registry` must outlive the hub.
  Hub(HubOptions options, HistorySource& history, telemetry::Registry& registry);
  ~Hub() override;  // Stops every thread.

  void Start();

  // A new stream: its access check runs on a backfill worker, which then calls Join.
  // Nothing is subscribed until then. Refused at once while draining or when its tenant
  // holds `max_streams_per_tenant` streams.
  void Open(const std::shared_ptr<SubscriberStream>& stream);
  // The stream is done, opened or joined; the last viewer of a session unsubscribes it.
  void Unregister(SubscriberStream* stream);
  // The gateway is shutting down: every open stream ends UNAVAILABLE (ErrorInfo
  // GATEWAY_DRAINING with `last_seq`, the cursor to resume from on another replica,
  // once the stream knows it) and streams opened from now on are refused the same way.
  void Drain();
  // One pass of the ticker, at the clock's now: keepalives due and retries due.
  void TickOnce();
  // `ticked` is ticked with the streams until it is gone.
  void AddTicked(std::weak_ptr<Ticked> ticked);
  // StreamContext: on the timer thread — or, with `tick_interval` zero, from
  // RunTimersOnce.
  void CallAt(absl::Time due, std::weak_ptr<Timed> target) override;
  // Runs the timers due at the clock's now (tests, on a FakeClock).
  void RunTimersOnce();

  const HubOptions& options() const { return options_; }

  // Number of Redis channels subscribed (for tests and metrics).
  size_t channel_count();

  // RedisSubscriber::Listener, on the subscriber thread.
  void OnSubscribed(const std::string& channel) override;
  void OnMessage(const std::string& channel, std::string payload) override;
  void OnDisconnected() override;

 private:
  // StreamContext: only the streams call these, through the interface they are given.
  const StreamSettings& settings() const override { return options_.stream; }
  HistorySource& history() override { return history_; }
  Clock& clock() override { return clock_; }
  StreamMetrics& metrics() override { return metrics_; }
  void ScheduleBackfill(std::shared_ptr<SubscriberStream> stream) override;
  void Join(const std::shared_ptr<SubscriberStream>& stream) override;

  using StreamList = std::vector<std::shared_ptr<SubscriberStream>>;
  struct Channel {
    bool active = false;  // Subscription confirmed by Redis.
    // Copy-on-write: fan-out takes a snapshot under the lock and offers outside it,
    // so a slow offer never holds up registration or other sessions.
    std::shared_ptr<const StreamList> streams = std::make_shared<StreamList>();
  };
  void Worker();
  void Ticker();
  void TimerLoop();
  // Takes the timers due at `now` off the queue.
  std::vector<std::shared_ptr<Timed>> TakeDueTimers(absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(timer_mu_);

  const HubOptions options_;
  Clock& clock_;
  const RedisKeys keys_;
  HistorySource& history_;

  absl::Mutex mu_;
  absl::flat_hash_map<std::string, Channel> channels_ ABSL_GUARDED_BY(mu_);  // By channel.
  // Opened, access not yet checked: ticked (to retry a check the store could not
  // answer) but subscribed to nothing.
  absl::flat_hash_map<SubscriberStream*, std::shared_ptr<SubscriberStream>> opening_
      ABSL_GUARDED_BY(mu_);
  // Open streams (opening or joined) per tenant, for max_streams_per_tenant; and
  // likewise subscriptions of Subscribe streams, for max_subscriptions_per_tenant.
  absl::flat_hash_map<std::string, int> tenant_streams_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, int> tenant_subscriptions_ ABSL_GUARDED_BY(mu_);
  std::vector<std::weak_ptr<Ticked>> ticked_ ABSL_GUARDED_BY(mu_);
  bool draining_ ABSL_GUARDED_BY(mu_) = false;

  absl::Mutex work_mu_;
  std::deque<std::shared_ptr<SubscriberStream>> work_ ABSL_GUARDED_BY(work_mu_);
  bool stopping_ ABSL_GUARDED_BY(work_mu_) = false;
  std::vector<std::thread> workers_;
  std::thread ticker_;

  // A leaf lock: CallAt runs under the callers' own locks.
  struct Timer {
    absl::Time due;
    std::weak_ptr<Timed> target;
    bool operator>(const Timer& other) const { return due > other.due; }
  };
  absl::Mutex timer_mu_;
  std::priority_queue<Timer, std::vector<Timer>, std::greater<Timer>> timers_
      ABSL_GUARDED_BY(timer_mu_);
  bool timers_stopping_ ABSL_GUARDED_BY(timer_mu_) = false;
  std::thread timer_thread_;

  // The count `stream` is held to: its tenant's streams, or subscriptions.
  absl::flat_hash_map<std::string, int>& TenantCountLocked(const SubscriberStream& stream)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // One stream fewer: the gauge and its tenant's count.
  void StreamGoneLocked(const SubscriberStream& stream) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  telemetry::Gauge& streams_gauge_;
  telemetry::Gauge& channels_gauge_;
  telemetry::Counter& backfills_;
  StreamMetrics metrics_;

  // Last, so it is destroyed first: its loop thread calls into everything above.
  RedisSubscriber subscriber_;
};

}  // namespace parley::gateway
