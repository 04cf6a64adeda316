// The fan-out hub: every live event of every watched session, to every local stream.
//
// One Redis subscription per session per gateway process, whatever the number of
// viewers: the hub keeps a Channel per watched session with the streams reading it,
// subscribes when the first stream joins and unsubscribes when the last one leaves.
// A stream joins in two steps: Open hands it to a backfill worker, which checks that
// the session belongs to the caller's tenant and resolves where the stream starts;
// only a stream that passed joins its channel (Register). A request for someone
// else's session ends with NOT_FOUND having subscribed to nothing.
// A published event is parsed once, wrapped once in a shared StreamEventsResponse, and
// offered to each stream of its channel; the publisher side (Redis) never waits for
// any client.
//
// Each stream (StreamCore) owns its position: it delivers seq N only after N-1, skips
// what it already sent, and whenever it sees a gap — or is new, or Redis reconnected —
// it re-reads history (Redis hot window, then store-svc) from its next seq on a
// backfill worker, holding live events aside meanwhile. It is subscribed before it
// reads, so nothing published in between can fall through. A transient event still
// in effect when a stream catches up is delivered to it (see history.h); one offered
// twice (by a read and live) is delivered once. Each stream has a bounded
// buffer; one that cannot keep up is ended with RESOURCE_EXHAUSTED and its resume
// cursor, and nobody else notices.
//
// Threads: the RedisSubscriber loop thread (OnMessage / OnSubscribed / OnDisconnected),
// `backfill_workers` threads doing blocking history reads, one ticker thread
// (keepalives, retrying failed backfills), and gRPC's callback threads (write
// completions, cancels). Lock order: Hub::mu_, then StreamCore::mu_, then
// Hub::work_mu_. Fan-out itself runs outside Hub::mu_ on a copy-on-write snapshot of
// the session's streams.
#pragma once

#include <grpcpp/grpcpp.h>

#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "gateway/fanout/history.h"
#include "gateway/fanout/redis_subscriber.h"
#include "parley/v1/parley.pb.h"
#include "telemetry/metrics.h"

namespace parley::gateway {

using ResponsePtr = std::shared_ptr<const v1::StreamEventsResponse>;

struct HubOptions {
  RedisEndpoint redis;
  std::string key_prefix;
  int max_buffered = 1024;                      // Per stream, before it is cut.
  absl::Duration keepalive = absl::Seconds(5);  // After this long without a write.
  int backfill_batch = 500;
  int backfill_workers = 2;
  // Open streams one tenant may hold on this gateway; more are refused with
  // RESOURCE_EXHAUSTED "TOO_MANY_STREAMS". 0: no cap.
  int max_streams_per_tenant = 0;
};

// What a stream writes to: the gRPC reactor, or a test double.
class StreamWriter {
 public:
  virtual ~StreamWriter() = default;
  virtual void WriteResponse(const v1::StreamEventsResponse* response) = 0;
  virtual void FinishStream(const grpc::Status& status) = 0;
};

struct StreamParams {
  std::string tenant_id;
  std::string session_id;
  enum class Start { kAfterSeq, kLatest, kTurn } start = Start::kAfterSeq;
  uint64_t after_seq = 0;
  std::string turn_id;  // For Start::kTurn.
  bool until_turn_end = false;
  uint64_t client_epoch = 0;  // 0: the client does not know one.
};

class Hub;

// The state of one StreamEvents call. Shared by the hub, the backfill queue and the
// reactor; the writer pointer is cleared when the reactor is done.
class StreamCore : public std::enable_shared_from_this<StreamCore> {
 public:
  StreamCore(Hub& hub, StreamWriter* writer, StreamParams params);

  const std::string& session_id() const { return params_.session_id; }
  const std::string& tenant_id() const { return params_.tenant_id; }

  void Start();                              // Schedules the access check (Hub::Open).
  void OnLive(const ResponsePtr& response);  // An event from the channel.
  void RunBackfill();                        // On a backfill worker.
  void Resync();                             // Re-read from the next seq.
  void Tick(absl::Time now);                 // Keepalives; retries of failed reads.
  void OnWriteDone(bool ok);
  void Cancel();  // The client went away.
  // Ends the stream with `status`, opened or not (its caller may no longer read it, or
  // was refused); no-op once ended.
  void End(const grpc::Status& status);
  // The gateway is draining: end UNAVAILABLE, GATEWAY_DRAINING, with the resume cursor.
  void Shed();
  // Whether the stream has ended (finished, cancelled or detached).
  bool finished() const;
  void Detach();  // The reactor is done; never touch the writer again.

 private:
  enum class Offer { kAccepted, kDropped, kGap };
  Offer AcceptLocked(const ResponsePtr& response, bool from_backfill)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EnqueueLocked(ResponsePtr response) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void MaybeWriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FinishLocked(const grpc::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ScheduleBackfillLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool TransientSentLocked(const v1::Event& event) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status ResolveStart();     // Access check and start position; no lock held.
  void CheckAccessThenRegister();  // The first run on a backfill worker.

  Hub& hub_;
  const StreamParams params_;

  mutable absl::Mutex mu_;
  StreamWriter* writer_ ABSL_GUARDED_BY(mu_);
  bool resolved_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t next_seq_ ABSL_GUARDED_BY(mu_) = 0;  // Next durable seq to deliver.
  uint64_t epoch_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t last_written_seq_ ABSL_GUARDED_BY(mu_) = 0;  // The resume cursor.
  // The transients accepted since the last durable event (they carry its seq): a
  // re-read of history and a live copy held aside during one offer them again.
  std::vector<ResponsePtr> transients_sent_ ABSL_GUARDED_BY(mu_);
  bool backfill_scheduled_ ABSL_GUARDED_BY(mu_) = false;
  bool backfill_failed_ ABSL_GUARDED_BY(mu_) = false;
  bool reread_ ABSL_GUARDED_BY(mu_) = false;  // Read history again before going live.
  bool live_ ABSL_GUARDED_BY(mu_) = false;    // Caught up: live events go straight out.
  bool paused_ ABSL_GUARDED_BY(mu_) = false;  // History read waits for the client.
  std::vector<ResponsePtr> pending_ ABSL_GUARDED_BY(mu_);  // Live events held during backfill.
  bool pending_overflowed_ ABSL_GUARDED_BY(mu_) = false;
  std::deque<ResponsePtr> queue_ ABSL_GUARDED_BY(mu_);
  ResponsePtr in_flight_ ABSL_GUARDED_BY(mu_);
  bool finish_after_drain_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<grpc::Status> deferred_finish_ ABSL_GUARDED_BY(mu_);
  bool cut_slow_ ABSL_GUARDED_BY(mu_) = false;  // Finished as a slow consumer.
  bool shed_ ABSL_GUARDED_BY(mu_) = false;      // Finished by a drain, with a cursor.
  absl::Time last_write_ ABSL_GUARDED_BY(mu_);
  absl::Time last_backfill_failure_ ABSL_GUARDED_BY(mu_);
};

class Hub final : public RedisSubscriber::Listener {
 public:
  // `history` and `registry` must outlive the hub.
  Hub(HubOptions options, HistorySource& history, telemetry::Registry& registry);
  ~Hub() override;  // Stops every thread.

  void Start();

  // A new stream: its access check runs on a backfill worker, which then calls
  // Register. Nothing is subscribed until then.
  void Open(const std::shared_ptr<StreamCore>& stream);
  // A stream whose access check passed joins its session's channel (subscribing it
  // if it is the first). No-op for a stream already unregistered.
  void Register(const std::shared_ptr<StreamCore>& stream);
  // The stream is done, opened or registered; the last viewer of a session
  // unsubscribes it.
  void Unregister(StreamCore* stream);
  void ScheduleBackfill(std::shared_ptr<StreamCore> stream);
  // The gateway is shutting down: every open stream ends UNAVAILABLE (ErrorInfo
  // GATEWAY_DRAINING with `last_seq`, the cursor to resume from on another replica,
  // once the stream knows it) and streams opened from now on are refused the same way.
  void Drain();

  const HubOptions& options() const { return options_; }
  HistorySource& history() { return history_; }

  // Metrics the streams update.
  telemetry::Counter& delivered() { return delivered_; }
  telemetry::Counter& cut() { return cut_; }
  telemetry::Histogram& lag() { return lag_; }

  // Number of Redis channels subscribed (for tests and metrics).
  size_t channel_count();

  // RedisSubscriber::Listener, on the subscriber thread.
  void OnSubscribed(const std::string& channel) override;
  void OnMessage(const std::string& channel, std::string payload) override;
  void OnDisconnected() override;

 private:
  using StreamList = std::vector<std::shared_ptr<StreamCore>>;
  struct Channel {
    std::string session_id;
    bool active = false;  // Subscription confirmed by Redis.
    // Copy-on-write: fan-out takes a snapshot under the lock and offers outside it,
    // so a slow offer never holds up registration or other sessions.
    std::shared_ptr<const StreamList> streams = std::make_shared<StreamList>();
  };
  void Worker();
  void Ticker();

  const HubOptions options_;
  const RedisKeys keys_;
  HistorySource& history_;

  absl::Mutex mu_;
  absl::flat_hash_map<std::string, Channel> channels_ ABSL_GUARDED_BY(mu_);  // By channel.
  // Opened, access not yet checked: ticked (to retry a check the store could not
  // answer) but subscribed to nothing.
  absl::flat_hash_map<StreamCore*, std::shared_ptr<StreamCore>> opening_ ABSL_GUARDED_BY(mu_);
  // Open streams (opening or registered) per tenant, for max_streams_per_tenant.
  absl::flat_hash_map<std::string, int> tenant_streams_ ABSL_GUARDED_BY(mu_);
  bool draining_ ABSL_GUARDED_BY(mu_) = false;

  absl::Mutex work_mu_;
  std::deque<std::shared_ptr<StreamCore>> work_ ABSL_GUARDED_BY(work_mu_);
  bool stopping_ ABSL_GUARDED_BY(work_mu_) = false;
  std::vector<std::thread> workers_;
  std::thread ticker_;

  // One stream fewer: the gauge and its tenant's count.
  void StreamGoneLocked(const StreamCore& stream) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  telemetry::Gauge& streams_gauge_;
  telemetry::Gauge& channels_gauge_;
  telemetry::Counter& delivered_;
  telemetry::Counter& cut_;
  telemetry::Counter& backfills_;
  telemetry::Histogram& lag_;

  // Last, so it is destroyed first: its loop thread calls into everything above.
  RedisSubscriber subscriber_;
};

}  // namespace parley::gateway
