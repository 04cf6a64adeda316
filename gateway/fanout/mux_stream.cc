// MuxStream: the subscriptions of one Subscribe call and their batched writes (see the
// header).
#include "gateway/fanout/mux_stream.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/proto_time.h"
#include "common/status.h"

namespace parley::gateway {

// A subscription's place in the stream: the StreamWriter its SubscriberStream writes
// to. Owned by the stream's table (and by deliveries waiting to go out); the
// SubscriberStream holds it by a raw pointer until Detach.
class MuxStream::Slot final : public StreamWriter, public std::enable_shared_from_this<Slot> {
 public:
  Slot(MuxStream& mux, std::string id) : mux_(mux), id_(std::move(id)) {}

  const std::string& id() const { return id_; }

  void Write(const std::vector<ResponsePtr>& batch) override {
    mux_.Enqueue(shared_from_this(), batch);
  }
  void FinishStream(const grpc::Status& status) override {
    mux_.EndSlot(shared_from_this(), status);
  }
  int max_batch() const override { return kSlotBatch; }

  // Set once, before the stream is opened; null for a refused add.
  std::shared_ptr<SubscriberStream> stream;

 private:
  MuxStream& mux_;
  const std::string id_;
};

MuxStream::MuxStream(Hub& hub, MuxWriter* writer, std::string tenant_id)
    : hub_(hub),
      context_(hub),
      tenant_id_(std::move(tenant_id)),
      writer_(writer),
      last_write_(context_.clock().Now()) {}

MuxStream::~MuxStream() = default;

void MuxStream::Start() { hub_.AddTicked(weak_from_this()); }

void MuxStream::Add(const std::string& id, absl::StatusOr<StreamParams> params) {
  std::shared_ptr<SubscriberStream> opened;
  {
    absl::MutexLock lock(&mu_);
    if (finished_) return;
    if (!params.ok()) return RefuseLocked(id, ToGrpcStatus(params.status()));
    if (slots_.contains(id)) {
      return RefuseLocked(id, grpc::Status(grpc::StatusCode::ALREADY_EXISTS,
                                           absl::StrCat("subscription \"", id,
                                                        "\" is open on this stream already")));
    }
    const int limit = hub_.options().max_subscriptions_per_stream;
    if (limit > 0 && static_cast<int>(slots_.size()) >= limit) {
      return RefuseLocked(
          id,
          TooManySubscriptions(absl::StrCat("this stream holds ", limit, " subscriptions"), limit));
    }
    params->tenant_id = tenant_id_;
    params->multiplexed = true;
    auto slot = std::make_shared<Slot>(*this, id);
    slot->stream = std::make_shared<SubscriberStream>(hub_, slot.get(), *std::move(params));
    opened = slot->stream;
    slots_.emplace(id, std::move(slot));
  }
  // Outside the lock: the hub may end the subscription at once (its tenant's limit),
  // which comes back through the slot.
  hub_.Open(opened);
}

void MuxStream::Remove(const std::string& id) {
  std::shared_ptr<SubscriberStream> stream;
  {
    absl::MutexLock lock(&mu_);
    auto it = slots_.find(id);
    if (it == slots_.end()) return;
    stream = it->second->stream;
  }
  stream->End(grpc::Status(grpc::StatusCode::CANCELLED, "removed by the client"));
}

void MuxStream::HalfClose() {
  absl::MutexLock lock(&mu_);
  half_closed_ = true;
  MaybeWriteLocked();
}

void MuxStream::RefuseLocked(const std::string& id, const grpc::Status& status) {
  // A slot of its own that never joins the table: the refusal names the id without
  // touching a subscription that may hold it.
  PushLocked(Outgoing{.slot = std::make_shared<Slot>(*this, id), .ended = ToRpcStatus(status)});
  MaybeWriteLocked();
}

void MuxStream::Enqueue(const std::shared_ptr<Slot>& slot, const std::vector<ResponsePtr>& batch) {
  absl::MutexLock lock(&mu_);
  // Once the stream is over its subscriptions never hear of this write again; they are
  // ended by Cancel or Detach.
  if (finished_) return;
  for (size_t i = 0; i < batch.size(); ++i) {
    PushLocked(Outgoing{.slot = slot, .item = batch[i], .completes_write = i + 1 == batch.size()});
  }
  MaybeWriteLocked();
}

void MuxStream::EndSlot(const std::shared_ptr<Slot>& slot, const grpc::Status& status) {
  absl::MutexLock lock(&mu_);
  if (finished_) return;
  PushLocked(Outgoing{.slot = slot, .ended = ToRpcStatus(status)});
  MaybeWriteLocked();
}

void MuxStream::PushLocked(Outgoing outgoing) {
  const StreamSettings& settings = context_.settings();
  if (ready_.empty()) {
    flush_at_ = context_.clock().Now() + settings.flush_window;
    // Needed only if nothing writes these first (the write in flight completing, a full
    // batch); a timer that finds nothing due does nothing.
    if (settings.flush_window > absl::ZeroDuration()) hub_.CallAt(flush_at_, weak_from_this());
  }
  // Its item, its id and a few bytes of tags and lengths: enough to tell a full batch.
  outgoing.bytes = outgoing.slot->id().size() + 8 +
                   (outgoing.item != nullptr ? outgoing.item->item_bytes().size()
                                             : outgoing.ended->ByteSizeLong());
  ready_bytes_ += outgoing.bytes;
  ready_.push_back(std::move(outgoing));
}

void MuxStream::MaybeWriteLocked() {
  if (writing_ || writer_ == nullptr || finished_) return;
  if (ready_.empty()) {
    if (half_closed_ && slots_.empty()) FinishLocked(grpc::Status::OK);
    return;
  }
  if (ready_bytes_ < context_.settings().max_batch_bytes && context_.clock().Now() < flush_at_) {
    return;  // Within the window: OnTimer, or the next push that fills a batch, writes.
  }
  StartWriteLocked();
}

void MuxStream::OnTimer(absl::Time now) {
  absl::MutexLock lock(&mu_);
  if (now < flush_at_) return;  // A later window, with its own timer.
  MaybeWriteLocked();
}

void MuxStream::StartWriteLocked() {
  const size_t max_bytes = context_.settings().max_batch_bytes;
  // At least one delivery, then as many as fit.
  while (!ready_.empty() && (batch_.empty() || batch_.bytes() < max_bytes)) {
    Outgoing& next = ready_.front();
    if (next.ended.has_value()) {
      batch_.AddEnded(next.slot->id(), *next.ended);
    } else {
      batch_.Add(next.slot->id(), *next.item);
    }
    ready_bytes_ -= next.bytes;
    written_.push_back(std::move(next));
    ready_.pop_front();
  }
  in_flight_ = batch_.Take();
  writing_ = true;
  last_write_ = context_.clock().Now();
  writer_->WriteBatch(&in_flight_);
}

void MuxStream::OnWriteDone(bool ok) {
  std::vector<std::shared_ptr<SubscriberStream>> done;
  std::vector<std::shared_ptr<SubscriberStream>> ended;
  {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    in_flight_.Clear();
    for (Outgoing& sent : written_) {
      const std::string& id = sent.slot->id();
      if (sent.ended.has_value()) {
        // The subscription's last delivery is out: its id is free again.
        auto it = slots_.find(id);
        if (it != slots_.end() && it->second == sent.slot) {
          ended.push_back(sent.slot->stream);
          slots_.erase(it);
          moved_.erase(id);
        }
        continue;
      }
      const v1::StreamEventsResponse& item = sent.item->message();
      if (ok && item.has_event() && !item.event().transient()) moved_[id] = item.event().seq();
      if (sent.completes_write && sent.slot->stream != nullptr) done.push_back(sent.slot->stream);
    }
    written_.clear();
    if (!ok) {
      FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "the client stopped reading"));
    } else if (deferred_finish_.has_value() && writer_ != nullptr) {
      writer_->FinishMux(*std::exchange(deferred_finish_, std::nullopt));
      return;
    }
  }
  // Outside the lock: a subscription's next write comes back through its slot.
  for (const auto& stream : done) stream->OnWriteDone(ok);
  for (const auto& stream : ended) {
    if (stream == nullptr) continue;
    stream->Detach();
    hub_.Unregister(stream.get());
  }
  absl::MutexLock lock(&mu_);
  MaybeWriteLocked();
}

void MuxStream::FinishLocked(const grpc::Status& status) {
  if (finished_) return;
  finished_ = true;
  ready_.clear();
  ready_bytes_ = 0;
  if (writer_ == nullptr) return;
  // gRPC wants no Finish while a write is outstanding; OnWriteDone sends it.
  if (writing_) {
    deferred_finish_ = status;
  } else {
    writer_->FinishMux(status);
  }
}

std::vector<std::shared_ptr<MuxStream::Slot>> MuxStream::TakeSlotsLocked() {
  std::vector<std::shared_ptr<Slot>> slots;
  slots.reserve(slots_.size());
  for (auto& [id, slot] : slots_) slots.push_back(std::move(slot));
  slots_.clear();
  return slots;
}

void MuxStream::Cancel() {
  End(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the client"));
}

void MuxStream::End(const grpc::Status& status) {
  std::vector<std::shared_ptr<Slot>> slots;
  {
    absl::MutexLock lock(&mu_);
    if (finished_) return;
    FinishLocked(status);
    slots = TakeSlotsLocked();
  }
  // The subscriptions end with their stream; their ends are not delivered. Each leaves
  // the hub when the reactor is done (Detach), or here.
  for (const auto& slot : slots) {
    slot->stream->Detach();
    hub_.Unregister(slot->stream.get());
  }
}

void MuxStream::Detach() {
  std::vector<std::shared_ptr<Slot>> slots;
  {
    absl::MutexLock lock(&mu_);
    writer_ = nullptr;
    finished_ = true;
    ready_.clear();
    written_.clear();
    slots = TakeSlotsLocked();
  }
  for (const auto& slot : slots) {
    slot->stream->Detach();
    hub_.Unregister(slot->stream.get());
  }
}

bool MuxStream::finished() const {
  absl::MutexLock lock(&mu_);
  return finished_;
}

size_t MuxStream::subscription_count() const {
  absl::MutexLock lock(&mu_);
  return slots_.size();
}

size_t MuxStream::waiting_deliveries() const {
  absl::MutexLock lock(&mu_);
  return ready_.size();
}

void MuxStream::Tick(absl::Time now) {
  absl::MutexLock lock(&mu_);
  if (finished_ || writing_ || writer_ == nullptr || !ready_.empty()) return;
  if (now - last_write_ < context_.settings().keepalive) return;
  v1::SubscribeResponse keepalive;
  *keepalive.mutable_keepalive()->mutable_time() = ToTimestamp(now);
  for (const auto& [id, seq] : moved_) {
    v1::SubscriptionCursor* cursor = keepalive.mutable_keepalive()->add_cursors();
    cursor->set_subscription_id(id);
    cursor->set_last_seq(seq);
  }
  moved_.clear();
  const grpc::Slice bytes(keepalive.SerializeAsString());
  in_flight_ = grpc::ByteBuffer(&bytes, 1);
  writing_ = true;
  last_write_ = now;
  writer_->WriteBatch(&in_flight_);
}

}  // namespace parley::gateway
