// The model providers against fake servers that speak the real wire formats: OpenAI
// chat-completions chunks and Anthropic Messages events over SSE, through real HTTP
// (libcurl to a loopback server). Also the SSE parser on its own and the providers file.
#include <curl/curl.h>
#include <gtest/gtest.h>

#include <atomic>
#include <nlohmann/json.hpp>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "session-svc/model/anthropic.h"
#include "session-svc/model/http_stream.h"
#include "session-svc/model/openai.h"
#include "session-svc/model/provider_config.h"
#include "session-svc/model/sse.h"
#include "tests/runtime/fake_model_server.h"

namespace parley::session::model {
namespace {

using nlohmann::json;
using parley::testing::FakeModelServer;
using parley::testing::FakeResponse;

constexpr char kKey[] = "sk-test-5ecret-key-never-shown";

// Records what a provider streams.
class RecordingSink final : public StepSink {
 public:
  absl::Status Text(absl::string_view text) override {
    if (stopping()) return absl::CancelledError("stop");
    absl::StrAppend(&text_, text);
    ++text_pieces_;
    return absl::OkStatus();
  }
  absl::Status Reasoning(absl::string_view text) override {
    absl::StrAppend(&reasoning_, text);
    return absl::OkStatus();
  }
  absl::Status ReasoningMetadata(const std::string& key, const std::string& value) override {
    metadata_[key] = value;
    return absl::OkStatus();
  }
  absl::Status ToolCall(v1::ToolCall call) override {
    calls_.push_back(std::move(call));
    return absl::OkStatus();
  }
  absl::Status Flush() override {
    ++flushes_;
    return absl::OkStatus();
  }
  bool WaitFor(absl::Duration duration) override { return control_.WaitFor(duration); }
  bool stopping() const override { return control_.stopping(); }
  std::unique_ptr<StopHook> OnStop(std::function<void()> hook) override {
    return control_.OnStop(std::move(hook));
  }

  TurnControl control_;
  std::string text_, reasoning_;
  std::atomic<int> text_pieces_{0};  // Read by the test's stopper thread.
  int flushes_ = 0;
  std::vector<v1::ToolCall> calls_;
  std::map<std::string, std::string> metadata_;
};

std::string Data(const json& chunk) { return absl::StrCat("data: ", chunk.dump(), "\n\n"); }

json TextChunk(const std::string& text) {
  return {
      {"id", "c1"},
      {"object", "chat.completion.chunk"},
      {"model", "gpt-test-2025"},
      {"choices", {{{"index", 0}, {"delta", {{"content", text}}}, {"finish_reason", nullptr}}}}};
}

json FinishChunk(const std::string& reason) {
  return {{"choices", {{{"index", 0}, {"delta", json::object()}, {"finish_reason", reason}}}}};
}

json UsageChunk(int prompt, int cached, int completion) {
  return {{"choices", json::array()},
          {"usage",
           {{"prompt_tokens", prompt},
            {"completion_tokens", completion},
            {"prompt_tokens_details", {{"cached_tokens", cached}}}}}};
}

ModelRequest Hello() {
  ModelRequest request;
  request.model = "gpt-test";
  request.system_prompt = "Be brief.";
  v1::Message user;
  user.set_role(v1::ROLE_USER);
  user.add_parts()->set_text("hello");
  request.messages.push_back(user);
  request.turn_id = "turn_1";
  return request;
}

class Providers : public ::testing::Test {
 protected:
  void SetUp() override {
    auto server = FakeModelServer::Start();
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }
  ProviderConfig Config(const std::string& kind) {
    return ProviderConfig{.name = "fake",
                          .kind = kind,
                          .base_url = server_->base_url(),
                          .api_key = kKey,
                          .default_model = "gpt-test",
                          .idle_timeout = absl::Seconds(30)};
  }
  std::unique_ptr<FakeModelServer> server_;
};

// ---- OpenAI ----

TEST_F(Providers, OpenAiStreamsTextAndUsageAndSendsAWellFormedRequest) {
  server_->Enqueue(
      {.chunks = {Data(TextChunk("Hel")), Data(TextChunk("lo!")), Data(FinishChunk("stop")),
                  Data(UsageChunk(120, 100, 7)), "data: [DONE]\n\n"}});
  OpenAiProvider provider(Config("openai"));
  RecordingSink sink;
  StepOutcome outcome = provider.Stream(Hello(), sink);
  ASSERT_FALSE(outcome.error) << outcome.error->message;
  EXPECT_EQ(sink.text_, "Hello!");
  EXPECT_EQ(sink.text_pieces_, 2);
  EXPECT_EQ(outcome.finish_reason, v1::FINISH_REASON_STOP);
  EXPECT_EQ(outcome.usage.input_tokens(), 20u);
  EXPECT_EQ(outcome.usage.cache_read_tokens(), 100u);
  EXPECT_EQ(outcome.usage.output_tokens(), 7u);
  EXPECT_EQ(outcome.response_model, "gpt-test-2025");

  const std::vector<parley::testing::RecordedRequest> requests = server_->requests();
  ASSERT_EQ(requests.size(), 1u);
  const auto& request = requests[0];
  EXPECT_EQ(request.path, "/chat/completions");
  EXPECT_EQ(request.headers.at("authorization"), absl::StrCat("Bearer ", kKey));
  json body = json::parse(request.body);
  EXPECT_EQ(body["model"], "gpt-test");
  EXPECT_EQ(body["stream"], true);
  EXPECT_EQ(body["stream_options"]["include_usage"], true);
  EXPECT_EQ(body["messages"],
            json::parse(
                R"([{"role":"system","content":"Be brief."},{"role":"user","content":"hello"}])"));
}

// Two parallel calls whose ids, names and argument pieces arrive interleaved across
// chunks: the sink gets each call once, complete, in index order.
TEST_F(Providers, OpenAiAssemblesParallelToolCallsSplitAcrossChunks) {
  auto piece = [](int index, json function, const char* id = nullptr) {
    json call = {{"index", index}, {"function", std::move(function)}};
    if (id != nullptr) {
      call["id"] = id;
      call["type"] = "function";
    }
    return Data({{"choices", {{{"index", 0}, {"delta", {{"tool_calls", {call}}}}}}}});
  };
  server_->Enqueue({.chunks = {piece(0, {{"name", "read_file"}, {"arguments", ""}}, "call_a"),
                               piece(0, {{"arguments", "{\"pa"}}),
                               piece(1, {{"name", "bash"}, {"arguments", "{\"comm"}}, "call_b"),
                               piece(0, {{"arguments", "th\": \"a.txt\"}"}}),
                               piece(1, {{"arguments", "and\": \"ls\"}"}}),
                               Data(FinishChunk("tool_calls")), "data: [DONE]\n\n"}});
  OpenAiProvider provider(Config("openai"));
  RecordingSink sink;
  StepOutcome outcome = provider.Stream(Hello(), sink);
  ASSERT_FALSE(outcome.error) << outcome.error->message;
  EXPECT_EQ(outcome.finish_reason, v1::FINISH_REASON_TOOL_CALLS);
  ASSERT_EQ(sink.calls_.size(), 2u);
  EXPECT_EQ(sink.calls_[0].call_id(), "call_a");
  EXPECT_EQ(sink.calls_[0].name(), "read_file");
  EXPECT_EQ(sink.calls_[0].arguments_json(), R"({"path": "a.txt"})");
  EXPECT_EQ(sink.calls_[1].call_id(), "call_b");
  EXPECT_EQ(sink.calls_[1].arguments_json(), R"({"command": "ls"})");
}

// History with a tool round trip goes out as assistant tool_calls and tool messages;
// tools go out as functions with their schemas; options map to their fields.
TEST_F(Providers, OpenAiSendsToolRoundTripsToolsAndOptions) {
  server_->Enqueue(
      {.chunks = {Data(TextChunk("ok")), Data(FinishChunk("stop")), "data: [DONE]\n\n"}});
  ModelRequest request = Hello();
  v1::Message assistant;
  assistant.set_role(v1::ROLE_ASSISTANT);
  assistant.add_parts()->set_reasoning("thinking that is not sent back");
  v1::ToolCall* call = assistant.add_parts()->mutable_tool_call();
  call->set_call_id("call_1");
  call->set_name("bash");
  call->set_arguments_json(R"({"command":"ls"})");
  v1::Message tool;
  tool.set_role(v1::ROLE_TOOL);
  tool.add_parts()->mutable_tool_result()->set_call_id("call_1");
  tool.mutable_parts(0)->mutable_tool_result()->set_output("a.txt\n");
  request.messages.push_back(assistant);
  request.messages.push_back(tool);
  request.tools.push_back({"bash", "Run bash", R"({"type":"object"})"});
  request.max_output_tokens = 64;
  request.temperature = 0.5;
  request.options = {{"reasoning_effort", "low"}, {"max_tokens_field", "max_completion_tokens"}};
  OpenAiProvider provider(Config("openai"));
  ASSERT_TRUE(provider.CheckConfig("gpt-test", request.options).ok());
  RecordingSink sink;
  StepOutcome outcome = provider.Stream(request, sink);
  ASSERT_FALSE(outcome.error) << outcome.error->message;
  json body = json::parse(server_->requests()[0].body);
  EXPECT_EQ(body["messages"][2],
            json::parse(R"({"role":"assistant","content":null,"tool_calls":[{"id":"call_1",
              "type":"function","function":{"name":"bash","arguments":"{\"command\":\"ls\"}"}}]})"));
  EXPECT_EQ(body["messages"][3],
            json::parse(R"({"role":"tool","tool_call_id":"call_1","content":"a.txt\n"})"));
  EXPECT_EQ(body["tools"][0]["function"]["name"], "bash");
  EXPECT_EQ(body["tools"][0]["function"]["parameters"], json::parse(R"({"type":"object"})"));
  EXPECT_EQ(body["max_completion_tokens"], 64);
  EXPECT_FALSE(body.contains("max_tokens"));
  EXPECT_EQ(body["temperature"], 0.5);
  EXPECT_EQ(body["reasoning_effort"], "low");
}

TEST_F(Providers, OpenAiRefusesUnknownOptionsAndModelsNotOffered) {
  ProviderConfig config = Config("openai");
  config.models = {"gpt-test", "gpt-big"};
  OpenAiProvider provider(config);
  EXPECT_TRUE(provider.CheckConfig("gpt-big", {}).ok());
  absl::Status model = provider.CheckConfig("gpt-other", {});
  EXPECT_EQ(model.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(model.message(), "gpt-big")) << model;
  absl::Status option = provider.CheckConfig("gpt-test", {{"temprature", "1"}});
  EXPECT_EQ(option.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(option.message(), "temprature")) << option;
  EXPECT_FALSE(provider.CheckConfig("gpt-test", {{"reasoning_effort", "extreme"}}).ok());
}

TEST_F(Providers, OpenAiReadsReasoningFromEitherField) {
  json a = {{"choices", {{{"index", 0}, {"delta", {{"reasoning_content", "think "}}}}}}};
  json b = {{"choices", {{{"index", 0}, {"delta", {{"reasoning", "more"}}}}}}};
  server_->Enqueue({.chunks = {Data(a), Data(b), Data(TextChunk("answer")),
                               Data(FinishChunk("stop")), "data: [DONE]\n\n"}});
  OpenAiProvider provider(Config("openai"));
  RecordingSink sink;
  StepOutcome outcome = provider.Stream(Hello(), sink);
  ASSERT_FALSE(outcome.error) << outcome.error->message;
  EXPECT_EQ(sink.reasoning_, "think more");
  EXPECT_EQ(sink.text_, "answer");
}

// A 429 as every provider must report it: retryable, with the server's delay and words.
void ExpectRateLimited(const StepOutcome& outcome, absl::Duration retry_after,
                       const std::string& words) {
  ASSERT_TRUE(outcome.error);
  EXPECT_EQ(outcome.error->status_code, 429);
  EXPECT_TRUE(outcome.error->retryable);
  ASSERT_TRUE(outcome.error->retry_after);
  EXPECT_EQ(*outcome.error->retry_after, retry_after);
  EXPECT_TRUE(absl::StrContains(outcome.error->message, words)) << outcome.error->message;
  EXPECT_EQ(outcome.error->reason, "rate limited (429)");
}

TEST_F(Providers, OpenAiRateLimitIsRetryableWithItsRetryAfter) {
  server_->Enqueue({.status = 429,
                    .headers = {{"Retry-After", "2"}},
                    .chunks = {R"({"error":{"message":"Rate limit reached","type":"requests"}})"}});
  OpenAiProvider provider(Config("openai"));
  RecordingSink sink;
  ExpectRateLimited(provider.Stream(Hello(), sink), absl::Seconds(2), "Rate limit reached");
}

// A server that echoes the request's credentials in its error never gets them shown.
TEST_F(Providers, TheKeyNeverAppearsInAnError) {
  server_->Enqueue({.status = 401,
                    .chunks = {absl::StrCat(R"({"error":{"message":"Incorrect API key provided: )",
                                            kKey, R"("}})")}});
  OpenAiProvider provider(Config("openai"));
  RecordingSink sink;
  StepOutcome outcome = provider.Stream(Hello(), sink);
  ASSERT_TRUE(outcome.error);
  EXPECT_FALSE(outcome.error->retryable);
  EXPECT_FALSE(absl::StrContains(outcome.error->message, kKey)) << outcome.error->message;
  EXPECT_TRUE(absl::StrContains(outcome.error->message, "[REDACTED]")) << outcome.error->message;
}

// A server that echoes the key inside the stream (an error event after content): the
// retryable failure's message and its RetryScheduled reason are both redacted.
TEST_F(Providers, AKeyEchoedInsideTheStreamIsRedactedFromTheRetryReasonToo) {
  server_->Enqueue(
      {.chunks = {
           Data(TextChunk("partial ")),
           Data({{"error",
                  {{"message", absl::StrCat("upstream saw key ", kKey)}, {"code", 500}}}})}});
  OpenAiProvider provider(Config("openai"));
  RecordingSink sink;
  StepOutcome outcome = provider.Stream(Hello(), sink);
  ASSERT_TRUE(outcome.error);
  EXPECT_FALSE(absl::StrContains(outcome.error->message, kKey)) << outcome.error->message;
  EXPECT_FALSE(absl::StrContains(outcome.error->reason, kKey)) << outcome.error->reason;
}

// Content, then an error in the stream (a 500 after content): the text is delivered once
// and the step fails retryably; the agent loop does not retry a step that streamed.
TEST_F(Providers, OpenAiErrorAfterContentFailsTheStepAfterTheText) {
  server_->Enqueue({.chunks = {Data(TextChunk("partial ")),
                               Data({{"error", {{"message", "internal error"}, {"code", 500}}}})}});
  OpenAiProvider provider(Config("openai"));
  RecordingSink sink;
  StepOutcome outcome = provider.Stream(Hello(), sink);
  ASSERT_TRUE(outcome.error);
  EXPECT_TRUE(outcome.error->retryable);
  EXPECT_TRUE(absl::StrContains(outcome.error->message, "internal error"));
  EXPECT_EQ(sink.text_, "partial ");
}

// How every provider reports a broken stream after `partial` (which streams
// `partial_text`): a malformed event next is a clear, final error that keeps the text
// before it; a body that ends cleanly before the model finished, a connection dropped
// inside the chunked body and a reset are retryable transport failures.
void ExpectBrokenStreamsAreClearErrors(FakeModelServer& server, ModelProvider& provider,
                                       const std::vector<std::string>& partial,
                                       const std::string& malformed_event,
                                       const std::string& partial_text) {
  {
    std::vector<std::string> chunks = partial;
    chunks.push_back(malformed_event);
    server.Enqueue({.chunks = chunks});
    RecordingSink sink;
    StepOutcome outcome = provider.Stream(Hello(), sink);
    ASSERT_TRUE(outcome.error);
    EXPECT_FALSE(outcome.error->retryable);
    EXPECT_TRUE(absl::StrContains(outcome.error->message, "malformed stream"))
        << outcome.error->message;
    EXPECT_EQ(sink.text_, partial_text) << "what streamed before the bad event stays";
  }
  for (FakeResponse::End end :
       {FakeResponse::End::kClean, FakeResponse::End::kTruncated, FakeResponse::End::kReset}) {
    SCOPED_TRACE(static_cast<int>(end));
    server.Enqueue({.chunks = partial, .end = end});
    RecordingSink sink;
    StepOutcome outcome = provider.Stream(Hello(), sink);
    ASSERT_TRUE(outcome.error);
    EXPECT_TRUE(outcome.error->retryable) << outcome.error->message;
    EXPECT_EQ(outcome.error->status_code, 0);
    if (end == FakeResponse::End::kClean) {
      EXPECT_TRUE(absl::StrContains(outcome.error->message, "ended before the model finished"))
          << outcome.error->message;
    }
  }
}

TEST_F(Providers, OpenAiMalformedTruncatedAndResetStreamsAreClearErrors) {
  OpenAiProvider provider(Config("openai"));
  ExpectBrokenStreamsAreClearErrors(*server_, provider, {Data(TextChunk("a"))},
                                    "data: {not json\n\n", "a");
  {  // Nothing listens.
    ProviderConfig config = Config("openai");
    config.base_url = "http://127.0.0.1:1";
    OpenAiProvider nowhere(config);
    RecordingSink sink;
    StepOutcome outcome = nowhere.Stream(Hello(), sink);
    ASSERT_TRUE(outcome.error);
    EXPECT_TRUE(outcome.error->retryable);
  }
}

// What a retry may cure is retried, what it cannot is not: an HTTP/2 stream reset (a
// proxy restarting, a server shedding load) is transient; a URL curl cannot parse is not.
// ---- Body capture (the chat span's opt-in request/response attributes) ----

// The request and the streamed response are captured as sent and received, with the
// key gone from the headers, from JSON fields that name a credential, and from any
// text where it appears verbatim or where something merely looks like a key.
TEST_F(Providers, CaptureKeepsBodiesAndRedactsEveryCredential) {
  const std::string other_key = "sk-ant-api03-AbCdEfGhIjKlMnOpQrStUv";
  server_->Enqueue({.chunks = {Data(TextChunk("Hel")), Data(TextChunk("lo!")),
                               Data({{"choices", json::array()},
                                     {"api_key", "whatever-the-value"},
                                     {"echo", absl::StrCat("you sent ", kKey)}}),
                               Data(FinishChunk("stop")), "data: [DONE]\n\n"}});
  OpenAiProvider provider(Config("openai"));
  RecordingSink sink;
  ModelRequest request = Hello();
  request.messages[0].mutable_parts(0)->set_text(absl::StrCat("my key is ", other_key));
  BodyCapture capture(16 << 10);
  request.capture = &capture;
  StepOutcome outcome = provider.Stream(request, sink);
  ASSERT_FALSE(outcome.error) << outcome.error->message;
  EXPECT_EQ(sink.text_, "Hello!");  // Capturing changes nothing of the step.

  EXPECT_TRUE(absl::StrContains(capture.request_headers, "Authorization: [REDACTED]"))
      << capture.request_headers;
  EXPECT_TRUE(absl::StrContains(capture.request_headers, "Content-Type: application/json"));
  json body = json::parse(capture.request_body);
  EXPECT_EQ(body["model"], "gpt-test");
  EXPECT_EQ(body["messages"][1]["content"], "my key is [REDACTED]");
  EXPECT_FALSE(capture.request_truncated);
  EXPECT_TRUE(absl::StrContains(capture.response_body, R"("content":"Hel")"))
      << capture.response_body;
  EXPECT_TRUE(absl::StrContains(capture.response_body, R"("api_key":"[REDACTED]")"))
      << capture.response_body;
  EXPECT_TRUE(absl::StrContains(capture.response_body, "data: [DONE]"));
  for (const std::string* text :
       {&capture.request_headers, &capture.request_body, &capture.response_body}) {
    EXPECT_FALSE(absl::StrContains(*text, kKey)) << *text;
    EXPECT_FALSE(absl::StrContains(*text, other_key)) << *text;
    EXPECT_FALSE(absl::StrContains(*text, "whatever-the-value")) << *text;
  }
}

// An error answer is captured as the response; each body stops at the cap.
TEST_F(Providers, CaptureTakesTheErrorBodyAndCutsAtTheCap) {
  server_->Enqueue(
      {.status = 401,
       .chunks = {absl::StrCat(R"({"error":{"message":"Incorrect API key provided: )", kKey,
                               R"(", "padding":")", std::string(500, 'p'), R"("}})")}});
  AnthropicProvider provider(Config("anthropic"));
  RecordingSink sink;
  ModelRequest request = Hello();
  request.model = "claude-test";
  BodyCapture capture(64);
  request.capture = &capture;
  StepOutcome outcome = provider.Stream(request, sink);
  ASSERT_TRUE(outcome.error);
  EXPECT_TRUE(absl::StrContains(capture.request_headers, "x-api-key: [REDACTED]"))
      << capture.request_headers;
  EXPECT_TRUE(absl::StrContains(capture.request_headers, "anthropic-version: 2023-06-01"));
  EXPECT_FALSE(absl::StrContains(capture.request_headers, kKey));
  EXPECT_EQ(capture.request_body.size(), 64u);
  EXPECT_TRUE(capture.request_truncated);
  EXPECT_EQ(capture.response_body.size(), 64u);
  EXPECT_TRUE(capture.response_truncated);
  EXPECT_TRUE(absl::StartsWith(capture.response_body,
                               R"({"error":{"message":"Incorrect API key provided: [REDACTED])"))
      << capture.response_body;
}

TEST(HttpStream, HttpTwoResetsAreRetryableAndConfigurationErrorsAreNot) {
  EXPECT_TRUE(IsRetryableCurlError(CURLE_HTTP2_STREAM));
  EXPECT_TRUE(IsRetryableCurlError(CURLE_HTTP2));
  EXPECT_TRUE(IsRetryableCurlError(CURLE_RECV_ERROR));
  EXPECT_TRUE(IsRetryableCurlError(CURLE_OPERATION_TIMEDOUT));
  EXPECT_FALSE(IsRetryableCurlError(CURLE_URL_MALFORMAT));
  EXPECT_FALSE(IsRetryableCurlError(CURLE_UNSUPPORTED_PROTOCOL));
  EXPECT_FALSE(IsRetryableCurlError(CURLE_PEER_FAILED_VERIFICATION));

  ProviderConfig config;
  config.name = "misconfigured";
  config.kind = "openai";
  config.base_url = "unknown-scheme://127.0.0.1:1/v1";
  config.default_model = "m";
  OpenAiProvider provider(config);
  RecordingSink sink;
  StepOutcome outcome = provider.Stream(Hello(), sink);
  ASSERT_TRUE(outcome.error);
  EXPECT_FALSE(outcome.error->retryable) << outcome.error->message;
}

// A model that stalls mid-stream: a stop request ends the request at once (the client
// closes its connection), without waiting for the idle timeout.
TEST_F(Providers, AStopEndsAStalledStreamAtOnce) {
  server_->Enqueue(
      {.chunks = {Data(TextChunk("before the stall"))}, .end = FakeResponse::End::kStall});
  OpenAiProvider provider(Config("openai"));
  RecordingSink sink;
  std::thread stopper([&] {
    while (sink.text_pieces_ == 0) absl::SleepFor(absl::Milliseconds(5));
    sink.control_.Stop(StopReason::kCancelled);
  });
  StepOutcome outcome = provider.Stream(Hello(), sink);
  stopper.join();
  EXPECT_EQ(sink.text_, "before the stall");
  EXPECT_FALSE(outcome.error);
  // The server sees the client leave.
  for (int i = 0; i < 200 && !server_->stalled_client_left(); ++i) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_TRUE(server_->stalled_client_left());
}

// ---- Anthropic ----

std::string Event(const std::string& type, json data) {
  data["type"] = type;
  return absl::StrCat("event: ", type, "\ndata: ", data.dump(), "\n\n");
}

TEST_F(Providers, AnthropicStreamsThinkingTextAndAToolCallWithCacheUsage) {
  server_->Enqueue(
      {.chunks = {
           Event("message_start", {{"message",
                                    {{"id", "msg_1"},
                                     {"model", "claude-test-2025"},
                                     {"usage",
                                      {{"input_tokens", 12},
                                       {"cache_read_input_tokens", 300},
                                       {"cache_creation_input_tokens", 40},
                                       {"output_tokens", 1}}}}}}),
           Event("content_block_start",
                 {{"index", 0}, {"content_block", {{"type", "thinking"}, {"thinking", ""}}}}),
           Event("content_block_delta",
                 {{"index", 0},
                  {"delta", {{"type", "thinking_delta"}, {"thinking", "Let me see."}}}}),
           Event("content_block_delta",
                 {{"index", 0}, {"delta", {{"type", "signature_delta"}, {"signature", "sig=="}}}}),
           Event("content_block_stop", {{"index", 0}}), Event("ping", json::object()),
           Event("content_block_start",
                 {{"index", 1}, {"content_block", {{"type", "text"}, {"text", ""}}}}),
           Event("content_block_delta",
                 {{"index", 1}, {"delta", {{"type", "text_delta"}, {"text", "Checking "}}}}),
           Event("content_block_delta",
                 {{"index", 1}, {"delta", {{"type", "text_delta"}, {"text", "now."}}}}),
           Event("content_block_stop", {{"index", 1}}),
           Event("content_block_start", {{"index", 2},
                                         {"content_block",
                                          {{"type", "tool_use"},
                                           {"id", "toolu_1"},
                                           {"name", "bash"},
                                           {"input", json::object()}}}}),
           Event("content_block_delta",
                 {{"index", 2},
                  {"delta", {{"type", "input_json_delta"}, {"partial_json", "{\"comm"}}}}),
           Event("content_block_delta",
                 {{"index", 2},
                  {"delta", {{"type", "input_json_delta"}, {"partial_json", "and\": \"ls\"}"}}}}),
           Event("content_block_stop", {{"index", 2}}),
           Event("message_delta",
                 {{"delta", {{"stop_reason", "tool_use"}}}, {"usage", {{"output_tokens", 42}}}}),
           Event("message_stop", json::object())}});
  AnthropicProvider provider(Config("anthropic"));
  RecordingSink sink;
  ModelRequest request = Hello();
  request.tools.push_back({"bash", "Run bash", R"({"type":"object"})"});
  StepOutcome outcome = provider.Stream(request, sink);
  ASSERT_FALSE(outcome.error) << outcome.error->message;
  EXPECT_EQ(sink.reasoning_, "Let me see.");
  EXPECT_EQ(sink.metadata_[AnthropicProvider::kSignatureKey], "sig==");
  EXPECT_EQ(sink.text_, "Checking now.");
  ASSERT_EQ(sink.calls_.size(), 1u);
  EXPECT_EQ(sink.calls_[0].call_id(), "toolu_1");
  EXPECT_EQ(sink.calls_[0].arguments_json(), R"({"command": "ls"})");
  EXPECT_EQ(outcome.finish_reason, v1::FINISH_REASON_TOOL_CALLS);
  EXPECT_EQ(outcome.usage.input_tokens(), 12u);
  EXPECT_EQ(outcome.usage.cache_read_tokens(), 300u);
  EXPECT_EQ(outcome.usage.cache_write_tokens(), 40u);
  EXPECT_EQ(outcome.usage.output_tokens(), 42u);
  EXPECT_EQ(outcome.response_model, "claude-test-2025");

  const std::vector<parley::testing::RecordedRequest> requests = server_->requests();
  ASSERT_EQ(requests.size(), 1u);
  const auto& sent = requests[0];
  EXPECT_EQ(sent.path, "/v1/messages");
  EXPECT_EQ(sent.headers.at("x-api-key"), kKey);
  EXPECT_EQ(sent.headers.at("anthropic-version"), "2023-06-01");
  json body = json::parse(sent.body);
  EXPECT_EQ(body["system"], "Be brief.");
  EXPECT_EQ(body["max_tokens"], 4096);
  EXPECT_EQ(body["stream"], true);
  EXPECT_EQ(body["tools"][0]["input_schema"], json::parse(R"({"type":"object"})"));
}

// Roles alternate (tool results travel in a user message, merged with a following
// user message), and signed thinking goes back with its signature.
TEST_F(Providers, AnthropicSendsAStrictlyAlternatingConversation) {
  server_->Enqueue(
      {.chunks = {Event("message_start", {{"message", {{"usage", {{"input_tokens", 1}}}}}}),
                  Event("message_delta", {{"delta", {{"stop_reason", "end_turn"}}}}),
                  Event("message_stop", json::object())}});
  ModelRequest request = Hello();
  v1::Message assistant;
  assistant.set_role(v1::ROLE_ASSISTANT);
  v1::Part* thinking = assistant.add_parts();
  thinking->set_reasoning("I should list.");
  (*thinking->mutable_provider_metadata())[AnthropicProvider::kSignatureKey] = "sig==";
  v1::ToolCall* call = assistant.add_parts()->mutable_tool_call();
  call->set_call_id("toolu_1");
  call->set_name("bash");
  call->set_arguments_json(R"({"command":"ls"})");
  v1::Message tool;
  tool.set_role(v1::ROLE_TOOL);
  v1::ToolResult* result = tool.add_parts()->mutable_tool_result();
  result->set_call_id("toolu_1");
  result->set_output("a.txt");
  v1::Message again;
  again.set_role(v1::ROLE_USER);
  again.add_parts()->set_text("and now?");
  request.messages.push_back(assistant);
  request.messages.push_back(tool);
  request.messages.push_back(again);
  AnthropicProvider provider(Config("anthropic"));
  RecordingSink sink;
  StepOutcome outcome = provider.Stream(request, sink);
  ASSERT_FALSE(outcome.error) << outcome.error->message;
  json messages = json::parse(server_->requests()[0].body)["messages"];
  ASSERT_EQ(messages.size(), 3u);
  EXPECT_EQ(messages[0]["role"], "user");
  EXPECT_EQ(messages[1]["role"], "assistant");
  EXPECT_EQ(messages[1]["content"][0],
            json::parse(R"({"type":"thinking","thinking":"I should list.","signature":"sig=="})"));
  EXPECT_EQ(
      messages[1]["content"][1],
      json::parse(R"({"type":"tool_use","id":"toolu_1","name":"bash","input":{"command":"ls"}})"));
  EXPECT_EQ(messages[2]["role"], "user");
  EXPECT_EQ(
      messages[2]["content"][0],
      json::parse(
          R"({"type":"tool_result","tool_use_id":"toolu_1","content":"a.txt","is_error":false})"));
  EXPECT_EQ(messages[2]["content"][1], json::parse(R"({"type":"text","text":"and now?"})"));
}

TEST_F(Providers, AnthropicOverloadIsRetryableInTheStreamAndAsAStatus) {
  AnthropicProvider provider(Config("anthropic"));
  {
    server_->Enqueue(
        {.chunks = {Event(
             "error", {{"error", {{"type", "overloaded_error"}, {"message", "Overloaded"}}}})}});
    RecordingSink sink;
    StepOutcome outcome = provider.Stream(Hello(), sink);
    ASSERT_TRUE(outcome.error);
    EXPECT_TRUE(outcome.error->retryable);
    EXPECT_TRUE(absl::StrContains(outcome.error->message, "Overloaded"));
  }
  {
    server_->Enqueue(
        {.status = 529,
         .chunks = {
             R"({"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}})"}});
    RecordingSink sink;
    StepOutcome outcome = provider.Stream(Hello(), sink);
    ASSERT_TRUE(outcome.error);
    EXPECT_EQ(outcome.error->status_code, 529);
    EXPECT_TRUE(outcome.error->retryable);
  }
}

// Parallel tool use: one message holds a text block and then two tool_use blocks, one
// after the other (each block starts, streams its partial JSON and stops before the
// next starts); they come out as two calls in block order.
TEST_F(Providers, AnthropicStreamsParallelToolUsesAsSeparateCalls) {
  auto tool_start = [](int index, const std::string& id, const std::string& name) {
    return Event("content_block_start",
                 {{"index", index},
                  {"content_block",
                   {{"type", "tool_use"}, {"id", id}, {"name", name}, {"input", json::object()}}}});
  };
  auto json_delta = [](int index, const std::string& piece) {
    return Event(
        "content_block_delta",
        {{"index", index}, {"delta", {{"type", "input_json_delta"}, {"partial_json", piece}}}});
  };
  server_->Enqueue(
      {.chunks = {Event("message_start", {{"message", {{"usage", {{"input_tokens", 5}}}}}}),
                  Event("content_block_start",
                        {{"index", 0}, {"content_block", {{"type", "text"}, {"text", ""}}}}),
                  Event("content_block_delta",
                        {{"index", 0}, {"delta", {{"type", "text_delta"}, {"text", "Both."}}}}),
                  Event("content_block_stop", {{"index", 0}}),
                  tool_start(1, "toolu_a", "read_file"), json_delta(1, "{\"path\": "),
                  json_delta(1, "\"a.txt\"}"), Event("content_block_stop", {{"index", 1}}),
                  tool_start(2, "toolu_b", "list_files"), json_delta(2, "{\"path\""),
                  json_delta(2, ": \".\"}"), Event("content_block_stop", {{"index", 2}}),
                  Event("message_delta", {{"delta", {{"stop_reason", "tool_use"}}},
                                          {"usage", {{"output_tokens", 9}}}}),
                  Event("message_stop", json::object())}});
  AnthropicProvider provider(Config("anthropic"));
  RecordingSink sink;
  StepOutcome outcome = provider.Stream(Hello(), sink);
  ASSERT_FALSE(outcome.error) << outcome.error->message;
  EXPECT_EQ(sink.text_, "Both.");
  ASSERT_EQ(sink.calls_.size(), 2u);
  EXPECT_EQ(sink.calls_[0].call_id(), "toolu_a");
  EXPECT_EQ(sink.calls_[0].name(), "read_file");
  EXPECT_EQ(json::parse(sink.calls_[0].arguments_json()), json::parse(R"({"path":"a.txt"})"));
  EXPECT_EQ(sink.calls_[1].call_id(), "toolu_b");
  EXPECT_EQ(sink.calls_[1].name(), "list_files");
  EXPECT_EQ(json::parse(sink.calls_[1].arguments_json()), json::parse(R"({"path":"."})"));
  EXPECT_EQ(outcome.finish_reason, v1::FINISH_REASON_TOOL_CALLS);
}

TEST_F(Providers, AnthropicRateLimitIsRetryableWithItsRetryAfter) {
  server_->Enqueue(
      {.status = 429,
       .headers = {{"retry-after", "3"}},
       .chunks = {
           R"({"type":"error","error":{"type":"rate_limit_error","message":"Slow down"}})"}});
  AnthropicProvider provider(Config("anthropic"));
  RecordingSink sink;
  ExpectRateLimited(provider.Stream(Hello(), sink), absl::Seconds(3), "Slow down");
  EXPECT_TRUE(sink.text_.empty());
}

TEST_F(Providers, AnthropicMalformedTruncatedAndResetStreamsAreClearErrors) {
  AnthropicProvider provider(Config("anthropic"));
  const std::string start =
      Event("message_start", {{"message", {{"usage", {{"input_tokens", 1}}}}}});
  const std::string text_start =
      Event("content_block_start", {{"index", 0}, {"content_block", {{"type", "text"}}}});
  const std::string text =
      Event("content_block_delta",
            {{"index", 0}, {"delta", {{"type", "text_delta"}, {"text", "partial"}}}});
  ExpectBrokenStreamsAreClearErrors(*server_, provider, {start, text_start, text},
                                    "event: content_block_delta\ndata: {oops\n\n", "partial");
  {  // An error status with a body that is not Anthropic's error JSON still says what failed.
    server_->Enqueue({.status = 502, .chunks = {"<html>Bad Gateway</html>"}});
    RecordingSink sink;
    StepOutcome outcome = provider.Stream(Hello(), sink);
    ASSERT_TRUE(outcome.error);
    EXPECT_EQ(outcome.error->status_code, 502);
    EXPECT_TRUE(outcome.error->retryable);
    EXPECT_TRUE(absl::StrContains(outcome.error->message, "502")) << outcome.error->message;
  }
}

// ---- SSE ----

std::vector<SseEvent> ParseAll(const std::vector<std::string>& pieces) {
  std::vector<SseEvent> events;
  SseParser parser([&](const SseEvent& e) {
    events.push_back(e);
    return true;
  });
  for (const std::string& piece : pieces) EXPECT_TRUE(parser.Feed(piece).ok());
  EXPECT_FALSE(parser.pending());
  return events;
}

TEST(Sse, ParsesEveryLineEndingCommentsNamesAndMultiLineData) {
  const std::string stream =
      ": keep-alive\r\nevent: delta\r\ndata: one\r\ndata:two\r\n\r\n"
      "data: {\"a\":1}\n\nid: 7\rdata: cr only\r\r"
      "event: empty\n\n";  // No data: not dispatched.
  std::vector<SseEvent> whole = ParseAll({stream});
  ASSERT_EQ(whole.size(), 3u);
  EXPECT_EQ(whole[0].event, "delta");
  EXPECT_EQ(whole[0].data, "one\ntwo");
  EXPECT_EQ(whole[1].event, "");
  EXPECT_EQ(whole[1].data, "{\"a\":1}");
  EXPECT_EQ(whole[2].data, "cr only");
  EXPECT_EQ(whole[2].id, "7");
  // Split at every byte: the same events.
  for (size_t cut = 1; cut < stream.size(); ++cut) {
    std::vector<SseEvent> split = ParseAll({stream.substr(0, cut), stream.substr(cut)});
    ASSERT_EQ(split.size(), 3u) << "cut at " << cut;
    EXPECT_EQ(split[0].data, "one\ntwo") << "cut at " << cut;
    EXPECT_EQ(split[2].data, "cr only") << "cut at " << cut;
  }
}

TEST(Sse, ATruncatedEventIsPendingAndAnEndlessLineIsRefused) {
  SseParser parser([](const SseEvent&) { return true; });
  ASSERT_TRUE(parser.Feed("data: half").ok());
  EXPECT_TRUE(parser.pending());
  SseParser endless([](const SseEvent&) { return true; });
  std::string big(SseParser::kMaxLineBytes / 4, 'x');
  absl::Status status;
  for (int i = 0; i < 5 && status.ok(); ++i) status = endless.Feed(big);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
}

// ---- The providers file ----

TEST(ProvidersFile, ReadsEntriesAndTheirKeysAndNamesWhatIsWrong) {
  auto env = [](const std::string& name) -> std::optional<std::string> {
    if (name == "FAKE_KEY") return std::string(kKey);
    return std::nullopt;
  };
  absl::StatusOr<ProvidersFile> file = ParseProvidersFile(R"({"default": "local",
      "providers": [{"name": "local", "kind": "openai", "base_url": "http://127.0.0.1:8080/v1/",
                     "default_model": "llama"},
                    {"name": "claude", "kind": "anthropic", "base_url": "https://api.anthropic.com",
                     "api_key_env": "FAKE_KEY", "default_model": "claude-x", "models": ["claude-x"]}]})",
                                                          env);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->default_provider, "local");
  ASSERT_EQ(file->providers.size(), 2u);
  EXPECT_EQ(file->providers[0].base_url, "http://127.0.0.1:8080/v1");
  EXPECT_EQ(file->providers[1].api_key, kKey);

  auto error_of = [&](const std::string& text) {
    absl::StatusOr<ProvidersFile> bad = ParseProvidersFile(text, env);
    EXPECT_FALSE(bad.ok());
    return std::string(bad.status().message());
  };
  EXPECT_TRUE(absl::StrContains(
      error_of(R"({"providers": [{"name": "x", "kind": "openai", "base_url": "http://h",
                  "default_model": "m", "api_key_env": "MISSING_KEY"}]})"),
      "MISSING_KEY is not set"));
  EXPECT_TRUE(absl::StrContains(
      error_of(R"({"providers": [{"name": "x", "kind": "gemini", "base_url": "http://h",
                  "default_model": "m"}]})"),
      "providers[0].kind"));
  EXPECT_TRUE(absl::StrContains(
      error_of(R"({"providers": [{"name": "Bad Name", "kind": "openai", "base_url": "http://h",
                  "default_model": "m"}]})"),
      "providers[0].name"));
  EXPECT_TRUE(absl::StrContains(error_of(R"({"default": "nope", "providers": []})"), "default"));
}

}  // namespace
}  // namespace parley::session::model
