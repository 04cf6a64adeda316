// StreamContext: all that a SubscriberStream sees of the hub that runs it.
//
// A stream needs a few fixed settings, the history it reads, the clock its keepalives
// and retries are timed by, the metrics it counts into, and two ways back into the hub:
// "run my next backfill step on a worker" and "my access check passed, put me on my
// session's channel". The Hub implements this; a test may implement it to drive one
// stream alone.
//
//   class Hub : public StreamContext { ... };
//   auto stream = std::make_shared<SubscriberStream>(hub, writer, params);
//   hub.Open(stream);
//
// Every method may be called from any thread. ScheduleBackfill is called with the
// stream's lock held, so it may take only locks that are never held while calling into
// a stream (the hub's queue lock, not Hub::mu_); Join is called without it.
#pragma once

#include <memory>

#include "absl/time/time.h"
#include "common/clock.h"
#include "gateway/fanout/history.h"
#include "telemetry/metrics.h"

namespace parley::gateway {

class SubscriberStream;

// What the hub calls back at a time of its clock: a stream whose flush window ends.
class Timed {
 public:
  virtual ~Timed() = default;
  virtual void OnTimer(absl::Time now) = 0;
};

// Fixed for the life of the hub.
struct StreamSettings {
  int max_buffered = 1024;                      // Queued responses before a stream is cut.
  int backfill_batch = 500;                     // Events per history read.
  absl::Duration keepalive = absl::Seconds(5);  // After this long without a write.
  // The most a Subscribe stream, or a StreamEvents stream that asked for batches, puts
  // in one write (it always writes at least one delivery).
  size_t max_batch_bytes = 64 * 1024;
  // How long a Subscribe stream lets deliveries gather before it writes them, from the
  // first one waiting (a batch of max_batch_bytes goes at once). Zero: as soon as no
  // write is in flight.
  absl::Duration flush_window = absl::Milliseconds(2);
  // How often a stream until the end of a turn that is still queued asks store-svc
  // whether it still is: a turn cancelled while queued publishes nothing.
  absl::Duration queued_turn_recheck = absl::Seconds(5);
};

// What streams count, shared by all of them.
struct StreamMetrics {
  telemetry::Counter& delivered;  // Events written to clients.
  telemetry::Counter& cut;        // Streams ended as slow consumers.
  telemetry::Histogram& lag;      // From an event's timestamp to its delivery.
};

class StreamContext {
 public:
  virtual ~StreamContext() = default;

  virtual const StreamSettings& settings() const = 0;
  virtual HistorySource& history() = 0;
  virtual Clock& clock() = 0;
  virtual StreamMetrics& metrics() = 0;

  // Runs stream->RunBackfill() on a backfill worker, soon. Called with the stream's
  // lock held.
  virtual void ScheduleBackfill(std::shared_ptr<SubscriberStream> stream) = 0;
  // The stream's access check passed: it joins its session's channel and is resynced
  // once the channel's subscription is confirmed. No-op for a stream that has ended
  // meanwhile. Called without the stream's lock.
  virtual void Join(const std::shared_ptr<SubscriberStream>& stream) = 0;
  // Calls `target->OnTimer` once the clock reaches `due`, unless it is gone by then. Any
  // thread, any lock held: it takes only a lock of its own.
  virtual void CallAt(absl::Time due, std::weak_ptr<Timed> target) = 0;
};

}  // namespace parley::gateway
