#include "common/status.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace parley {
namespace {

using ::testing::HasSubstr;

TEST(Status, InvalidArgumentNamesFieldAndLimit) {
  absl::Status status = InvalidArgumentError("idempotency_key", "too long", "256 bytes");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(), "idempotency_key: too long (limit: 256 bytes)");
  auto bad_request = GetBadRequest(status);
  ASSERT_TRUE(bad_request.has_value());
  ASSERT_EQ(bad_request->field_violations_size(), 1);
  EXPECT_EQ(bad_request->field_violations(0).field(), "idempotency_key");
  EXPECT_EQ(bad_request->field_violations(0).limit(), "256 bytes");
}

TEST(Status, AddFieldViolationKeepsEarlierOnes) {
  absl::Status status = InvalidArgumentError("a", "bad");
  AddFieldViolation(status, "b", "worse", "3");
  auto bad_request = GetBadRequest(status);
  ASSERT_TRUE(bad_request.has_value());
  ASSERT_EQ(bad_request->field_violations_size(), 2);
  EXPECT_EQ(bad_request->field_violations(1).field(), "b");
  EXPECT_THAT(std::string(status.message()), HasSubstr("b: worse"));
}

TEST(Status, DetailsSurviveTheGrpcRoundTrip) {
  absl::Status status = absl::FailedPreconditionError("lease lost");
  SetErrorInfo(status, "LEASE_LOST", {{"epoch", "7"}});
  SetRetryDelay(status, 250);
  grpc::Status wire = ToGrpcStatus(status);
  EXPECT_EQ(wire.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(wire.error_message(), "lease lost");
  EXPECT_FALSE(wire.error_details().empty());

  // The trailer is a standard google.rpc.Status: code, message, Any details.
  v1::RpcStatus rpc_status;
  ASSERT_TRUE(rpc_status.ParseFromString(wire.error_details()));
  EXPECT_EQ(rpc_status.code(), 9);
  EXPECT_EQ(rpc_status.details_size(), 2);

  absl::Status back = FromGrpcStatus(wire);
  EXPECT_EQ(back.code(), absl::StatusCode::kFailedPrecondition);
  auto info = GetErrorInfo(back);
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->reason(), "LEASE_LOST");
  EXPECT_EQ(info->metadata().at("epoch"), "7");
  ASSERT_TRUE(GetRetryInfo(back).has_value());
  EXPECT_EQ(GetRetryInfo(back)->retry_delay_ms(), 250);
}

TEST(Status, PlainErrorsHaveNoDetailsAndOkStaysOk) {
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
  grpc::Status wire = ToGrpcStatus(absl::NotFoundError("no such session"));
  EXPECT_EQ(wire.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_TRUE(wire.error_details().empty());
  EXPECT_FALSE(GetErrorInfo(FromGrpcStatus(wire)).has_value());
  EXPECT_TRUE(FromGrpcStatus(grpc::Status::OK).ok());
}

TEST(Status, GarbageDetailsAreIgnoredNotFatal) {
  absl::Status status =
      FromGrpcStatus(grpc::Status(grpc::StatusCode::INTERNAL, "boom", "\xff\xff not a proto"));
  EXPECT_EQ(status.code(), absl::StatusCode::kInternal);
  EXPECT_EQ(status.message(), "boom");
}

}  // namespace
}  // namespace parley
