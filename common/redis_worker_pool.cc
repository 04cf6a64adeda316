#include "common/redis_worker_pool.h"

#include <algorithm>
#include <memory>
#include <utility>

namespace parley {

RedisWorkerPool::RedisWorkerPool(RedisWorkerPoolOptions options) : options_(std::move(options)) {
  for (int i = 0; i < options_.workers; ++i) workers_.emplace_back([this] { Work(); });
}

RedisWorkerPool::~RedisWorkerPool() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  for (std::thread& worker : workers_) worker.join();
}

bool RedisWorkerPool::Submit(std::vector<std::string> command, Done done) {
  absl::MutexLock lock(&mu_);
  if (queue_.size() >= options_.max_queued) return false;
  queue_.push_back({std::move(command), std::move(done)});
  return true;
}

void RedisWorkerPool::Work() {
  std::unique_ptr<RedisConnection> redis;
  std::vector<Queued> batch;
  std::vector<std::vector<std::string>> commands;
  for (;;) {
    batch.clear();
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](RedisWorkerPool* self) ABSL_EXCLUSIVE_LOCKS_REQUIRED(self->mu_) {
            return self->stopping_ || !self->queue_.empty();
          },
          this));
      if (queue_.empty()) return;  // Stopping, and nothing left to run.
      const size_t take = std::min(queue_.size(), std::max<size_t>(1, options_.max_batch));
      for (size_t i = 0; i < take; ++i) {
        batch.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
    }
    if (redis == nullptr || redis->broken()) {
      absl::StatusOr<std::unique_ptr<RedisConnection>> connected =
          RedisConnection::Connect(options_.redis, options_.connect_timeout);
      redis = connected.ok() ? *std::move(connected) : nullptr;
    }
    if (redis == nullptr) {
      for (Queued& queued : batch) queued.done(absl::UnavailableError("redis: unreachable"));
      continue;
    }
    commands.clear();
    for (Queued& queued : batch) commands.push_back(std::move(queued.command));
    absl::StatusOr<std::vector<absl::StatusOr<RedisReply>>> replies = redis->PipelineEach(commands);
    for (size_t i = 0; i < batch.size(); ++i) {
      batch[i].done(replies.ok() ? std::move((*replies)[i]) : replies.status());
    }
  }
}

}  // namespace parley
