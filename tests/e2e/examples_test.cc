// The client examples a product team copies (examples/python, examples/node) run
// against a real gateway, session-svc, store-svc, Postgres and Redis: each creates a
// session, sends a message, streams the turn, drops its connection on purpose and
// resumes from its last seq with nothing missing or repeated.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

#include "tests/harness/services.h"
#include "tests/session/session_fixture.h"

namespace parley::session::testing {
namespace {

using ::parley::testing::ProcessOptions;
using ::parley::testing::RunCommand;
using ::parley::testing::SourcePath;
using ::testing::HasSubstr;

class ClientExamples : public SessionFixture {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(StartCluster({.replicas = 1, .gateway = true}));
    CreateSession(kTenantA);  // Creates the tenant of the key the examples use.
  }

  // Runs an example with the gateway's address and the bootstrap key of tenant A.
  void ExpectExampleWorks(ProcessOptions options) {
    options.env["PARLEY_ADDR"] = gateway()->grpc_target();
    options.env["PARLEY_API_KEY"] = kGatewayApiKey;
    auto ran = RunCommand(options, absl::Seconds(120));
    ASSERT_TRUE(ran.ok()) << ran.status();
    EXPECT_EQ(ran->exit_code, 0) << ran->output;
    EXPECT_THAT(ran->output, HasSubstr("[dropping the connection after seq"));
    EXPECT_THAT(ran->output, HasSubstr("[resuming after seq"));
    EXPECT_THAT(ran->output, HasSubstr("TURN_STATUS_SUCCEEDED"));
    EXPECT_THAT(ran->output, HasSubstr("none missing or repeated"));
  }
};

TEST_F(ClientExamples, PythonStreamsATurnAndResumesAfterADroppedConnection) {
  ExpectExampleWorks(
      {.binary = "/usr/bin/python3",
       .args = {SourcePath("examples/python/quickstart.py")},
       .env = {{"PARLEY_PY_GEN_DIR", parley::testing::TestTempDir() + "/python-stubs"}}});
}

TEST_F(ClientExamples, NodeStreamsATurnAndResumesAfterADroppedConnection) {
  // scripts/test installs examples/node's packages (npm ci) before the tests run.
  ExpectExampleWorks({.binary = "/usr/bin/node",
                      .args = {SourcePath("examples/node/quickstart.js")}});
}

}  // namespace
}  // namespace parley::session::testing
