// Endable: an open stream that something other than its client may end — the
// revalidator, when the key that opened it is revoked. A StreamEvents stream
// (SubscriberStream) and a Subscribe stream (MuxStream) are both.
#pragma once

#include <grpcpp/grpcpp.h>

namespace parley::gateway {

class Endable {
 public:
  virtual ~Endable() = default;
  // Ends the stream with `status`; no-op once it has ended. Any thread.
  virtual void End(const grpc::Status& status) = 0;
  // Whether it has ended (finished, cancelled or detached).
  virtual bool finished() const = 0;
};

}  // namespace parley::gateway
