// The real `parley` binary against a real gateway, session-svc, store-svc, Postgres and
// Redis: what a person sees, what a script parses (--json), and the exit status of each
// class of failure.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "google/protobuf/util/json_util.h"
#include "parley/admin/v1/admin.pb.h"
#include "parley/v1/parley.pb.h"
#include "tests/harness/services.h"
#include "tests/session/session_fixture.h"

namespace parley::session::testing {
namespace {

using ::parley::testing::BinaryPath;
using ::parley::testing::ProcessOptions;
using ::parley::testing::RunCommand;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

// What one run of the CLI printed and how it exited.
struct CliRun {
  int exit_code = -1;
  std::string output;
  std::vector<std::string> Lines() const {
    return absl::StrSplit(absl::StripSuffix(output, "\n"), '\n', absl::SkipEmpty());
  }
};

template <typename Message>
Message FromJson(const std::string& line) {
  Message message;
  auto status = google::protobuf::util::JsonStringToMessage(line, &message);
  EXPECT_TRUE(status.ok()) << status << " in: " << line;
  return message;
}

class ParleyCli : public SessionFixture {
 protected:
  void SetUp() override { ASSERT_NO_FATAL_FAILURE(StartCluster({.replicas = 1, .gateway = true})); }

  // Runs `parley ARGS...` with PARLEY_ADDR pointing at the gateway and `key` (if any)
  // in PARLEY_API_KEY.
  CliRun Parley(const std::string& key, std::vector<std::string> args,
                const std::string& addr = "") {
    ProcessOptions options{.binary = BinaryPath("cli/parley"), .args = std::move(args)};
    options.env["PARLEY_ADDR"] = addr.empty() ? gateway()->grpc_target() : addr;
    if (!key.empty()) options.env["PARLEY_API_KEY"] = key;
    auto result = RunCommand(options, absl::Seconds(60));
    EXPECT_TRUE(result.ok()) << result.status();
    if (!result.ok()) return {};
    return {result->exit_code, result->output};
  }

  // A tenant and a key of it with every tenant scope, made as an operator would.
  std::string OnboardTenant(const std::string& tenant) {
    sandbox_tenants_.push_back(tenant);
    CliRun created = Parley(kGatewayApiKey, {"admin", "tenants", "create", tenant, "--name=Acme"});
    EXPECT_EQ(created.exit_code, 0) << created.output;
    CliRun key = Parley(kGatewayApiKey,
                        {"admin", "keys", "create", "ci key", "--tenant=" + tenant, "--json"});
    EXPECT_EQ(key.exit_code, 0) << key.output;
    return FromJson<v1::CreateApiKeyResponse>(key.Lines().at(0)).secret();
  }
};

TEST_F(ParleyCli, ASessionsLifeForPeopleAndForScripts) {
  const std::string key = OnboardTenant("acme");

  CliRun created = Parley(key, {"sessions", "create", "--title=Support chat", "--json"});
  ASSERT_EQ(created.exit_code, 0) << created.output;
  const std::string session =
      FromJson<v1::CreateSessionResponse>(created.Lines().at(0)).session().id();
  ASSERT_THAT(session, StartsWith("ses_"));

  // For a person: the answer streamed as text, the turn's end on a line of its own.
  CliRun sent = Parley(key, {"send", session, "hello there", "--follow"});
  EXPECT_EQ(sent.exit_code, 0) << sent.output;
  EXPECT_THAT(sent.output, HasSubstr("Echo: hello there\n"));
  EXPECT_THAT(sent.output, HasSubstr("[turn succeeded (stop)"));
  EXPECT_THAT(sent.output, Not(HasSubstr("\x1b["))) << "no colour when stdout is not a terminal";

  // For a script: one StreamEventsResponse per line, from TurnStarted to TurnSealed.
  CliRun followed = Parley(key, {"send", session, "again", "--follow", "--json"});
  ASSERT_EQ(followed.exit_code, 0) << followed.output;
  std::vector<v1::Event> events;
  for (const std::string& line : followed.Lines()) {
    auto item = FromJson<v1::StreamEventsResponse>(line);
    if (item.has_event()) events.push_back(item.event());
  }
  ASSERT_FALSE(events.empty());
  EXPECT_TRUE(events.front().has_turn_started());
  EXPECT_TRUE(events.back().has_turn_sealed());
  for (size_t i = 1; i < events.size(); ++i) EXPECT_EQ(events[i].seq(), events[i - 1].seq() + 1);

  CliRun turns = Parley(key, {"turns", "list", session, "--json"});
  ASSERT_EQ(turns.exit_code, 0) << turns.output;
  ASSERT_EQ(turns.Lines().size(), 2u) << turns.output;
  EXPECT_EQ(FromJson<v1::Turn>(turns.Lines()[1]).status(), v1::TURN_STATUS_SUCCEEDED);
  CliRun table = Parley(key, {"turns", "list", session});
  EXPECT_THAT(table.Lines().at(0), StartsWith("ID "));
  EXPECT_THAT(table.output, HasSubstr("succeeded"));

  CliRun messages = Parley(key, {"messages", session});
  EXPECT_EQ(messages.exit_code, 0) << messages.output;
  EXPECT_THAT(messages.output, HasSubstr("user: hello there\n"));
  EXPECT_THAT(messages.output, HasSubstr("assistant: Echo: hello there\n"));

  // Watching from the start replays the same history, then stops at a turn's end.
  CliRun watched = Parley(key, {"watch", session, "--after=0", "--until-turn-end"});
  EXPECT_EQ(watched.exit_code, 0) << watched.output;
  EXPECT_THAT(watched.output, HasSubstr("Echo: hello there"));

  CliRun renamed = Parley(key, {"sessions", "update", session, "--title=Renamed", "--tags=a,b"});
  EXPECT_EQ(renamed.exit_code, 0) << renamed.output;
  EXPECT_THAT(renamed.output, HasSubstr("title:        Renamed"));
  CliRun listed = Parley(key, {"sessions", "list", "--json"});
  ASSERT_EQ(listed.Lines().size(), 1u) << listed.output;
  EXPECT_EQ(FromJson<v1::Session>(listed.Lines()[0]).title(), "Renamed");

  CliRun closed = Parley(key, {"sessions", "close", session});
  EXPECT_EQ(closed.exit_code, 0) << closed.output;
  CliRun refused = Parley(key, {"send", session, "too late"});
  EXPECT_EQ(refused.exit_code, 6) << refused.output;  // conflict: FAILED_PRECONDITION
  EXPECT_THAT(refused.output, StartsWith("parley: FAILED_PRECONDITION: "));
}

// What it proves: the key and tenant commands work for a person and for a script:
// `keys create` prints the secret alone (or the JSON), `keys list` shows the tenant's
// keys and hides revoked ones unless asked, `keys revoke` stops the key (its next
// calls exit with the auth status, within the cache's few seconds), `admin tenants
// list` shows the tenants to the operator, and `sessions get` shows one session.
TEST_F(ParleyCli, KeysAndTenantsForPeopleAndForScripts) {
  const std::string key = OnboardTenant("globex");

  CliRun bot = Parley(key, {"keys", "create", "deploy bot", "--scopes=sessions:read", "--json"});
  ASSERT_EQ(bot.exit_code, 0) << bot.output;
  const auto created = FromJson<v1::CreateApiKeyResponse>(bot.Lines().at(0));
  EXPECT_EQ(created.api_key().name(), "deploy bot");
  EXPECT_THAT(created.api_key().scopes(), ::testing::ElementsAre("sessions:read"));
  CliRun plain = Parley(key, {"keys", "create", "for a shell"});
  ASSERT_EQ(plain.exit_code, 0) << plain.output;
  // The secret alone on stdout (the test reads stderr's note after it).
  EXPECT_THAT(plain.Lines().at(0), StartsWith("pk_")) << plain.output;
  EXPECT_THAT(plain.output, HasSubstr("shown only once"));

  CliRun session = Parley(created.secret(), {"sessions", "list"});
  EXPECT_EQ(session.exit_code, 0) << session.output;
  CliRun listed = Parley(key, {"keys", "list", "--json"});
  ASSERT_EQ(listed.exit_code, 0) << listed.output;
  std::vector<std::string> names;
  for (const std::string& line : listed.Lines()) names.push_back(FromJson<v1::ApiKey>(line).name());
  EXPECT_THAT(names, ::testing::IsSupersetOf({"deploy bot", "for a shell"}));

  CliRun revoked = Parley(key, {"keys", "revoke", created.api_key().id()});
  ASSERT_EQ(revoked.exit_code, 0) << revoked.output;
  EXPECT_EQ(revoked.output, created.api_key().id() + " revoked\n");
  EXPECT_TRUE(parley::testing::WaitFor(absl::Seconds(10), [&] {
    return Parley(created.secret(), {"sessions", "list"}).exit_code == 3;  // auth
  }));
  CliRun active = Parley(key, {"keys", "list", "--json"});
  for (const std::string& line : active.Lines()) {
    EXPECT_NE(FromJson<v1::ApiKey>(line).id(), created.api_key().id()) << "revoked, still listed";
  }
  CliRun all = Parley(key, {"keys", "list", "--revoked", "--json"});
  bool shown_revoked = false;
  for (const std::string& line : all.Lines()) {
    const auto listed_key = FromJson<v1::ApiKey>(line);
    if (listed_key.id() == created.api_key().id()) shown_revoked = listed_key.has_revoke_time();
  }
  EXPECT_TRUE(shown_revoked) << all.output;

  CliRun tenants = Parley(kGatewayApiKey, {"admin", "tenants", "list", "--json"});
  ASSERT_EQ(tenants.exit_code, 0) << tenants.output;
  std::vector<std::string> ids;
  for (const std::string& line : tenants.Lines())
    ids.push_back(FromJson<admin::v1::Tenant>(line).id());
  EXPECT_THAT(ids, ::testing::Contains("globex"));
  CliRun table = Parley(kGatewayApiKey, {"admin", "tenants", "list"});
  EXPECT_THAT(table.output, HasSubstr("globex"));

  CliRun made = Parley(key, {"sessions", "create", "--title=Looked at", "--json"});
  ASSERT_EQ(made.exit_code, 0) << made.output;
  const std::string id = FromJson<v1::CreateSessionResponse>(made.Lines().at(0)).session().id();
  CliRun got = Parley(key, {"sessions", "get", id});
  EXPECT_EQ(got.exit_code, 0) << got.output;
  EXPECT_THAT(got.output, HasSubstr("Looked at"));
  EXPECT_THAT(got.output, HasSubstr(id));
}

TEST_F(ParleyCli, EachClassOfFailureHasItsOwnExitStatusAndOneClearLine) {
  const std::string key = OnboardTenant("acme");

  CliRun missing_key = Parley("", {"sessions", "list"});
  EXPECT_EQ(missing_key.exit_code, 3) << missing_key.output;
  CliRun wrong_key = Parley("pk_not_a_real_key", {"sessions", "list"});
  EXPECT_EQ(wrong_key.exit_code, 3) << wrong_key.output;
  EXPECT_EQ(wrong_key.output, "parley: UNAUTHENTICATED: unknown or revoked api key\n")
      << "one line, no table header, the key never echoed";
  CliRun not_operator = Parley(key, {"admin", "tenants", "list"});
  EXPECT_EQ(not_operator.exit_code, 3) << not_operator.output;
  EXPECT_THAT(not_operator.output, HasSubstr("MISSING_SCOPE"));

  CliRun not_found = Parley(key, {"sessions", "get", "ses_nope"});
  EXPECT_EQ(not_found.exit_code, 4) << not_found.output;
  EXPECT_EQ(not_found.Lines().size(), 1u) << not_found.output;
  CliRun as_json = Parley(key, {"sessions", "get", "ses_nope", "--json"});
  EXPECT_EQ(as_json.exit_code, 4);
  EXPECT_THAT(as_json.output, StartsWith("{\"error\":{"));
  EXPECT_THAT(as_json.output, HasSubstr("\"code\":\"NOT_FOUND\""));

  CliRun bad_scope = Parley(key, {"keys", "create", "typo", "--scopes=sessions:reed"});
  EXPECT_EQ(bad_scope.exit_code, 2) << bad_scope.output;
  EXPECT_THAT(bad_scope.output, HasSubstr("scopes[0]"));
  CliRun no_args = Parley(key, {"sessions", "get"});
  EXPECT_EQ(no_args.exit_code, 2) << no_args.output;
  CliRun unknown = Parley(key, {"sessions", "explode"});
  EXPECT_EQ(unknown.exit_code, 2) << unknown.output;
  CliRun bad_flag = Parley(key, {"watch", "ses_x", "--after=1", "--from-latest"});
  EXPECT_EQ(bad_flag.exit_code, 2) << bad_flag.output;
  EXPECT_THAT(bad_flag.output, HasSubstr("exclude each other"));

  // `health` without an address checks the gateway PARLEY_ADDR names.
  CliRun health = Parley("", {"health"});
  EXPECT_EQ(health.exit_code, 0) << health.output;
  EXPECT_EQ(health.output, "SERVING\n");
  CliRun health_down = Parley("", {"health", "--timeout=1s"}, "127.0.0.1:1");
  EXPECT_EQ(health_down.exit_code, 1) << health_down.output;

  // Nothing listens on port 1 of loopback.
  CliRun unreachable = Parley(key, {"sessions", "list", "--timeout=2s"}, "127.0.0.1:1");
  EXPECT_EQ(unreachable.exit_code, 5) << unreachable.output;
  EXPECT_THAT(unreachable.output, StartsWith("parley: UNAVAILABLE: "));
}

// Following a turn queued behind a running one shows that turn only, and its outcome.
TEST_F(ParleyCli, FollowingAQueuedTurnShowsOnlyThatTurn) {
  const std::string key = OnboardTenant("acme");
  CliRun created = Parley(key, {"sessions", "create"});
  ASSERT_EQ(created.exit_code, 0) << created.output;
  const std::string session(absl::StripSuffix(created.output, "\n"));
  CliRun ahead = Parley(key, {"send", session, "@delay_ms 200\n@words 10"});
  ASSERT_EQ(ahead.exit_code, 0) << ahead.output;
  const std::string ahead_turn(absl::StripSuffix(ahead.output, "\n"));
  ASSERT_TRUE(WaitForTurnStatus("acme", ahead_turn, v1::TURN_STATUS_RUNNING).ok());

  CliRun mine = Parley(key, {"send", session, "mine", "--policy=enqueue", "--follow"});
  EXPECT_EQ(mine.exit_code, 0) << mine.output;
  EXPECT_THAT(mine.output, HasSubstr("Echo: mine\n"));
  EXPECT_THAT(mine.output, Not(HasSubstr("w1"))) << "the turn ahead was shown";
  EXPECT_THAT(mine.output, Not(HasSubstr(ahead_turn)));
}

TEST_F(ParleyCli, FollowingATurnThatDidNotSucceedExitsOne) {
  const std::string key = OnboardTenant("acme");
  CliRun created = Parley(key, {"sessions", "create"});
  ASSERT_EQ(created.exit_code, 0) << created.output;
  const std::string session(absl::StripSuffix(created.output, "\n"));
  CliRun sent = Parley(key, {"send", session, "@stall_ms 60000\nwait"});
  ASSERT_EQ(sent.exit_code, 0) << sent.output;
  const std::string turn(absl::StripSuffix(sent.output, "\n"));
  ASSERT_TRUE(WaitForTurnStatus("acme", turn, v1::TURN_STATUS_RUNNING).ok());

  CliRun cancelled = Parley(key, {"turns", "cancel", session});
  EXPECT_EQ(cancelled.exit_code, 0) << cancelled.output;
  CliRun watched = Parley(key, {"watch", session, "--from_turn=" + turn, "--until_turn_end"});
  EXPECT_EQ(watched.exit_code, 1) << watched.output;
  EXPECT_THAT(watched.output, HasSubstr("[turn cancelled (cancelled)"));
  CliRun got = Parley(key, {"turns", "get", session, turn});
  EXPECT_THAT(got.output, HasSubstr("status:      cancelled"));
}

// Following a turn that was cancelled while it waited in the queue ends at once, says
// so, and exits 1 (it used to wait for a seal that never comes).
TEST_F(ParleyCli, FollowingATurnCancelledWhileQueuedSaysSoAndExitsOne) {
  const std::string key = OnboardTenant("acme");
  CliRun created = Parley(key, {"sessions", "create"});
  ASSERT_EQ(created.exit_code, 0) << created.output;
  const std::string session(absl::StripSuffix(created.output, "\n"));
  CliRun ahead = Parley(key, {"send", session, "@stall_ms 60000\nwait"});
  ASSERT_EQ(ahead.exit_code, 0) << ahead.output;
  const std::string ahead_turn(absl::StripSuffix(ahead.output, "\n"));
  ASSERT_TRUE(WaitForTurnStatus("acme", ahead_turn, v1::TURN_STATUS_RUNNING).ok());
  CliRun queued = Parley(key, {"send", session, "later", "--policy=enqueue"});
  ASSERT_EQ(queued.exit_code, 0) << queued.output;
  const std::string turn(absl::StripSuffix(queued.output, "\n"));

  CliRun cancelled = Parley(key, {"turns", "cancel", session, turn});
  ASSERT_EQ(cancelled.exit_code, 0) << cancelled.output;
  CliRun watched = Parley(key, {"watch", session, "--from_turn=" + turn, "--until_turn_end"});
  EXPECT_EQ(watched.exit_code, 1) << watched.output;
  EXPECT_THAT(watched.output, HasSubstr("[turn " + turn + " was cancelled before it started]"));
  EXPECT_EQ(Parley(key, {"turns", "cancel", session}).exit_code, 0);  // The one ahead.
}

}  // namespace
}  // namespace parley::session::testing

namespace parley::session::testing {
namespace {

class ParleyCliSandbox : public ParleyCli {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(StartCluster({.replicas = 1, .gateway = true, .sandbox = true}));
  }
};

// What it proves: a person following a turn sees its retry, its tool call with the
// arguments, the tool's output as it streamed and the result's line, then the answer
// and the turn's end, each readable on its own line. How: a scripted turn whose first
// model request fails once (503) and that runs bash in the session's real sandbox.
TEST_F(ParleyCliSandbox, FollowingATurnShowsRetriesToolCallsAndTheirOutput) {
  const std::string key = OnboardTenant("acme");
  CliRun created = Parley(key, {"sessions", "create", "--tools=bash", "--json"});
  ASSERT_EQ(created.exit_code, 0) << created.output;
  const std::string session =
      FromJson<v1::CreateSessionResponse>(created.Lines().at(0)).session().id();
  const std::string script =
      "@fail 503 x1\n@tool bash {\"command\": \"echo from-the-sandbox\"}\n@say all done";
  CliRun sent = Parley(key, {"send", session, script, "--follow"});
  EXPECT_EQ(sent.exit_code, 0) << sent.output;
  const std::vector<std::string> expected = {
      "[retrying in ",      "[tool bash {\"command\": \"echo from-the-sandbox\"}]",
      "from-the-sandbox\n", "[tool result, ",
      "all done",           "[turn succeeded (stop)"};
  size_t at = 0;
  for (const std::string& piece : expected) {
    const size_t found = sent.output.find(piece, at);
    ASSERT_NE(found, std::string::npos) << "missing, or out of order: " << piece << "\n"
                                        << sent.output;
    at = found + piece.size();
  }
}

TEST_F(ParleyCliSandbox, FilesGoInAndOutAndCommandsRunWithTheirOwnExitStatus) {
  const std::string key = OnboardTenant("acme");
  CliRun created = Parley(key, {"sessions", "create", "--json"});
  ASSERT_EQ(created.exit_code, 0) << created.output;
  const std::string session =
      FromJson<v1::CreateSessionResponse>(created.Lines().at(0)).session().id();

  const std::string local = parley::testing::TestTempDir() + "/cli-upload.sh";
  {
    std::ofstream out(local, std::ios::binary);
    out << "echo \"args: $*\"\necho to-stderr >&2\nexit 7\n";
  }
  CliRun put = Parley(key, {"files", "put", session, local, "tools/run.sh"});
  ASSERT_EQ(put.exit_code, 0) << put.output;
  EXPECT_THAT(put.output, HasSubstr("tools/run.sh: 42 bytes"));

  CliRun listed = Parley(key, {"files", "ls", session, "--recursive"});
  ASSERT_EQ(listed.exit_code, 0) << listed.output;
  EXPECT_THAT(listed.output, HasSubstr("tools/"));
  EXPECT_THAT(listed.output, HasSubstr("tools/run.sh"));
  // Each entry's type is its whole word.
  EXPECT_THAT(listed.output, HasSubstr("directory"));
  EXPECT_THAT(listed.output, HasSubstr("regular"));

  const std::string downloaded = parley::testing::TestTempDir() + "/cli-download.sh";
  CliRun got = Parley(key, {"files", "get", session, "tools/run.sh", downloaded});
  ASSERT_EQ(got.exit_code, 0) << got.output;
  std::ifstream in(downloaded, std::ios::binary);
  std::string content((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(content, "echo \"args: $*\"\necho to-stderr >&2\nexit 7\n");

  // The command's own exit status, its output as it came.
  CliRun ran = Parley(key, {"exec", session, "--", "bash", "tools/run.sh", "one", "--two"});
  EXPECT_EQ(ran.exit_code, 7) << ran.output;
  EXPECT_THAT(ran.output, HasSubstr("args: one --two\n"));
  EXPECT_THAT(ran.output, HasSubstr("to-stderr\n"));

  CliRun json = Parley(key, {"exec", session, "--json", "--", "bash", "-c", "echo hi"});
  EXPECT_EQ(json.exit_code, 0) << json.output;
  ASSERT_EQ(json.Lines().size(), 2u) << json.output;
  EXPECT_EQ(FromJson<v1::ExecResponse>(json.Lines()[0]).stdout(), "hi\n");
  EXPECT_EQ(FromJson<v1::ExecResponse>(json.Lines()[1]).exit().exit_code(), 0);

  // A file that is not there: not found, and the local file is left as it was.
  CliRun missing = Parley(key, {"files", "get", session, "nope.txt", downloaded});
  EXPECT_EQ(missing.exit_code, 4) << missing.output;
  std::ifstream again(downloaded, std::ios::binary);
  std::string kept((std::istreambuf_iterator<char>(again)), std::istreambuf_iterator<char>());
  EXPECT_EQ(kept, content);

  // Another tenant's session is not found, and no command ran.
  CliRun other = Parley(kGatewayApiKey, {"exec", session, "--", "true"});
  EXPECT_EQ(other.exit_code, 4) << other.output;
}

}  // namespace
}  // namespace parley::session::testing
