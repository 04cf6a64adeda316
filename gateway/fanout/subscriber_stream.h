// SubscriberStream: one client's StreamEvents call, as the hub runs it.
//
// A stream owns its position: it delivers seq N only after N-1, skips what it already
// sent, and whenever it sees a gap — or is new, or Redis reconnected — it re-reads
// history (Redis hot window, then store-svc) from its next seq on a backfill worker,
// holding live events aside meanwhile. A transient event still in effect when a stream
// catches up is delivered to it (see history.h); one offered twice (by a read and live)
// is delivered once. Its write queue is bounded: a stream that cannot keep up is ended
// with RESOURCE_EXHAUSTED and its resume cursor, and nobody else notices.
//
// The backfill, in steps (each a method below):
//   1. ResolveStart: one store call (access check, epoch, turn) gives the first seq;
//      then the stream joins its channel (StreamContext::Join) and waits for Resync.
//   2. Per round: NextRead (where from, how much: never more than half the buffer has
//      room for, else the read pauses until the client drains), HistorySource::ReadFrom,
//      AcceptHistoryLocked; until a read brings nothing new.
//   3. GoLiveLocked: the live events held meanwhile are offered in order; a gap among
//      them goes back to step 2.
//
// A stream until the end of a turn that is still queued when it starts (or running
// without a first event yet) waits for that turn's TurnSealed. A turn cancelled while queued
// publishes nothing, so until the turn's first event arrives the stream asks store-svc again
// (CheckQueuedTurn, on a backfill worker): every StreamSettings::queued_turn_recheck, and at the
// tick after another turn's seal (when the next turn starts, or is found gone). A turn that ended
// without starting ends the stream with OK.
//
//   auto stream = std::make_shared<SubscriberStream>(hub, writer, params);
//   hub.Open(stream);               // Step 1 runs on a backfill worker.
//   stream->OnLive(response);       // For each live event of the session.
//
// Thread-safe: every method takes the stream's own mutex; none blocks on I/O with it
// held. It reaches the hub only through its StreamContext.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "gateway/fanout/endable.h"
#include "gateway/fanout/shared_response.h"
#include "gateway/fanout/stream_context.h"
#include "parley/v1/parley.pb.h"

namespace parley::gateway {

// What a stream writes to: the StreamEvents reactor, a subscription's slot in a
// Subscribe stream (mux_stream.h), or a test double. Called with the stream's lock
// held, at most one write outstanding: the stream calls OnWriteDone once all of
// `batch` is written (or failed).
class StreamWriter {
 public:
  virtual ~StreamWriter() = default;
  // `batch`: 1..max_batch() responses in order; they stay alive until OnWriteDone.
  virtual void Write(const std::vector<ResponsePtr>& batch) = 0;
  virtual void FinishStream(const grpc::Status& status) = 0;
  // How many queued responses one Write may carry.
  virtual int max_batch() const { return 1; }
};

struct StreamParams {
  std::string tenant_id;
  std::string session_id;
  enum class Start { kAfterSeq, kLatest, kTurn } start = Start::kAfterSeq;
  uint64_t after_seq = 0;
  std::string turn_id;  // For Start::kTurn.
  bool until_turn_end = false;
  uint64_t client_epoch = 0;  // 0: the client does not know one.
  // A subscription of a Subscribe stream: it sends no keepalives of its own (its
  // stream sends one for all) and counts against the tenant's subscription limit
  // rather than its stream limit.
  bool multiplexed = false;
  // Batched writes (StreamEventsRequest.batch): what queues while a write is in flight
  // goes in the next one, a response that finds none waits up to `batch_delay` for
  // company, and one write holds up to StreamSettings::max_batch_bytes (at least one
  // response). The writer lays the batch out as one message.
  bool batch = false;
  absl::Duration batch_delay = absl::ZeroDuration();
};

// Shared by the hub, the backfill queue and the reactor; the writer pointer is cleared
// when the reactor is done.
class SubscriberStream : public Endable,
                         public Timed,
                         public std::enable_shared_from_this<SubscriberStream> {
 public:
  // `context` must outlive the stream; `writer` until Detach.
  SubscriberStream(StreamContext& context, StreamWriter* writer, StreamParams params);

  const std::string& session_id() const { return params_.session_id; }
  const std::string& tenant_id() const { return params_.tenant_id; }
  bool multiplexed() const { return params_.multiplexed; }

  void Start();                              // Schedules the access check (Hub::Open).
  void OnLive(const ResponsePtr& response);  // An event from the channel.
  void RunBackfill();                        // On a backfill worker.
  void Resync();                             // Re-read from the next seq.
  void Tick(absl::Time now);                 // Keepalives; retries of failed reads.
  void OnTimer(absl::Time now) override;     // A batch's delay may have ended.
  void OnWriteDone(bool ok);
  void Cancel();  // The client went away.
  // Ends the stream with `status`, opened or not (its caller may no longer read it, or
  // was refused); no-op once ended.
  void End(const grpc::Status& status) override;
  // The gateway is draining: end UNAVAILABLE, GATEWAY_DRAINING, with the resume cursor.
  void Shed();
  // Whether the stream has ended (finished, cancelled or detached).
  bool finished() const override;
  void Detach();  // The reactor is done; never touch the writer again.
  // Responses queued for a write that has not started (for tests).
  size_t waiting_responses() const;

 private:
  enum class Offer { kAccepted, kDropped, kGap };
  // What a read of history left to do.
  enum class AfterRead { kFinished, kReadAgain, kCaughtUp };
  struct HistoryRead {
    uint64_t from_seq;
    int max;
  };

  // Step 1, the first run on a backfill worker.
  void CheckAccessThenJoin();
  // What ResolveStart found: where to start, or that a stream until the end of a turn
  // that ended without ever starting (cancelled while queued) has nothing to wait for.
  enum class Resolved { kStream, kNothingToStream };
  // Access check and start position; no lock held.
  absl::StatusOr<Resolved> ResolveStart();
  // Steps 2 and 3, once the channel is subscribed.
  void CatchUp();
  // Whether the queued turn the stream waits for ended without starting; ends the
  // stream if so. No lock held.
  void CheckQueuedTurn();
  // The next read, or nullopt when the stream ended or the read must pause for room.
  std::optional<HistoryRead> NextRead();
  AfterRead AcceptHistoryLocked(std::vector<v1::Event>& events, uint64_t from_seq)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Offers the live events held during the read; false when a gap sends it back to
  // reading.
  bool GoLiveLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Redis or the store did not answer: keep the stream open; the ticker retries.
  void RetryLaterLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  Offer AcceptLocked(const ResponsePtr& response, bool from_backfill)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EnqueueLocked(ResponsePtr response) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Writes the next batch unless one is in flight or (batched) the responses waiting
  // are within their delay and short of a full batch.
  void MaybeWriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // How many queued responses the next write carries.
  size_t NextWriteSizeLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FinishLocked(const grpc::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ScheduleBackfillLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool TransientSentLocked(const v1::Event& event) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  StreamContext& context_;
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
  // Until the end of a turn that was queued when the stream resolved, and has sent no
  // event since: the store is asked again at next_turn_check_ (see the top).
  bool awaiting_turn_start_ ABSL_GUARDED_BY(mu_) = false;
  bool turn_check_due_ ABSL_GUARDED_BY(mu_) = false;  // The scheduled run is that check.
  absl::Time next_turn_check_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();
  bool backfill_failed_ ABSL_GUARDED_BY(mu_) = false;
  bool reread_ ABSL_GUARDED_BY(mu_) = false;  // Read history again before going live.
  bool live_ ABSL_GUARDED_BY(mu_) = false;    // Caught up: live events go straight out.
  bool paused_ ABSL_GUARDED_BY(mu_) = false;  // History read waits for the client.
  std::vector<ResponsePtr> pending_ ABSL_GUARDED_BY(mu_);  // Live events held during backfill.
  bool pending_overflowed_ ABSL_GUARDED_BY(mu_) = false;
  // A vector, not a deque: an empty std::deque allocates over half a KiB, and most
  // streams' queues are empty; writes take from the front, a handful of responses
  // behind them move up (at most max_buffered, and only for a stream behind).
  std::vector<ResponsePtr> queue_ ABSL_GUARDED_BY(mu_);
  // Batched streams only: the bytes `queue_` would take on the wire, and when what it
  // holds goes out if no batch fills first (past: at once).
  size_t queued_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time flush_at_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  std::vector<ResponsePtr> in_flight_ ABSL_GUARDED_BY(mu_);  // Written, not done yet.
  bool finish_after_drain_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<grpc::Status> deferred_finish_ ABSL_GUARDED_BY(mu_);
  bool cut_slow_ ABSL_GUARDED_BY(mu_) = false;  // Finished as a slow consumer.
  bool shed_ ABSL_GUARDED_BY(mu_) = false;      // Finished by a drain, with a cursor.
  absl::Time last_write_ ABSL_GUARDED_BY(mu_);
  absl::Time last_backfill_failure_ ABSL_GUARDED_BY(mu_);
};

}  // namespace parley::gateway
