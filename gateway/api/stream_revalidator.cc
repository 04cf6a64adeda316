#include "gateway/api/stream_revalidator.h"

#include <utility>

#include "common/status.h"

namespace parley::gateway {

StreamRevalidator::StreamRevalidator(KeyAuthenticator& keys, absl::Duration period)
    : keys_(keys), period_(period), thread_([this] { Run(); }) {}

StreamRevalidator::~StreamRevalidator() {
  {
    absl::MutexLock lock(&state_->mu);
    state_->stopping = true;
  }
  thread_.join();
  // A lookup's answer comes through `keys_`: wait for those in flight (each has a
  // deadline) so that none arrives after the authenticator is gone.
  absl::MutexLock lock(&state_->mu);
  state_->mu.Await(absl::Condition(
      +[](int* lookups) { return *lookups == 0; }, &state_->lookups));
}

void StreamRevalidator::Watch(const grpc::ServerContextBase& context,
                              std::weak_ptr<Endable> stream) {
  absl::StatusOr<std::string> secret = BearerToken(context);
  if (!secret.ok()) return;  // Not a keyed call: nothing can be revoked.
  absl::MutexLock lock(&state_->mu);
  state_->streams[*secret].push_back(std::move(stream));
}

void StreamRevalidator::Run() {
  for (;;) {
    {
      absl::MutexLock lock(&state_->mu);
      state_->mu.AwaitWithTimeout(absl::Condition(&state_->stopping), period_);
      if (state_->stopping) return;
    }
    for (std::string& secret : Prune()) {
      {
        absl::MutexLock lock(&state_->mu);
        ++state_->lookups;
      }
      keys_.Resolve(secret, [state = state_, secret](absl::StatusOr<Principal> who) {
        if (!who.ok() && who.status().code() == absl::StatusCode::kUnauthenticated) {
          state->EndStreamsOf(secret, ToGrpcStatus(who.status()));
        }
        absl::MutexLock lock(&state->mu);
        --state->lookups;
      });
    }
  }
}

std::vector<std::string> StreamRevalidator::Prune() {
  std::vector<std::string> secrets;
  absl::MutexLock lock(&state_->mu);
  absl::erase_if(state_->streams, [&](auto& entry) {
    std::erase_if(entry.second, [](const std::weak_ptr<Endable>& weak) {
      std::shared_ptr<Endable> stream = weak.lock();
      return stream == nullptr || stream->finished();
    });
    if (entry.second.empty()) return true;
    secrets.push_back(entry.first);
    return false;
  });
  return secrets;
}

void StreamRevalidator::State::EndStreamsOf(const std::string& secret,
                                            const grpc::Status& refusal) {
  std::vector<std::weak_ptr<Endable>> streams;
  {
    absl::MutexLock lock(&mu);
    auto it = this->streams.find(secret);
    if (it == this->streams.end()) return;
    streams = std::move(it->second);
    this->streams.erase(it);
  }
  for (const std::weak_ptr<Endable>& weak : streams) {
    if (std::shared_ptr<Endable> stream = weak.lock()) stream->End(refusal);
  }
}

}  // namespace parley::gateway
