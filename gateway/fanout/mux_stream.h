// MuxStream: one Subscribe call — many subscriptions over one stream, few writes.
//
// Each subscription is a SubscriberStream, the same state machine a StreamEvents call
// runs (position, access check before any Redis subscription, backfill, epochs,
// transients, its bounded queue and the cut with its cursor), whose StreamWriter is a
// slot of this stream. A slot hands over up to `kSlotBatch` of its queued responses at
// a time; the stream concatenates what its slots handed over into batches — while a
// write is in flight everything that arrives waits for the next one — of at most
// `max_batch_bytes`, one gRPC write each, and tells a subscription its write is done
// once all of it is on the wire. Deliveries that find no write in flight wait up to
// `flush_window` (from the first of them; not when they fill a batch) for company. So a burst over
// many sessions costs one write, not one per event, while each subscription keeps one write
// outstanding, its order and its slow-consumer bound. Items go out as shared bytes
// (SubscribeBatch).
//
// A subscription that ends — refused (another tenant's session, a limit, a malformed
// add), cut, removed, done after its turn — becomes an `ended` delivery carrying the
// status StreamEvents would have ended with; the stream and the other subscriptions go
// on. One keepalive per stream, after `keepalive` without a write, carries the cursor
// of each subscription that moved since the last one.
//
//   auto mux = std::make_shared<MuxStream>(hub, writer, tenant_id);
//   mux->Start();                       // Ticked by the hub from now on.
//   mux->Add("sub-1", params);          // From each request read.
//   mux->OnWriteDone(ok);               // From the reactor.
//
// Threads: gRPC's (requests, write completions, cancel, done), the subscriptions'
// (Redis subscriber, backfill workers, ticker: through their slots), the revalidator
// (End). Lock order: SubscriberStream::mu_ (slots are called under it), then
// MuxStream::mu_; nothing is called on a SubscriberStream or the hub with mu_ held.
#pragma once

#include <grpcpp/grpcpp.h>

#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "gateway/fanout/endable.h"
#include "gateway/fanout/hub.h"
#include "gateway/fanout/subscribe_batch.h"
#include "gateway/fanout/subscriber_stream.h"

namespace parley::gateway {

// What a Subscribe stream writes to: its reactor, or a test double. At most one write
// outstanding; MuxStream::OnWriteDone follows each. Called with the stream's lock held.
class MuxWriter {
 public:
  virtual ~MuxWriter() = default;
  // `batch` stays alive until OnWriteDone.
  virtual void WriteBatch(const grpc::ByteBuffer* batch) = 0;
  virtual void FinishMux(const grpc::Status& status) = 0;
};

class MuxStream final : public Ticked,
                        public Timed,
                        public Endable,
                        public std::enable_shared_from_this<MuxStream> {
 public:
  // Responses a subscription hands over per write: its order and buffer bound hold
  // because it has one write outstanding; this keeps that write small.
  static constexpr int kSlotBatch = 64;

  // `hub` must outlive the stream; `writer` until Detach. Limits and timing come from
  // the hub's options.
  MuxStream(Hub& hub, MuxWriter* writer, std::string tenant_id);
  ~MuxStream() override;

  // Registers for the hub's ticks (keepalives).
  void Start();

  // A new subscription `id` starting as `params` says (its tenant is this stream's),
  // or refused with `params`' error. Refused too — that subscription only — when `id`
  // is open on this stream (ALREADY_EXISTS) or the stream holds its limit.
  void Add(const std::string& id, absl::StatusOr<StreamParams> params);
  // Ends subscription `id` with CANCELLED; an unknown id is ignored (it may have just
  // ended).
  void Remove(const std::string& id);
  // The client will add nothing more: the stream ends with OK once every subscription
  // has ended and been written.
  void HalfClose();

  void OnWriteDone(bool ok);
  void Cancel();  // The client went away.
  void Detach();  // The reactor is done: never touch the writer again.

  // Endable: ends the whole stream (the revalidator, a revoked key).
  void End(const grpc::Status& status) override;
  bool finished() const override;

  // Ticked: a keepalive when nothing was written for the hub's keepalive interval.
  void Tick(absl::Time now) override;
  // Timed: the flush window of the deliveries waiting may have ended.
  void OnTimer(absl::Time now) override;

  // Open subscriptions, and deliveries waiting for a write (for tests).
  size_t subscription_count() const;
  size_t waiting_deliveries() const;

 private:
  class Slot;
  // One delivery waiting for a batch.
  struct Outgoing {
    std::shared_ptr<Slot> slot;
    ResponsePtr item;                    // An event or EpochChanged; or
    std::optional<v1::RpcStatus> ended;  // the end of the subscription.
    bool completes_write = false;        // The last of its slot's current write.
    size_t bytes = 0;                    // Its share of a batch, near enough.
  };

  // From the slots, under their stream's lock.
  void Enqueue(const std::shared_ptr<Slot>& slot, const std::vector<ResponsePtr>& batch);
  void EndSlot(const std::shared_ptr<Slot>& slot, const grpc::Status& status);

  void RefuseLocked(const std::string& id, const grpc::Status& status)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Queues one delivery to go out.
  void PushLocked(Outgoing outgoing) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Writes now if nothing is in flight and the waiting deliveries fill a batch or their
  // window has ended; otherwise the write waits for OnWriteDone or OnTimer.
  void MaybeWriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void StartWriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FinishLocked(const grpc::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Takes every open subscription away (the stream is over) for the caller to end.
  std::vector<std::shared_ptr<Slot>> TakeSlotsLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  Hub& hub_;
  StreamContext& context_;  // The hub, as its streams see it: settings and clock.
  const std::string tenant_id_;

  mutable absl::Mutex mu_;
  MuxWriter* writer_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::shared_ptr<Slot>> slots_ ABSL_GUARDED_BY(mu_);
  std::deque<Outgoing> ready_ ABSL_GUARDED_BY(mu_);
  size_t ready_bytes_ ABSL_GUARDED_BY(mu_) = 0;  // Their Outgoing::bytes.
  absl::Time flush_at_ ABSL_GUARDED_BY(mu_);     // When what waits goes out.
  // The write in flight: its bytes and what it carries.
  grpc::ByteBuffer in_flight_ ABSL_GUARDED_BY(mu_);
  std::vector<Outgoing> written_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  SubscribeBatch batch_ ABSL_GUARDED_BY(mu_);
  // Newest seq written per subscription since the last keepalive.
  absl::flat_hash_map<std::string, uint64_t> moved_ ABSL_GUARDED_BY(mu_);
  absl::Time last_write_ ABSL_GUARDED_BY(mu_);
  bool half_closed_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<grpc::Status> deferred_finish_ ABSL_GUARDED_BY(mu_);
};

}  // namespace parley::gateway
