// A few threads, each holding its own blocking Redis connection, that run queued jobs:
// how code on gRPC's callback threads, which must never block, reaches Redis.
//
//   RedisWorkerPool pool({.redis = endpoint, .workers = 2});
//   if (!pool.Submit([done](RedisConnection* redis) {
//         if (redis == nullptr) return done(absl::UnavailableError("no Redis"));
//         done(redis->Command({"GET", "k"}).status());
//       })) {
//     done(absl::ResourceExhaustedError("queue full"));
//   }
//
// A job gets the worker's connection, reconnected first when it broke (nullptr when
// Redis cannot be reached: the job decides what that means). Jobs run in the order
// submitted, several at a time, on the worker threads; they may block on Redis but
// should not otherwise wait.
#pragma once

#include <cstddef>
#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/redis.h"

namespace parley {

struct RedisWorkerPoolOptions {
  RedisEndpoint redis;
  int workers = 2;
  // Jobs waiting for a worker, at most: Submit refuses more.
  size_t max_queued = 10'000;
  absl::Duration connect_timeout = absl::Milliseconds(500);
};

class RedisWorkerPool {
 public:
  using Job = std::function<void(RedisConnection* redis)>;

  explicit RedisWorkerPool(RedisWorkerPoolOptions options);
  ~RedisWorkerPool();  // Runs what is queued, then joins the workers.

  // Queues `job`; false (and `job` dropped, never run) when max_queued are waiting.
  // Thread-safe.
  bool Submit(Job job);

 private:
  void Work();

  const RedisWorkerPoolOptions options_;
  absl::Mutex mu_;
  std::deque<Job> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> workers_;
};

}  // namespace parley
