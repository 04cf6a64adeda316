// parley::ToTimestamp / FromTimestamp: exact to the nanosecond both ways, and valid
// Timestamps (nanos in [0, 1e9)) for times before 1970.
#include "common/proto_time.h"

#include <gtest/gtest.h>

namespace parley {
namespace {

TEST(ProtoTime, RoundTripsToTheNanosecond) {
  const absl::Time time = absl::FromUnixNanos(1'765'000'000'123'456'789);
  const google::protobuf::Timestamp timestamp = ToTimestamp(time);
  EXPECT_EQ(timestamp.seconds(), 1'765'000'000);
  EXPECT_EQ(timestamp.nanos(), 123'456'789);
  EXPECT_EQ(FromTimestamp(timestamp), time);
}

TEST(ProtoTime, ATimeBefore1970KeepsNanosPositive) {
  const absl::Time time = absl::UnixEpoch() - absl::Milliseconds(1500);
  const google::protobuf::Timestamp timestamp = ToTimestamp(time);
  EXPECT_EQ(timestamp.seconds(), -2);
  EXPECT_EQ(timestamp.nanos(), 500'000'000);
  EXPECT_EQ(FromTimestamp(timestamp), time);
}

TEST(ProtoTime, AnEmptyTimestampIsTheEpoch) {
  EXPECT_EQ(FromTimestamp(google::protobuf::Timestamp()), absl::UnixEpoch());
}

}  // namespace
}  // namespace parley
