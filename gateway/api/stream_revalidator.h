// Ends open event streams whose API key stopped working.
//
// A key is checked when a stream opens, and a stream may stay open for hours. So that
// revoking a key or disabling its tenant also ends the streams it opened, within the
// same bound that stops its new calls (a period plus the authenticator's cache TTL),
// every `period` the revalidator resolves each distinct key of the open streams again
// through KeyAuthenticator::Resolve — its cache answers most of them, so there is at
// most one store-svc lookup per key per cache TTL — and ends the streams of a key now
// refused with that refusal (UNAUTHENTICATED). A key that cannot be checked right now
// (store-svc unavailable) keeps its streams: losing the store must not cut them all.
//
// Threading: Watch() from any thread. One thread of its own sweeps; the answers of
// lookups arrive on gRPC callback threads and only touch `State`, which they share.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "gateway/auth/authenticator.h"
#include "gateway/fanout/endable.h"

namespace parley::gateway {

class StreamRevalidator {
 public:
  // `keys` must outlive this object and every lookup it started (the gRPC server is
  // shut down, and with it the lookups, before the authenticator goes).
  StreamRevalidator(KeyAuthenticator& keys, absl::Duration period);
  // Stops the sweeps. Streams are left as they are.
  ~StreamRevalidator();

  StreamRevalidator(const StreamRevalidator&) = delete;
  StreamRevalidator& operator=(const StreamRevalidator&) = delete;

  // Watches `stream`, opened by the call `context` with the key of its authorization
  // header, until the stream ends.
  void Watch(const grpc::ServerContextBase& context, std::weak_ptr<Endable> stream);

 private:
  // What sweeps and lookup answers share.
  struct State {
    absl::Mutex mu;
    // Presented secret -> the streams opened with it that may still be open.
    absl::flat_hash_map<std::string, std::vector<std::weak_ptr<Endable>>> streams
        ABSL_GUARDED_BY(mu);
    bool stopping ABSL_GUARDED_BY(mu) = false;
    int lookups ABSL_GUARDED_BY(mu) = 0;  // Resolve calls not answered yet.

    // Ends every stream of `secret` with `refusal`.
    void EndStreamsOf(const std::string& secret, const grpc::Status& refusal);
  };

  void Run();
  // Drops streams that ended and returns the secrets that still have one.
  std::vector<std::string> Prune();

  KeyAuthenticator& keys_;
  const absl::Duration period_;
  const std::shared_ptr<State> state_ = std::make_shared<State>();
  std::thread thread_;  // Last: it uses everything above.
};

}  // namespace parley::gateway
