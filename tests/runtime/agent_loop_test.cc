// The agent loop end to end: parley-session replicas running turns of the scripted model
// whose tools run in real bubblewrap sandboxes (a real parley-sandbox), with a real
// parley-store, Postgres and Redis. What a client sees is asserted: the events of the
// turn, the messages stored, the turn's end — and, for cancel and lost sandboxes, what
// is left in the sandbox.
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "tests/runtime/fake_model_server.h"
#include "tests/runtime/fake_openai.h"
#include "tests/session/session_fixture.h"

namespace parley::session::testing {
namespace {

namespace sandbox_pb = ::parley::sandbox::v1;
using ::parley::testing::FakeOpenAiProvidersFile;
using ::parley::testing::OpenAiAnswer;

// The events of `turn_id` with payload `kind`.
std::vector<v1::Event> OfKind(const std::vector<v1::Event>& events, const std::string& turn_id,
                              v1::Event::PayloadCase kind) {
  std::vector<v1::Event> found;
  for (const v1::Event& event : EventsOfTurn(events, turn_id)) {
    if (event.payload_case() == kind) found.push_back(event);
  }
  return found;
}

std::vector<v1::ToolResult> Results(const std::vector<v1::Event>& events,
                                    const std::string& turn_id) {
  std::vector<v1::ToolResult> results;
  for (const v1::Event& e : OfKind(events, turn_id, v1::Event::kToolResult)) {
    results.push_back(e.tool_result());
  }
  return results;
}

v1::AgentConfig WithTools(std::vector<std::string> tools) {
  v1::AgentConfig config;
  for (std::string& tool : tools) config.add_tools(std::move(tool));
  return config;
}

class AgentLoop : public SessionFixture {
 protected:
  void Start(bool gateway = false, std::vector<std::string> more_flags = {}) {
    std::vector<std::string> flags = {"--retry_backoff=20ms"};
    flags.insert(flags.end(), more_flags.begin(), more_flags.end());
    ASSERT_NO_FATAL_FAILURE(
        StartCluster({.replicas = 1, .gateway = gateway, .sandbox = true, .replica_flags = flags}));
  }

  // Runs one turn to its seal; the turn and the session's checked events.
  struct Ran {
    v1::Turn turn;
    std::vector<v1::Event> events;
  };
  Ran RunTurn(const std::string& session, const std::string& text) {
    absl::StatusOr<std::string> turn_id = SubmitTurn(kTenantA, session, text);
    EXPECT_TRUE(turn_id.ok()) << turn_id.status();
    if (!turn_id.ok()) return {};
    absl::StatusOr<v1::Turn> turn = WaitForTurnEnd(kTenantA, session, *turn_id, absl::Seconds(90));
    EXPECT_TRUE(turn.ok()) << turn.status();
    absl::StatusOr<std::vector<v1::Event>> events = ReadSessionEvents(kTenantA, session);
    EXPECT_TRUE(events.ok()) << events.status();
    if (!turn.ok() || !events.ok()) return {};
    return {*turn, *events};
  }

  // How many `sleep 600` processes run in `sandbox_id`, as a line ("2\n").
  std::string SleepsIn(const std::string& sandbox_id) {
    return ExecIn(sandbox_id,
                  "n=0; for f in /proc/[0-9]*/cmdline; do "
                  "[ \"$(tr '\\0' ' ' < $f 2>/dev/null)\" = 'sleep 600 ' ] && n=$((n+1)); "
                  "done; echo $n");
  }

  // Runs `argv` in `sandbox_id` through sandbox-svc; its stdout.
  std::string ExecIn(const std::string& sandbox_id, const std::string& command) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
    sandbox_pb::ExecRequest request;
    request.set_tenant_id(kTenantA);
    request.set_sandbox_id(sandbox_id);
    for (const char* arg : {"bash", "-c"}) request.mutable_command()->add_argv(arg);
    request.mutable_command()->add_argv(command);
    auto reader = sandboxes().Exec(&context, request);
    sandboxd::v1::ExecResponse response;
    std::string out;
    while (reader->Read(&response)) out += response.stdout();
    grpc::Status status = reader->Finish();
    EXPECT_TRUE(status.ok()) << Describe(status);
    return out;
  }
};

// A five-step turn with real tools in a real sandbox: write a script, run it, edit it,
// run it again and read it back. Each step's output is an event with its step, bash
// output streams as ToolOutputDelta, each step is committed and announced by
// StepCompleted, and the stored messages alternate assistant and tool.
TEST_F(AgentLoop, AMultiStepTurnWritesRunsEditsAndReadsAFileInARealSandbox) {
  ASSERT_NO_FATAL_FAILURE(Start());
  const std::string session = CreateSessionWith(
      kTenantA, WithTools({"bash", "read_file", "write_file", "edit_file", "list_files"}));
  Ran ran = RunTurn(session, R"(@say Writing it.
@tool write_file {"path": "bin/hello.sh", "content": "echo hello from the sandbox\n"}
@say Running it.
@tool bash {"command": "bash bin/hello.sh"}
@say Editing it.
@tool edit_file {"path": "bin/hello.sh", "old_string": "hello", "new_string": "goodbye"}
@say Checking it.
@tool bash {"command": "bash bin/hello.sh"}
@tool read_file {"path": "bin/hello.sh"}
@tool list_files {"recursive": true}
@say All done.)");
  ASSERT_EQ(ran.turn.status(), v1::TURN_STATUS_SUCCEEDED) << ran.turn.error().message();
  EXPECT_EQ(ran.turn.finish_reason(), v1::FINISH_REASON_STOP);
  EXPECT_EQ(ran.turn.steps(), 5u);

  const std::string turn = ran.turn.id();
  std::vector<v1::ToolResult> results = Results(ran.events, turn);
  ASSERT_EQ(results.size(), 6u);
  for (const v1::ToolResult& r : results) EXPECT_FALSE(r.is_error()) << r.output();
  EXPECT_EQ(results[0].output(), "wrote 28 bytes to bin/hello.sh");
  EXPECT_EQ(results[1].output(), "hello from the sandbox\n");
  EXPECT_EQ(results[2].output(), "edited bin/hello.sh");
  EXPECT_EQ(results[3].output(), "goodbye from the sandbox\n");
  EXPECT_EQ(results[4].output(), "echo goodbye from the sandbox\n");
  EXPECT_TRUE(absl::StrContains(results[5].output(), "bin/\nbin/hello.sh (30 bytes)"))
      << results[5].output();

  // The sandbox was created for the first call, once, before any result.
  std::vector<v1::Event> attached = OfKind(ran.events, turn, v1::Event::kSandboxAttached);
  ASSERT_EQ(attached.size(), 1u);
  EXPECT_TRUE(attached[0].sandbox_attached().created());
  EXPECT_LT(attached[0].seq(), OfKind(ran.events, turn, v1::Event::kToolResult)[0].seq());
  absl::StatusOr<std::vector<sandbox_pb::Sandbox>> sandboxes = SessionSandboxes(kTenantA, session);
  ASSERT_TRUE(sandboxes.ok()) << sandboxes.status();
  ASSERT_EQ(sandboxes->size(), 1u);
  EXPECT_EQ((*sandboxes)[0].id(), attached[0].sandbox_attached().sandbox_id());

  // bash output streamed while it ran, tagged with its call.
  std::string streamed;
  for (const v1::Event& e : OfKind(ran.events, turn, v1::Event::kToolOutputDelta)) {
    if (e.tool_output_delta().call_id() == results[1].call_id()) {
      streamed += e.tool_output_delta().data();
    }
  }
  EXPECT_EQ(streamed, "hello from the sandbox\n");

  // Every step announced in order; every tool event carries the step of its call.
  std::vector<v1::Event> steps = OfKind(ran.events, turn, v1::Event::kStepCompleted);
  ASSERT_EQ(steps.size(), 5u);
  for (uint32_t i = 0; i < 5; ++i) {
    EXPECT_EQ(steps[i].step_completed().step(), i);
    EXPECT_EQ(steps[i].step(), i);
    EXPECT_EQ(steps[i].step_completed().finish_reason(),
              i < 4 ? v1::FINISH_REASON_TOOL_CALLS : v1::FINISH_REASON_STOP);
  }
  for (const v1::Event& e : OfKind(ran.events, turn, v1::Event::kToolResult)) {
    for (const v1::Event& call : OfKind(ran.events, turn, v1::Event::kToolCall)) {
      if (call.tool_call().call_id() == e.tool_result().call_id()) {
        EXPECT_EQ(e.step(), call.step());
      }
    }
  }
  const v1::TurnCompleted* completed = CompletedOf(ran.events, turn);
  ASSERT_NE(completed, nullptr);
  EXPECT_EQ(completed->steps(), 5u);
  EXPECT_GT(completed->context_tokens(), 0u);

  // Stored: five assistant messages, four tool messages (the results of a step in one),
  // alternating, each once.
  absl::StatusOr<std::vector<v1::Message>> messages = ListMessages(kTenantA, session);
  ASSERT_TRUE(messages.ok()) << messages.status();
  std::vector<v1::Role> roles;
  for (const v1::Message& m : *messages) {
    if (m.turn_id() == turn && m.role() != v1::ROLE_USER) roles.push_back(m.role());
  }
  const std::vector<v1::Role> expected = {
      v1::ROLE_ASSISTANT, v1::ROLE_TOOL,      v1::ROLE_ASSISTANT,
      v1::ROLE_TOOL,      v1::ROLE_ASSISTANT, v1::ROLE_TOOL,
      v1::ROLE_ASSISTANT, v1::ROLE_TOOL,      v1::ROLE_ASSISTANT};
  EXPECT_EQ(roles, expected);
  EXPECT_EQ(MessageText(MessagesOf(*messages, turn, v1::ROLE_ASSISTANT).back()), "All done.");
}

// edit_file replaces exactly one occurrence: none, or several, is an error result that
// says which, and the file stays as it was.
TEST_F(AgentLoop, EditFileRefusesZeroOrSeveralMatchesAndLeavesTheFileAlone) {
  ASSERT_NO_FATAL_FAILURE(Start());
  const std::string session =
      CreateSessionWith(kTenantA, WithTools({"read_file", "write_file", "edit_file"}));
  Ran ran = RunTurn(session, R"(@tool write_file {"path": "notes.txt", "content": "one two two\n"}
@say Editing.
@tool edit_file {"path": "notes.txt", "old_string": "three", "new_string": "3"}
@say Again.
@tool edit_file {"path": "notes.txt", "old_string": "two", "new_string": "2"}
@say Reading.
@tool read_file {"path": "notes.txt"}
@say Unchanged.)");
  ASSERT_EQ(ran.turn.status(), v1::TURN_STATUS_SUCCEEDED) << ran.turn.error().message();
  std::vector<v1::ToolResult> results = Results(ran.events, ran.turn.id());
  ASSERT_EQ(results.size(), 4u);
  EXPECT_FALSE(results[0].is_error()) << results[0].output();
  EXPECT_TRUE(results[1].is_error());
  EXPECT_TRUE(absl::StrContains(results[1].output(), "old_string was not found in notes.txt"))
      << results[1].output();
  EXPECT_TRUE(results[2].is_error());
  EXPECT_TRUE(absl::StrContains(results[2].output(), "old_string occurs 2 times in notes.txt"))
      << results[2].output();
  EXPECT_FALSE(results[3].is_error()) << results[3].output();
  EXPECT_EQ(results[3].output(), "one two two\n");
}

// A call the model gets wrong — an unknown tool, arguments that break the schema or are
// not JSON, a file that does not exist — becomes an error result the model sees, never a
// failed turn; nothing runs for the invalid ones.
TEST_F(AgentLoop, BadToolCallsGoBackToTheModelAsErrorResults) {
  ASSERT_NO_FATAL_FAILURE(Start());
  const std::string session = CreateSessionWith(kTenantA, WithTools({"read_file"}));
  Ran ran = RunTurn(session, R"(@tool read_file {"path": 7}
@tool read_file {"path": "a", "mode": "fast"}
@tool read_file {not json
@tool launch_rockets {}
@tool read_file {"path": "missing.txt"})");
  ASSERT_EQ(ran.turn.status(), v1::TURN_STATUS_SUCCEEDED) << ran.turn.error().message();
  std::vector<v1::ToolResult> results = Results(ran.events, ran.turn.id());
  ASSERT_EQ(results.size(), 5u);
  for (const v1::ToolResult& r : results) EXPECT_TRUE(r.is_error()) << r.output();
  EXPECT_TRUE(absl::StrContains(results[0].output(), "arguments.path: must be string"))
      << results[0].output();
  EXPECT_TRUE(absl::StrContains(results[1].output(), "arguments.mode: unknown argument"))
      << results[1].output();
  EXPECT_TRUE(absl::StrContains(results[2].output(), "not valid JSON")) << results[2].output();
  EXPECT_TRUE(absl::StrContains(results[3].output(), "unknown tool \"launch_rockets\""))
      << results[3].output();
  EXPECT_TRUE(absl::StrContains(results[4].output(), "missing.txt")) << results[4].output();
  EXPECT_EQ(TextOf(ran.events, ran.turn.id()), "done.");
}

// Failed requests before any output are retried, each retry announced live by a
// transient RetryScheduled (attempt, delay honouring Retry-After, reason); the text
// then streams exactly once.
TEST_F(AgentLoop, RetriesAreAnnouncedAndTheTextStreamsOnce) {
  ASSERT_NO_FATAL_FAILURE(Start(/*gateway=*/true));
  const std::string session = CreateSession(kTenantA);
  LiveSubscriber live(gateway()->grpc_target(), session);
  // Transient events reach only subscribers that are live: a first turn seen through
  // the stream proves it is, whatever the machine's load.
  Ran warmup = RunTurn(session, "warm up");
  ASSERT_TRUE(live.WaitFor(
      [&](const std::vector<v1::Event>& events) {
        return CountSealed(events, warmup.turn.id()) == 1;
      },
      absl::Seconds(30)));
  Ran ran = RunTurn(session, "@fail 429 x2\n@retry_after_ms 60\n@say finally here");
  ASSERT_EQ(ran.turn.status(), v1::TURN_STATUS_SUCCEEDED) << ran.turn.error().message();
  ASSERT_TRUE(live.WaitFor(
      [&](const std::vector<v1::Event>& events) { return CountSealed(events, ran.turn.id()) == 1; },
      absl::Seconds(30)));
  std::vector<v1::RetryScheduled> retries;
  std::string text;
  for (const v1::Event& e : EventsOfTurn(live.events(), ran.turn.id())) {
    if (e.has_retry_scheduled()) {
      EXPECT_TRUE(e.transient());
      retries.push_back(e.retry_scheduled());
    }
    if (e.has_text_delta()) text += e.text_delta().text();
  }
  ASSERT_EQ(retries.size(), 2u);
  EXPECT_EQ(retries[0].attempt(), 2u);
  EXPECT_EQ(retries[1].attempt(), 3u);
  for (const v1::RetryScheduled& r : retries) {
    EXPECT_GE(r.delay_ms(), 60u);
    EXPECT_EQ(r.reason(), "rate limited (429)");
    EXPECT_EQ(r.error().status_code(), 429);
    EXPECT_TRUE(r.error().retryable());
  }
  EXPECT_EQ(text, "finally here");
  EXPECT_EQ(TextOf(ran.events, ran.turn.id()), "finally here");
}

// A failure after the step had streamed text is not retried (that would repeat the
// text): the turn fails with a PROVIDER error and keeps what streamed.
TEST_F(AgentLoop, AFailureAfterOutputFailsTheTurnWithoutRepeatingText) {
  ASSERT_NO_FATAL_FAILURE(Start());
  const std::string session = CreateSession(kTenantA);
  Ran ran = RunTurn(session, "@fail 500 after\n@say some words");
  EXPECT_EQ(ran.turn.status(), v1::TURN_STATUS_FAILED);
  EXPECT_EQ(ran.turn.error().kind(), v1::TURN_ERROR_KIND_PROVIDER);
  EXPECT_EQ(ran.turn.error().status_code(), 500);
  EXPECT_EQ(ran.turn.error().provider(), "scripted");
  EXPECT_TRUE(ran.turn.error().retryable());
  EXPECT_TRUE(absl::StrContains(ran.turn.error().message(), "not retried"))
      << ran.turn.error().message();
  EXPECT_EQ(TextOf(ran.events, ran.turn.id()), "some words");
  absl::StatusOr<std::vector<v1::Message>> messages = ListMessages(kTenantA, session);
  ASSERT_TRUE(messages.ok()) << messages.status();
  std::vector<v1::Message> assistant = MessagesOf(*messages, ran.turn.id(), v1::ROLE_ASSISTANT);
  ASSERT_EQ(assistant.size(), 1u);
  EXPECT_EQ(MessageText(assistant[0]), "some words");
}

// A request the provider refuses (400) is not retried; a retryable failure that outlasts
// the session's retry budget ends the turn too, saying so.
TEST_F(AgentLoop, RefusedRequestsAndAnExhaustedRetryBudgetFailTheTurn) {
  ASSERT_NO_FATAL_FAILURE(Start());
  const std::string refused_session = CreateSession(kTenantA);
  Ran refused = RunTurn(refused_session, "@fail 400\n@say never");
  EXPECT_EQ(refused.turn.status(), v1::TURN_STATUS_FAILED);
  EXPECT_EQ(refused.turn.error().status_code(), 400);
  EXPECT_FALSE(refused.turn.error().retryable());
  EXPECT_EQ(TextOf(refused.events, refused.turn.id()), "");

  v1::AgentConfig budget;
  budget.set_retry_max_attempts(2);
  const std::string session = CreateSessionWith(kTenantA, budget);
  Ran exhausted = RunTurn(session, "@fail 503 x5\n@say never");
  EXPECT_EQ(exhausted.turn.status(), v1::TURN_STATUS_FAILED);
  EXPECT_EQ(exhausted.turn.error().status_code(), 503);
  EXPECT_TRUE(absl::StrContains(exhausted.turn.error().message(), "gave up after 2 retries"))
      << exhausted.turn.error().message();
}

// Cancel while bash runs `sleep 600` in the sandbox: the turn ends CANCELLED at once,
// the interrupted call gets a synthetic error result, and no process of the command is
// left in the sandbox.
TEST_F(AgentLoop, CancelDuringASandboxCommandKillsItsProcessTree) {
  ASSERT_NO_FATAL_FAILURE(Start());
  const std::string session = CreateSessionWith(kTenantA, WithTools({"bash"}));
  absl::StatusOr<std::string> turn = SubmitTurn(
      kTenantA, session, R"(@tool bash {"command": "sleep 600 & sleep 600 & echo started; wait"})");
  ASSERT_TRUE(turn.ok()) << turn.status();
  auto started = WaitForEvents(
      kTenantA, session,
      [&](const std::vector<v1::Event>& events) {
        for (const v1::Event& e : OfKind(events, *turn, v1::Event::kToolOutputDelta)) {
          if (absl::StrContains(e.tool_output_delta().data(), "started")) return true;
        }
        return false;
      },
      "the command's output", absl::Seconds(60));
  ASSERT_TRUE(started.ok()) << started.status();
  absl::StatusOr<std::vector<sandbox_pb::Sandbox>> sandboxes = SessionSandboxes(kTenantA, session);
  ASSERT_TRUE(sandboxes.ok() && sandboxes->size() == 1u);
  const std::string sandbox_id = (*sandboxes)[0].id();
  EXPECT_EQ(SleepsIn(sandbox_id), "2\n");

  v1::CancelTurnResponse cancelled;
  grpc::Status status = CancelTurn(kTenantA, session, *turn, &cancelled);
  ASSERT_TRUE(status.ok()) << Describe(status);
  absl::StatusOr<v1::Turn> ended = WaitForTurnEnd(kTenantA, session, *turn);
  ASSERT_TRUE(ended.ok()) << ended.status();
  EXPECT_EQ(ended->status(), v1::TURN_STATUS_CANCELLED);
  absl::StatusOr<std::vector<v1::Event>> events = ReadSessionEvents(kTenantA, session);
  ASSERT_TRUE(events.ok()) << events.status();
  std::vector<v1::ToolResult> results = Results(*events, *turn);
  ASSERT_EQ(results.size(), 1u);
  EXPECT_TRUE(results[0].is_error());
  EXPECT_EQ(results[0].duration_ms(), 0u);
  EXPECT_TRUE(WaitUntil([&] { return SleepsIn(sandbox_id) == "0\n"; }, absl::Seconds(20)))
      << "sleep 600 still runs in the sandbox";
}

// A call over the per-tool limit (--tool_timeout) is killed with its processes and goes
// back to the model as an error result saying so; the turn goes on.
TEST_F(AgentLoop, AToolOverItsTimeLimitIsKilledAndTheModelIsTold) {
  ASSERT_NO_FATAL_FAILURE(Start(/*gateway=*/false, {"--tool_timeout=2s"}));
  const std::string session = CreateSessionWith(kTenantA, WithTools({"bash"}));
  Ran ran = RunTurn(session, R"(@tool bash {"command": "echo started; sleep 600"}
@say It took too long.)");
  ASSERT_EQ(ran.turn.status(), v1::TURN_STATUS_SUCCEEDED) << ran.turn.error().message();
  std::vector<v1::ToolResult> results = Results(ran.events, ran.turn.id());
  ASSERT_EQ(results.size(), 1u);
  EXPECT_TRUE(results[0].is_error());
  EXPECT_TRUE(absl::StrContains(results[0].output(), "started")) << results[0].output();
  EXPECT_TRUE(absl::StrContains(results[0].output(), "[timed out after 2s")) << results[0].output();
  EXPECT_EQ(TextOf(ran.events, ran.turn.id()), "It took too long.");
  absl::StatusOr<std::vector<sandbox_pb::Sandbox>> sandboxes = SessionSandboxes(kTenantA, session);
  ASSERT_TRUE(sandboxes.ok() && sandboxes->size() == 1u);
  EXPECT_EQ(SleepsIn((*sandboxes)[0].id()), "0\n") << "sleep 600 outlived its call";
}

// A file read that is larger than what goes back to the model: the model gets the head
// and the tail with a marker, and the full content is in the call's output events, as
// the marker says.
TEST_F(AgentLoop, WhatIsCutFromAToolResultIsInTheOutputEvents) {
  ASSERT_NO_FATAL_FAILURE(Start());
  const std::string session = CreateSessionWith(kTenantA, WithTools({"bash", "read_file"}));
  Ran ran = RunTurn(session, R"(@tool bash {"command": "seq 1 20000 > numbers.txt"}
@say Reading.
@tool read_file {"path": "numbers.txt"}
@say Printing far more.
@tool bash {"command": "seq 1 200000"}
@say Read.)");
  ASSERT_EQ(ran.turn.status(), v1::TURN_STATUS_SUCCEEDED) << ran.turn.error().message();
  std::string expected;
  for (int i = 1; i <= 20000; ++i) absl::StrAppend(&expected, i, "\n");
  std::vector<v1::ToolResult> results = Results(ran.events, ran.turn.id());
  ASSERT_EQ(results.size(), 3u);
  const v1::ToolResult& read = results[1];
  EXPECT_FALSE(read.is_error()) << read.output();
  EXPECT_LT(read.output().size(), expected.size());
  EXPECT_TRUE(absl::StrContains(read.output(),
                                "bytes cut; the full output is in the tool's "
                                "output events"));
  EXPECT_TRUE(absl::StartsWith(read.output(), "1\n2\n3\n")) << "the head is kept";
  EXPECT_TRUE(absl::EndsWith(read.output(), "19999\n20000\n")) << "the tail is kept";
  std::string streamed;
  uint64_t result_seq = 0;
  for (const v1::Event& e : OfKind(ran.events, ran.turn.id(), v1::Event::kToolResult)) {
    if (e.tool_result().call_id() == read.call_id()) result_seq = e.seq();
  }
  for (const v1::Event& e : OfKind(ran.events, ran.turn.id(), v1::Event::kToolOutputDelta)) {
    if (e.tool_output_delta().call_id() != read.call_id()) continue;
    EXPECT_LT(e.seq(), result_seq) << "the output comes before its result";
    EXPECT_LE(e.tool_output_delta().data().size(), 64u << 10);
    streamed += e.tool_output_delta().data();
  }
  EXPECT_EQ(streamed, expected);

  // bash keeps only the head and tail of a huge output itself; the model's marker still
  // counts every byte it does not see.
  uint64_t printed = 0;
  for (int i = 1; i <= 200000; ++i) printed += absl::StrCat(i).size() + 1;
  const std::string& huge = results[2].output();
  const size_t start = huge.find("\n[... ");
  const size_t end = huge.find(" ...]\n", start);
  ASSERT_NE(start, std::string::npos) << huge.substr(0, 200);
  ASSERT_NE(end, std::string::npos);
  uint64_t cut = 0;
  ASSERT_TRUE(
      absl::SimpleAtoi(huge.substr(start + 6, huge.find(' ', start + 6) - start - 6), &cut));
  EXPECT_EQ(cut + huge.size() - (end + 6 - start), printed) << huge.substr(start, end + 6 - start);
}

// Stored history over --history_token_budget: the oldest whole turns are left out of the
// model's request, and a HistoryTrimmed event says how much, before the turn's output.
// (The scripted model reads no history, so a provider that does stands in.)
TEST_F(AgentLoop, HistoryOverTheTokenBudgetIsTrimmedAndTheClientIsTold) {
  auto server = parley::testing::FakeModelServer::Start();
  ASSERT_TRUE(server.ok()) << server.status();
  ASSERT_NO_FATAL_FAILURE(StartCluster(
      {.replicas = 1,
       .replica_flags = {"--providers_file=" + FakeOpenAiProvidersFile((*server)->base_url()),
                         "--history_token_budget=200"},
       .replica_env = {{"FAKE_MODEL_KEY", "sk-unused"}}}));
  v1::AgentConfig config;
  config.set_provider("fake-openai");
  const std::string session = CreateSessionWith(kTenantA, config);
  std::string long_answer;
  for (int i = 0; i < 400; ++i) absl::StrAppend(&long_answer, "word", i, " ");
  (*server)->Enqueue(OpenAiAnswer(long_answer));  // About 600 tokens: over the budget.
  Ran first = RunTurn(session, "tell me a lot");
  ASSERT_EQ(first.turn.status(), v1::TURN_STATUS_SUCCEEDED) << first.turn.error().message();
  EXPECT_TRUE(OfKind(first.events, first.turn.id(), v1::Event::kHistoryTrimmed).empty());

  (*server)->Enqueue(OpenAiAnswer("Short."));
  Ran second = RunTurn(session, "and now?");
  ASSERT_EQ(second.turn.status(), v1::TURN_STATUS_SUCCEEDED) << second.turn.error().message();
  std::vector<v1::Event> trimmed =
      OfKind(second.events, second.turn.id(), v1::Event::kHistoryTrimmed);
  ASSERT_EQ(trimmed.size(), 1u);
  EXPECT_EQ(trimmed[0].history_trimmed().dropped_messages(), 2u) << "the first turn, whole";
  EXPECT_EQ(trimmed[0].history_trimmed().kept_messages(), 1u);
  EXPECT_EQ(trimmed[0].history_trimmed().budget_tokens(), 200u);
  EXPECT_LE(trimmed[0].history_trimmed().estimated_tokens(), 200u);
  std::vector<v1::Event> text = OfKind(second.events, second.turn.id(), v1::Event::kTextDelta);
  ASSERT_FALSE(text.empty());
  EXPECT_LT(trimmed[0].seq(), text[0].seq());
  // What the model was sent: the new message alone.
  std::vector<parley::testing::RecordedRequest> requests = (*server)->requests();
  ASSERT_EQ(requests.size(), 2u);
  nlohmann::json messages = nlohmann::json::parse(requests[1].body)["messages"];
  ASSERT_EQ(messages.size(), 1u) << messages.dump();
  EXPECT_EQ(messages[0]["content"], "and now?");
}

// The sandbox destroyed while a tool runs: the call that finds it gone says so — that
// the sandbox was lost and the workspace may be new — and a SandboxLost event tells
// clients; the next call gets a new sandbox, announced with the one it replaces; the
// turn goes on. (Whether the running
// command itself reports the loss or ends killed depends on which the daemon noticed
// first; the call after it then reports the loss. Either way exactly one does.)
TEST_F(AgentLoop, ALostSandboxIsReportedAndReplaced) {
  ASSERT_NO_FATAL_FAILURE(Start());
  const std::string session = CreateSessionWith(kTenantA, WithTools({"bash"}));
  absl::StatusOr<std::string> turn = SubmitTurn(kTenantA, session, R"(@say First.
@tool bash {"command": "echo kept > notes.txt; echo started; sleep 600"}
@say Again.
@tool bash {"command": "cat notes.txt 2>/dev/null || echo gone"}
@say Once more.
@tool bash {"command": "cat notes.txt 2>/dev/null || echo gone"})");
  ASSERT_TRUE(turn.ok()) << turn.status();
  auto started = WaitForEvents(
      kTenantA, session,
      [&](const std::vector<v1::Event>& events) {
        return !OfKind(events, *turn, v1::Event::kToolOutputDelta).empty();
      },
      "the first command's output", absl::Seconds(60));
  ASSERT_TRUE(started.ok()) << started.status();
  const std::string first =
      OfKind(*started, *turn, v1::Event::kSandboxAttached)[0].sandbox_attached().sandbox_id();
  {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
    sandbox_pb::DestroySandboxRequest request;
    request.set_tenant_id(kTenantA);
    request.set_sandbox_id(first);
    sandbox_pb::DestroySandboxResponse response;
    grpc::Status status = sandboxes().DestroySandbox(&context, request, &response);
    ASSERT_TRUE(status.ok()) << Describe(status);
  }
  absl::StatusOr<v1::Turn> ended = WaitForTurnEnd(kTenantA, session, *turn, absl::Seconds(90));
  ASSERT_TRUE(ended.ok()) << ended.status();
  EXPECT_EQ(ended->status(), v1::TURN_STATUS_SUCCEEDED) << ended->error().message();
  absl::StatusOr<std::vector<v1::Event>> events = ReadSessionEvents(kTenantA, session);
  ASSERT_TRUE(events.ok()) << events.status();
  std::vector<v1::ToolResult> results = Results(*events, *turn);
  ASSERT_EQ(results.size(), 3u);
  int lost = 0;
  for (const v1::ToolResult& r : results) {
    if (!absl::StrContains(r.output(), "sandbox was lost")) continue;
    ++lost;
    EXPECT_TRUE(r.is_error());
    EXPECT_TRUE(absl::StrContains(r.output(), "may be empty")) << r.output();
  }
  EXPECT_EQ(lost, 1) << results[0].output() << "\n---\n" << results[1].output();
  EXPECT_TRUE(results[0].is_error()) << results[0].output();
  EXPECT_EQ(results[2].output(), "gone\n");
  std::vector<v1::Event> attached = OfKind(*events, *turn, v1::Event::kSandboxAttached);
  ASSERT_EQ(attached.size(), 2u);
  EXPECT_TRUE(attached[1].sandbox_attached().created());
  EXPECT_EQ(attached[1].sandbox_attached().replaced_sandbox_id(), first);
  EXPECT_NE(attached[1].sandbox_attached().sandbox_id(), first);
  // The loss itself is an event, once, as soon as a call saw it: before that call's
  // result, and before the replacement.
  std::vector<v1::Event> losses = OfKind(*events, *turn, v1::Event::kSandboxLost);
  ASSERT_EQ(losses.size(), 1u);
  EXPECT_EQ(losses[0].sandbox_lost().sandbox_id(), first);
  EXPECT_FALSE(losses[0].sandbox_lost().reason().empty());
  EXPECT_LT(losses[0].seq(), attached[1].seq());
  for (const v1::Event& e : OfKind(*events, *turn, v1::Event::kToolResult)) {
    if (absl::StrContains(e.tool_result().output(), "sandbox was lost")) {
      EXPECT_LT(losses[0].seq(), e.seq());
    }
  }
}

// Each limit ends the turn SUCCEEDED with its own finish reason: max steps before the
// next step, max output tokens after a step's usage (its tool call then gets a synthetic
// result), max duration in the middle of a stream.
TEST_F(AgentLoop, LimitsEndTheTurnWithTheirFinishReason) {
  ASSERT_NO_FATAL_FAILURE(Start());
  v1::AgentConfig steps;
  steps.set_max_steps(2);
  Ran by_steps = RunTurn(CreateSessionWith(kTenantA, steps),
                         "@tool_ms 1\n@say two\n@tool_ms 1\n@say three\n@tool_ms 1");
  EXPECT_EQ(by_steps.turn.status(), v1::TURN_STATUS_SUCCEEDED);
  EXPECT_EQ(by_steps.turn.finish_reason(), v1::FINISH_REASON_MAX_STEPS);
  EXPECT_EQ(by_steps.turn.steps(), 2u);

  v1::AgentConfig tokens;
  tokens.set_max_output_tokens(3);
  Ran by_tokens = RunTurn(CreateSessionWith(kTenantA, tokens), "@words 5\n@tool_ms 1\n@say more");
  EXPECT_EQ(by_tokens.turn.status(), v1::TURN_STATUS_SUCCEEDED);
  EXPECT_EQ(by_tokens.turn.finish_reason(), v1::FINISH_REASON_MAX_OUTPUT_TOKENS);
  std::vector<v1::ToolResult> results = Results(by_tokens.events, by_tokens.turn.id());
  ASSERT_EQ(results.size(), 1u);
  EXPECT_TRUE(results[0].is_error());

  v1::AgentConfig duration;
  duration.set_max_turn_duration_ms(400);
  Ran by_time = RunTurn(CreateSessionWith(kTenantA, duration), "@rate 20\n@words 400");
  EXPECT_EQ(by_time.turn.status(), v1::TURN_STATUS_SUCCEEDED);
  EXPECT_EQ(by_time.turn.finish_reason(), v1::FINISH_REASON_MAX_DURATION);
  EXPECT_LT(CountTextDeltas(by_time.events, by_time.turn.id()), 400);
}

// A finished step is readable with ListMessages while the turn still runs, and is stored
// once: the turn's end does not store it again.
TEST_F(AgentLoop, AFinishedStepIsStoredBeforeTheTurnEndsAndOnlyOnce) {
  ASSERT_NO_FATAL_FAILURE(Start());
  const std::string session = CreateSession(kTenantA);
  absl::StatusOr<std::string> turn =
      SubmitTurn(kTenantA, session, "@say first\n@tool_ms 1\n@stall_ms 600000\n@say second");
  ASSERT_TRUE(turn.ok()) << turn.status();
  std::vector<v1::Message> stored;
  ASSERT_TRUE(WaitUntil(
      [&] {
        absl::StatusOr<std::vector<v1::Message>> messages = ListMessages(kTenantA, session);
        if (!messages.ok()) return false;
        stored = *messages;
        return MessagesOf(stored, *turn, v1::ROLE_TOOL).size() == 1;
      },
      absl::Seconds(30)));
  std::vector<v1::Message> assistant = MessagesOf(stored, *turn, v1::ROLE_ASSISTANT);
  ASSERT_EQ(assistant.size(), 1u);
  EXPECT_EQ(MessageText(assistant[0]), "first");
  absl::StatusOr<v1::Turn> running = GetTurn(kTenantA, *turn);
  ASSERT_TRUE(running.ok()) << running.status();
  EXPECT_EQ(running->status(), v1::TURN_STATUS_RUNNING);

  v1::CancelTurnResponse cancelled;
  ASSERT_TRUE(CancelTurn(kTenantA, session, *turn, &cancelled).ok());
  ASSERT_TRUE(WaitForTurnEnd(kTenantA, session, *turn).ok());
  absl::StatusOr<std::vector<v1::Message>> messages = ListMessages(kTenantA, session);
  ASSERT_TRUE(messages.ok()) << messages.status();
  EXPECT_EQ(MessagesOf(*messages, *turn, v1::ROLE_ASSISTANT).size(), 1u);
  EXPECT_EQ(MessagesOf(*messages, *turn, v1::ROLE_TOOL).size(), 1u);
}

// A real provider kind end to end: session-svc configured with a providers file names
// an OpenAI-compatible endpoint (a fake speaking the wire format) whose key comes from
// the environment. The model asks for bash, the command runs in the sandbox, the next
// request carries its result, the answer streams. The key is sent to the endpoint and
// appears nowhere else: not in events, messages, errors or the replica's logs.
TEST_F(AgentLoop, AConfiguredOpenAiProviderRunsAToolTurnAndItsKeyStaysSecret) {
  constexpr char kKey[] = "sk-e2e-9f8e7d6c5b4a-secret";
  auto server = parley::testing::FakeModelServer::Start();
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string providers = FakeOpenAiProvidersFile((*server)->base_url());
  ASSERT_NO_FATAL_FAILURE(
      StartCluster({.replicas = 1,
                    .gateway = true,
                    .sandbox = true,
                    .replica_flags = {"--providers_file=" + providers, "--retry_backoff=20ms"},
                    .replica_env = {{"FAKE_MODEL_KEY", kKey}}}));
  auto data = [](const nlohmann::json& chunk) { return "data: " + chunk.dump() + "\n\n"; };
  nlohmann::json call = {
      {"index", 0},
      {"id", "call_e2e_1"},
      {"type", "function"},
      {"function", {{"name", "bash"}, {"arguments", R"({"command":"echo hi"})"}}}};
  (*server)->Enqueue(
      {.chunks = {data({{"choices", {{{"index", 0}, {"delta", {{"tool_calls", {call}}}}}}}}),
                  data({{"choices",
                         {{{"index", 0},
                           {"delta", nlohmann::json::object()},
                           {"finish_reason", "tool_calls"}}}}}),
                  data({{"choices", nlohmann::json::array()},
                        {"usage", {{"prompt_tokens", 50}, {"completion_tokens", 9}}}}),
                  "data: [DONE]\n\n"}});
  (*server)->Enqueue(OpenAiAnswer("It printed hi."));
  v1::AgentConfig config = WithTools({"bash"});
  config.set_provider("fake-openai");
  config.set_model("gpt-test-large");  // The session's model, not the provider's default.
  config.set_system_prompt("You run commands.");
  const std::string session = CreateSessionWith(kTenantA, config);
  // Transient events (RetryScheduled) reach live subscribers only.
  LiveSubscriber live(gateway()->grpc_target(), session);
  Ran ran = RunTurn(session, "what does echo hi print?");
  ASSERT_EQ(ran.turn.status(), v1::TURN_STATUS_SUCCEEDED) << ran.turn.error().message();
  EXPECT_EQ(TextOf(ran.events, ran.turn.id()), "It printed hi.");
  std::vector<v1::Event> started = OfKind(ran.events, ran.turn.id(), v1::Event::kTurnStarted);
  ASSERT_EQ(started.size(), 1u);
  EXPECT_EQ(started[0].turn_started().model(), "fake-openai/gpt-test-large");
  std::vector<v1::ToolResult> results = Results(ran.events, ran.turn.id());
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0].call_id(), "call_e2e_1");
  EXPECT_EQ(results[0].output(), "hi\n");

  std::vector<parley::testing::RecordedRequest> requests = (*server)->requests();
  ASSERT_EQ(requests.size(), 2u);
  EXPECT_EQ(requests[0].headers["authorization"], std::string("Bearer ") + kKey);
  EXPECT_EQ(nlohmann::json::parse(requests[0].body)["model"], "gpt-test-large");
  nlohmann::json second = nlohmann::json::parse(requests[1].body);
  EXPECT_EQ(second["messages"][0],
            (nlohmann::json{{"role", "system"}, {"content", "You run commands."}}));
  EXPECT_EQ(second["messages"][1]["content"], "what does echo hi print?");
  EXPECT_EQ(
      second["messages"][3],
      (nlohmann::json{{"role", "tool"}, {"tool_call_id", "call_e2e_1"}, {"content", "hi\n"}}));

  // A second turn whose request is refused with the key echoed back: FAILED, redacted.
  (*server)->Enqueue(
      {.status = 401,
       .chunks = {std::string(R"({"error":{"message":"bad key )") + kKey + R"("}})"}});
  Ran refused = RunTurn(session, "again");
  EXPECT_EQ(refused.turn.status(), v1::TURN_STATUS_FAILED);
  EXPECT_EQ(refused.turn.error().status_code(), 401);
  EXPECT_TRUE(absl::StrContains(refused.turn.error().message(), "[REDACTED]"))
      << refused.turn.error().message();

  for (const v1::Event& event : refused.events) {
    EXPECT_FALSE(absl::StrContains(event.SerializeAsString(), kKey)) << event.DebugString();
  }
  absl::StatusOr<std::vector<v1::Message>> messages = ListMessages(kTenantA, session);
  ASSERT_TRUE(messages.ok()) << messages.status();
  for (const v1::Message& m : *messages)
    EXPECT_FALSE(absl::StrContains(m.SerializeAsString(), kKey));
  EXPECT_FALSE(absl::StrContains(refused.turn.SerializeAsString(), kKey));
  EXPECT_FALSE(absl::StrContains(replica(0).Output(), kKey));

  // Rate limited, then served: the step is retried and its text streams once.
  (*server)->Enqueue({.status = 429,
                      .headers = {{"retry-after-ms", "50"}},
                      .chunks = {R"({"error":{"message":"Rate limit reached"}})"}});
  (*server)->Enqueue(OpenAiAnswer("Served at last."));
  ASSERT_TRUE(live.WaitFor(
      [&](const std::vector<v1::Event>& events) {
        return CountSealed(events, refused.turn.id()) == 1;
      },
      absl::Seconds(30)))
      << "the subscriber is live";
  Ran retried = RunTurn(session, "once more");
  ASSERT_EQ(retried.turn.status(), v1::TURN_STATUS_SUCCEEDED) << retried.turn.error().message();
  EXPECT_EQ(TextOf(retried.events, retried.turn.id()), "Served at last.");
  EXPECT_EQ((*server)->requests().size(), 5u) << "the refused request and its retry";
  ASSERT_TRUE(live.WaitFor(
      [&](const std::vector<v1::Event>& events) {
        return CountSealed(events, retried.turn.id()) == 1;
      },
      absl::Seconds(30)));
  int retries = 0;
  std::string live_text;
  for (const v1::Event& e : EventsOfTurn(live.events(), retried.turn.id())) {
    if (e.has_retry_scheduled()) {
      ++retries;
      EXPECT_EQ(e.retry_scheduled().reason(), "rate limited (429)");
    }
    if (e.has_text_delta()) live_text += e.text_delta().text();
  }
  EXPECT_EQ(retries, 1);
  EXPECT_EQ(live_text, "Served at last.") << "streamed once, live too";

  // A server error after text had streamed: the turn fails with that text kept once,
  // and the request is not sent again (a retry would repeat the text).
  (*server)->Enqueue(
      {.chunks = {data({{"choices", {{{"index", 0}, {"delta", {{"content", "Half an "}}}}}}}),
                  data({{"error", {{"message", "upstream crashed"}, {"code", 500}}}})}});
  Ran broken = RunTurn(session, "and the last one");
  EXPECT_EQ(broken.turn.status(), v1::TURN_STATUS_FAILED);
  EXPECT_TRUE(absl::StrContains(broken.turn.error().message(), "upstream crashed"))
      << broken.turn.error().message();
  EXPECT_EQ(TextOf(broken.events, broken.turn.id()), "Half an ");
  EXPECT_EQ((*server)->requests().size(), 6u) << "no retry after output";
}

// The same with an Anthropic Messages endpoint: thinking streamed as reasoning, its
// signature kept on the stored part and sent back with the tool result in the next
// request, as the API requires for tool use with thinking.
TEST_F(AgentLoop, AConfiguredAnthropicProviderSendsSignedThinkingBackWithTheToolResult) {
  auto server = parley::testing::FakeModelServer::Start();
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string providers = parley::testing::TestTempDir() + "/providers.json";
  {
    std::ofstream out(providers);
    out << nlohmann::json{{"providers",
                           {{{"name", "claude"},
                             {"kind", "anthropic"},
                             {"base_url", (*server)->base_url()},
                             {"api_key_env", "FAKE_ANTHROPIC_KEY"},
                             {"default_model", "claude-test"}}}}}
               .dump();
  }
  constexpr char kKey[] = "sk-ant-e2e-0a1b2c3d4e5f-secret";
  ASSERT_NO_FATAL_FAILURE(StartCluster({.replicas = 1,
                                        .sandbox = true,
                                        .replica_flags = {"--providers_file=" + providers},
                                        .replica_env = {{"FAKE_ANTHROPIC_KEY", kKey}}}));
  auto event = [](const std::string& type, nlohmann::json data) {
    data["type"] = type;
    return "event: " + type + "\ndata: " + data.dump() + "\n\n";
  };
  auto block = [&](int index, nlohmann::json start, std::vector<nlohmann::json> deltas) {
    std::vector<std::string> out = {
        event("content_block_start", {{"index", index}, {"content_block", std::move(start)}})};
    for (nlohmann::json& delta : deltas) {
      out.push_back(event("content_block_delta", {{"index", index}, {"delta", std::move(delta)}}));
    }
    out.push_back(event("content_block_stop", {{"index", index}}));
    return out;
  };
  std::vector<std::string> first = {
      event("message_start",
            {{"message", {{"model", "claude-test"}, {"usage", {{"input_tokens", 30}}}}}})};
  for (auto part :
       {block(0, {{"type", "thinking"}, {"thinking", ""}},
              {{{"type", "thinking_delta"}, {"thinking", "I will run it."}},
               {{"type", "signature_delta"}, {"signature", "c2lnbmVk"}}}),
        block(1,
              {{"type", "tool_use"},
               {"id", "toolu_e2e"},
               {"name", "bash"},
               {"input", nlohmann::json::object()}},
              {{{"type", "input_json_delta"}, {"partial_json", "{\"command\": \"echo hi\"}"}}})}) {
    first.insert(first.end(), part.begin(), part.end());
  }
  first.push_back(event("message_delta", {{"delta", {{"stop_reason", "tool_use"}}},
                                          {"usage", {{"output_tokens", 12}}}}));
  first.push_back(event("message_stop", nlohmann::json::object()));
  (*server)->Enqueue({.chunks = first});
  std::vector<std::string> second = {
      event("message_start", {{"message", {{"usage", {{"input_tokens", 60}}}}}})};
  for (const std::string& piece : block(0, {{"type", "text"}, {"text", ""}},
                                        {{{"type", "text_delta"}, {"text", "It printed hi."}}})) {
    second.push_back(piece);
  }
  second.push_back(event("message_delta", {{"delta", {{"stop_reason", "end_turn"}}}}));
  second.push_back(event("message_stop", nlohmann::json::object()));
  (*server)->Enqueue({.chunks = second});

  v1::AgentConfig config = WithTools({"bash"});
  config.set_provider("claude");
  const std::string session = CreateSessionWith(kTenantA, config);
  Ran ran = RunTurn(session, "run echo hi");
  ASSERT_EQ(ran.turn.status(), v1::TURN_STATUS_SUCCEEDED) << ran.turn.error().message();
  EXPECT_EQ(TextOf(ran.events, ran.turn.id()), "It printed hi.");
  std::vector<parley::testing::RecordedRequest> requests = (*server)->requests();
  ASSERT_EQ(requests.size(), 2u);
  nlohmann::json messages = nlohmann::json::parse(requests[1].body)["messages"];
  ASSERT_EQ(messages.size(), 3u);
  EXPECT_EQ(messages[1]["content"][0],
            (nlohmann::json{
                {"type", "thinking"}, {"thinking", "I will run it."}, {"signature", "c2lnbmVk"}}));
  EXPECT_EQ(messages[1]["content"][1]["id"], "toolu_e2e");
  EXPECT_EQ(messages[2]["content"][0]["type"], "tool_result");
  EXPECT_EQ(messages[2]["content"][0]["content"], "hi\n");

  // Stored: the reasoning part carries its signature, so later turns can send it back.
  absl::StatusOr<std::vector<v1::Message>> stored = ListMessages(kTenantA, session);
  ASSERT_TRUE(stored.ok()) << stored.status();
  std::vector<v1::Message> assistant = MessagesOf(*stored, ran.turn.id(), v1::ROLE_ASSISTANT);
  ASSERT_EQ(assistant.size(), 2u);
  ASSERT_GE(assistant[0].parts_size(), 1);
  EXPECT_EQ(assistant[0].parts(0).reasoning(), "I will run it.");
  EXPECT_EQ(assistant[0].parts(0).provider_metadata().at("anthropic.signature"), "c2lnbmVk");
  EXPECT_EQ(requests[0].headers["x-api-key"], kKey);

  // An overloaded error after text had streamed: the turn fails with its text once and
  // is not sent again; the key the server echoed is redacted everywhere.
  std::vector<std::string> broken = {
      event("message_start", {{"message", {{"usage", {{"input_tokens", 70}}}}}}),
      event("content_block_start",
            {{"index", 0}, {"content_block", {{"type", "text"}, {"text", ""}}}}),
      event("content_block_delta",
            {{"index", 0}, {"delta", {{"type", "text_delta"}, {"text", "Partial "}}}}),
      event("error", {{"error",
                       {{"type", "overloaded_error"},
                        {"message", std::string("Overloaded for key ") + kKey}}}})};
  (*server)->Enqueue({.chunks = broken});
  Ran failed = RunTurn(session, "again");
  EXPECT_EQ(failed.turn.status(), v1::TURN_STATUS_FAILED);
  EXPECT_EQ(TextOf(failed.events, failed.turn.id()), "Partial ");
  EXPECT_EQ((*server)->requests().size(), 3u) << "no retry after output";
  EXPECT_TRUE(absl::StrContains(failed.turn.error().message(), "[REDACTED]"))
      << failed.turn.error().message();
  for (const v1::Event& e : failed.events) {
    EXPECT_FALSE(absl::StrContains(e.SerializeAsString(), kKey)) << e.DebugString();
  }
  EXPECT_FALSE(absl::StrContains(failed.turn.SerializeAsString(), kKey));
  absl::StatusOr<std::vector<v1::Message>> all = ListMessages(kTenantA, session);
  ASSERT_TRUE(all.ok()) << all.status();
  for (const v1::Message& m : *all) EXPECT_FALSE(absl::StrContains(m.SerializeAsString(), kKey));
  EXPECT_FALSE(absl::StrContains(replica(0).Output(), kKey));
}

// The tool the steering tests hold a turn in until the test opens the gate, so that a
// message arrives while the turn is inside a known step — no timing involved.
constexpr char kGatedTool[] =
    R"(@tool bash {"command": "while [ ! -f gate ]; do sleep 0.02; done; echo through"})";

class Steering : public AgentLoop {
 protected:
  // Waits until the turn's gated command runs, returns its sandbox.
  std::string WaitInsideTheGate(const std::string& session, const std::string& turn) {
    auto started = WaitForEvents(
        kTenantA, session,
        [&](const std::vector<v1::Event>& events) {
          return !OfKind(events, turn, v1::Event::kSandboxAttached).empty() &&
                 !OfKind(events, turn, v1::Event::kToolCall).empty();
        },
        "the gated tool call", absl::Seconds(60));
    EXPECT_TRUE(started.ok()) << started.status();
    if (!started.ok()) return "";
    return OfKind(*started, turn, v1::Event::kSandboxAttached)[0].sandbox_attached().sandbox_id();
  }
};

// A message sent with STEER while a turn runs joins that turn and reaches the model at
// the next step boundary, after the tool results: the next step answers it, inside the
// same turn, and clients see it in order as MessageAppended.
TEST_F(Steering, AMessageSteersTheRunningTurnAtItsNextStep) {
  ASSERT_NO_FATAL_FAILURE(Start());
  const std::string session = CreateSessionWith(kTenantA, WithTools({"bash"}));
  absl::StatusOr<std::string> turn =
      SubmitTurn(kTenantA, session, absl::StrCat("@say working\n", kGatedTool, "\n@say never"));
  ASSERT_TRUE(turn.ok()) << turn.status();
  const std::string sandbox = WaitInsideTheGate(session, *turn);
  ASSERT_FALSE(sandbox.empty());

  v1::SendMessageResponse steered;
  grpc::Status status =
      Submit(kTenantA, session, "@say steered!", &steered, {.policy = v1::MULTITASK_POLICY_STEER});
  ASSERT_TRUE(status.ok()) << Describe(status);
  EXPECT_EQ(steered.turn().id(), *turn);
  EXPECT_EQ(steered.message().turn_id(), *turn);
  ExecIn(sandbox, "touch gate");

  absl::StatusOr<v1::Turn> ended = WaitForTurnEnd(kTenantA, session, *turn);
  ASSERT_TRUE(ended.ok()) << ended.status();
  EXPECT_EQ(ended->status(), v1::TURN_STATUS_SUCCEEDED) << ended->error().message();
  absl::StatusOr<std::vector<v1::Event>> events = ReadSessionEvents(kTenantA, session);
  ASSERT_TRUE(events.ok()) << events.status();
  EXPECT_EQ(TextOf(*events, *turn), "workingsteered!");
  std::vector<v1::Event> appended = OfKind(*events, *turn, v1::Event::kMessageAppended);
  ASSERT_EQ(appended.size(), 1u);
  EXPECT_EQ(appended[0].message_appended().message().id(), steered.message().id());
  EXPECT_GT(appended[0].seq(), OfKind(*events, *turn, v1::Event::kToolResult)[0].seq());
  EXPECT_LT(appended[0].seq(), OfKind(*events, *turn, v1::Event::kStepCompleted)[1].seq());

  absl::StatusOr<std::vector<v1::Turn>> turns = ListTurns(kTenantA, session);
  ASSERT_TRUE(turns.ok()) << turns.status();
  EXPECT_EQ(turns->size(), 1u);
  absl::StatusOr<std::vector<v1::Message>> messages = ListMessages(kTenantA, session);
  ASSERT_TRUE(messages.ok()) << messages.status();
  std::vector<v1::Role> roles;
  for (const v1::Message& m : *messages) roles.push_back(m.role());
  const std::vector<v1::Role> expected = {v1::ROLE_USER, v1::ROLE_ASSISTANT, v1::ROLE_TOOL,
                                          v1::ROLE_USER, v1::ROLE_ASSISTANT};
  EXPECT_EQ(roles, expected);
}

// A steering message the turn never reaches a step boundary for (here the turn ends at
// its step limit) is not lost: it starts the next turn, which answers it.
TEST_F(Steering, AMessageTheTurnCannotTakeStartsTheNextTurn) {
  ASSERT_NO_FATAL_FAILURE(Start());
  v1::AgentConfig config = WithTools({"bash"});
  config.set_max_steps(1);
  const std::string session = CreateSessionWith(kTenantA, config);
  absl::StatusOr<std::string> turn = SubmitTurn(kTenantA, session, kGatedTool);
  ASSERT_TRUE(turn.ok()) << turn.status();
  const std::string sandbox = WaitInsideTheGate(session, *turn);
  ASSERT_FALSE(sandbox.empty());
  v1::SendMessageResponse steered;
  grpc::Status status =
      Submit(kTenantA, session, "@say next", &steered, {.policy = v1::MULTITASK_POLICY_STEER});
  ASSERT_TRUE(status.ok()) << Describe(status);
  EXPECT_EQ(steered.turn().id(), *turn);
  ExecIn(sandbox, "touch gate");

  absl::StatusOr<v1::Turn> first = WaitForTurnEnd(kTenantA, session, *turn);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->finish_reason(), v1::FINISH_REASON_MAX_STEPS);
  absl::StatusOr<std::vector<v1::Turn>> turns;
  ASSERT_TRUE(WaitUntil(
      [&] {
        turns = ListTurns(kTenantA, session);
        return turns.ok() && turns->size() == 2 && IsTerminal((*turns)[1].status());
      },
      absl::Seconds(60)));
  const v1::Turn& next = (*turns)[1];
  EXPECT_EQ(next.user_message_id(), steered.message().id());
  EXPECT_EQ(next.status(), v1::TURN_STATUS_SUCCEEDED);
  ASSERT_TRUE(WaitForTurnEnd(kTenantA, session, next.id()).ok());
  absl::StatusOr<std::vector<v1::Event>> events = ReadSessionEvents(kTenantA, session);
  ASSERT_TRUE(events.ok()) << events.status();
  EXPECT_EQ(TextOf(*events, next.id()), "next");
  absl::StatusOr<std::vector<v1::Message>> messages = ListMessages(kTenantA, session);
  ASSERT_TRUE(messages.ok()) << messages.status();
  for (const v1::Message& m : *messages) {
    if (m.id() == steered.message().id()) {
      EXPECT_EQ(m.turn_id(), next.id());
    }
  }
}

}  // namespace
}  // namespace parley::session::testing
