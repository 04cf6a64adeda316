// The opt-in capture of provider bodies, end to end: a real parley-session runs a turn
// against FakeModelServer (an OpenAI-compatible API) and exports its spans over OTLP to a
// receiver in this test. With --capture_model_bodies_bytes=N the `chat` span carries the
// request headers and body and the streamed response, with the provider key and the
// Authorization header redacted and a body longer than N cut at N and flagged; without
// the flag (the default) none of those attributes exist.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "tests/runtime/fake_openai.h"
#include "tests/session/session_fixture.h"
#include "tests/telemetry/otlp_receiver.h"

namespace parley::session::testing {
namespace {

using ::parley::testing::FakeModelServer;
using ::parley::testing::FakeOpenAiProvidersFile;
using ::parley::testing::OpenAiAnswer;
using ::parley::testing::OtlpReceiver;
using ::parley::testing::ReceivedSpan;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kKey[] = "sk-capture-0a1b2c3d4e5f-secret";
constexpr size_t kCaptureBytes = 1024;

constexpr const char* kCaptureAttributes[] = {
    "parley.gen_ai.request.headers", "parley.gen_ai.request.body",
    "parley.gen_ai.request.body.truncated", "parley.gen_ai.response.body",
    "parley.gen_ai.response.body.truncated"};

class ChatBodyCapture : public SessionFixture {
 protected:
  // Starts a store and one replica that reaches "fake-openai" with kKey and exports
  // its spans to the receiver, with `flags` added.
  void Start(const std::vector<std::string>& flags) {
    auto receiver = OtlpReceiver::Start();
    ASSERT_TRUE(receiver.ok()) << receiver.status();
    receiver_ = *std::move(receiver);
    auto model = FakeModelServer::Start();
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = *std::move(model);
    std::vector<std::string> replica_flags = {"--providers_file=" +
                                              FakeOpenAiProvidersFile(model_->base_url())};
    replica_flags.insert(replica_flags.end(), flags.begin(), flags.end());
    ASSERT_NO_FATAL_FAILURE(
        StartCluster({.replicas = 1,
                      .replica_flags = replica_flags,
                      .replica_env = {{"FAKE_MODEL_KEY", kKey}},
                      .service_env = {{"OTEL_EXPORTER_OTLP_ENDPOINT", receiver_->endpoint()},
                                      {"OTEL_BSP_SCHEDULE_DELAY", "50"}}}));
  }

  // Runs one turn saying `text` on a new "fake-openai" session; returns the turn's chat
  // span once it has been exported (a test failure and nullopt if it never is).
  std::optional<ReceivedSpan> RunTurnForChatSpan(const std::string& text) {
    v1::AgentConfig config;
    config.set_provider("fake-openai");
    const std::string session = CreateSessionWith(kTenantA, config);
    absl::StatusOr<std::string> turn = SubmitTurn(kTenantA, session, text);
    EXPECT_TRUE(turn.ok()) << turn.status();
    if (!turn.ok()) return std::nullopt;
    absl::StatusOr<v1::Turn> ended = WaitForTurnEnd(kTenantA, session, *turn);
    EXPECT_TRUE(ended.ok()) << ended.status();
    if (!ended.ok()) return std::nullopt;
    EXPECT_EQ(ended->status(), v1::TURN_STATUS_SUCCEEDED) << ended->error().message();

    std::optional<ReceivedSpan> chat;
    const bool exported = parley::testing::WaitFor(absl::Seconds(30), [&] {
      for (const ReceivedSpan& span : receiver_->spans()) {
        const std::string* operation = span.Attribute("gen_ai.operation.name");
        const std::string* conversation = span.Attribute("gen_ai.conversation.id");
        if (operation != nullptr && *operation == "chat" && conversation != nullptr &&
            *conversation == session) {
          chat = span;
          return true;
        }
      }
      return false;
    });
    EXPECT_TRUE(exported) << "no chat span of " << session;
    EXPECT_EQ(receiver_->decode_errors(), std::vector<std::string>{});
    return chat;
  }

  std::unique_ptr<OtlpReceiver> receiver_;
  std::unique_ptr<FakeModelServer> model_;
};

TEST_F(ChatBodyCapture, OptedInTheChatSpanCarriesRedactedBodiesCutAtTheLimit) {
  ASSERT_NO_FATAL_FAILURE(Start({absl::StrCat("--capture_model_bodies_bytes=", kCaptureBytes)}));
  // The answer echoes the key, and names a credential field, as a careless API might.
  parley::testing::FakeResponse answer = OpenAiAnswer("Captured.");
  answer.chunks.insert(answer.chunks.begin() + 1,
                       "data: " +
                           nlohmann::json{{"choices", nlohmann::json::array()},
                                          {"api_key", "leaked-field-value"},
                                          {"echo", absl::StrCat("you sent ", kKey)}}
                               .dump() +
                           "\n\n");
  model_->Enqueue(answer);
  // A request longer than the limit, with the key early in it.
  const std::string text = absl::StrCat("my key is ", kKey, " ", std::string(2000, 'x'));
  std::optional<ReceivedSpan> chat = RunTurnForChatSpan(text);
  ASSERT_TRUE(chat.has_value());
  // The key did go out, in the request's header.
  ASSERT_EQ(model_->requests().size(), 1u);
  EXPECT_EQ(model_->requests()[0].headers.at("authorization"), absl::StrCat("Bearer ", kKey));

  for (const char* name : kCaptureAttributes) {
    ASSERT_NE(chat->Attribute(name), nullptr) << name;
  }
  const auto& attributes = chat->attributes;
  EXPECT_THAT(attributes.at("parley.gen_ai.request.headers"),
              HasSubstr("Authorization: [REDACTED]"));
  EXPECT_THAT(attributes.at("parley.gen_ai.request.headers"),
              HasSubstr("Content-Type: application/json"));
  const std::string& request_body = attributes.at("parley.gen_ai.request.body");
  EXPECT_EQ(request_body.size(), kCaptureBytes);
  EXPECT_EQ(attributes.at("parley.gen_ai.request.body.truncated"), "true");
  EXPECT_THAT(request_body, HasSubstr("my key is [REDACTED] xxx"));
  const std::string& response_body = attributes.at("parley.gen_ai.response.body");
  EXPECT_EQ(attributes.at("parley.gen_ai.response.body.truncated"), "false");
  EXPECT_THAT(response_body, HasSubstr("\"content\":\"Captured.\""));
  EXPECT_THAT(response_body, HasSubstr("\"api_key\":\"[REDACTED]\""));
  EXPECT_THAT(response_body, HasSubstr("you sent [REDACTED]"));
  EXPECT_THAT(response_body, HasSubstr("data: [DONE]"));

  // Nothing exported, on any span, holds the key or the credential field's value.
  for (const ReceivedSpan& span : receiver_->spans()) {
    for (const auto& [name, value] : span.attributes) {
      EXPECT_THAT(value, Not(HasSubstr(kKey))) << span.name << " " << name;
      EXPECT_THAT(value, Not(HasSubstr("leaked-field-value"))) << span.name << " " << name;
    }
  }
}

TEST_F(ChatBodyCapture, ByDefaultNothingOfTheBodiesIsExported) {
  ASSERT_NO_FATAL_FAILURE(Start({}));
  model_->Enqueue(OpenAiAnswer("Not captured."));
  std::optional<ReceivedSpan> chat = RunTurnForChatSpan("hello");
  ASSERT_TRUE(chat.has_value());
  EXPECT_NE(chat->Attribute("gen_ai.usage.output_tokens"), nullptr) << "a complete chat span";
  for (const char* name : kCaptureAttributes) {
    EXPECT_EQ(chat->Attribute(name), nullptr) << name;
  }
  for (const ReceivedSpan& span : receiver_->spans()) {
    for (const auto& [name, value] : span.attributes) {
      EXPECT_THAT(value, Not(HasSubstr("Not captured."))) << span.name << " " << name;
    }
  }
}

}  // namespace
}  // namespace parley::session::testing
