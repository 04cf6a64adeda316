// The one conversion between absl::Time and google.protobuf.Timestamp, the wire form of
// every time in Parley's protos.
//
//   *event.mutable_time() = parley::ToTimestamp(clock.Now());
//   absl::Duration age = clock.Now() - parley::FromTimestamp(turn.create_time());
//
// Both are exact to the nanosecond. A time before 1970 keeps `nanos` in [0, 1e9), as
// Timestamp's definition requires (seconds are floored, not truncated toward zero).
#pragma once

#include <google/protobuf/timestamp.pb.h>

#include "absl/time/time.h"

namespace parley {

google::protobuf::Timestamp ToTimestamp(absl::Time time);
absl::Time FromTimestamp(const google::protobuf::Timestamp& timestamp);

}  // namespace parley
