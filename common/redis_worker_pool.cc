#include "common/redis_worker_pool.h"

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

bool RedisWorkerPool::Submit(Job job) {
  absl::MutexLock lock(&mu_);
  if (queue_.size() >= options_.max_queued) return false;
  queue_.push_back(std::move(job));
  return true;
}

void RedisWorkerPool::Work() {
  std::unique_ptr<RedisConnection> redis;
  for (;;) {
    Job job;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](RedisWorkerPool* self) ABSL_EXCLUSIVE_LOCKS_REQUIRED(self->mu_) {
            return self->stopping_ || !self->queue_.empty();
          },
          this));
      if (queue_.empty()) return;  // Stopping, and nothing left to run.
      job = std::move(queue_.front());
      queue_.pop_front();
    }
    if (redis == nullptr || redis->broken()) {
      absl::StatusOr<std::unique_ptr<RedisConnection>> connected =
          RedisConnection::Connect(options_.redis, options_.connect_timeout);
      redis = connected.ok() ? *std::move(connected) : nullptr;
    }
    job(redis.get());
  }
}

}  // namespace parley
