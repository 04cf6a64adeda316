// A few threads, each holding its own blocking Redis connection, that run queued
// commands: how code on gRPC's callback threads, which must never block, reaches Redis.
//
//   RedisWorkerPool pool({.redis = endpoint, .workers = 2});
//   if (!pool.Submit({"GET", "k"}, [done](absl::StatusOr<RedisReply> reply) {
//         done(reply.status());
//       })) {
//     done(absl::ResourceExhaustedError("queue full"));
//   }
//
// A worker takes every command waiting (up to max_batch) and sends them in one
// pipelined round trip, so under load the cost of a round trip and of waking a thread
// is shared by many calls instead of paid by each. Each command's callback gets its own
// reply, or its own error (an error reply, a script error); when Redis cannot be reached
// or the connection breaks, every command of the batch gets UNAVAILABLE and the worker
// reconnects for the next batch. Callbacks run on the worker thread, in the order the
// commands were submitted within a batch; they must not block.
#pragma once

#include <cstddef>
#include <deque>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/redis.h"

namespace parley {

struct RedisWorkerPoolOptions {
  RedisEndpoint redis;
  int workers = 2;
  // Commands waiting for a worker, at most: Submit refuses more.
  size_t max_queued = 10'000;
  // Commands one worker sends in one round trip, at most.
  size_t max_batch = 128;
  absl::Duration connect_timeout = absl::Milliseconds(500);
};

class RedisWorkerPool {
 public:
  using Done = std::function<void(absl::StatusOr<RedisReply> reply)>;

  explicit RedisWorkerPool(RedisWorkerPoolOptions options);
  ~RedisWorkerPool();  // Runs what is queued, then joins the workers.

  // Queues `command`; false (and `done` dropped, never run) when max_queued are
  // waiting. Thread-safe.
  bool Submit(std::vector<std::string> command, Done done);

 private:
  struct Queued {
    std::vector<std::string> command;
    Done done;
  };

  void Work();

  const RedisWorkerPoolOptions options_;
  absl::Mutex mu_;
  std::deque<Queued> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> workers_;
};

}  // namespace parley
