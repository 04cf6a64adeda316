// History repair, one test per case a stored conversation can break a provider request
// with, and the token budget.
#include "session-svc/agent/history.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace parley::session {
namespace {

v1::Message User(const std::string& text) {
  v1::Message m;
  m.set_role(v1::ROLE_USER);
  m.add_parts()->set_text(text);
  return m;
}

v1::Message Calls(std::vector<std::pair<std::string, std::string>> calls,
                  const std::string& text = "") {
  v1::Message m;
  m.set_role(v1::ROLE_ASSISTANT);
  if (!text.empty()) m.add_parts()->set_text(text);
  for (auto& [id, arguments] : calls) {
    v1::ToolCall* call = m.add_parts()->mutable_tool_call();
    call->set_call_id(id);
    call->set_name("bash");
    call->set_arguments_json(arguments);
  }
  return m;
}

v1::Message Results(std::vector<std::string> ids) {
  v1::Message m;
  m.set_role(v1::ROLE_TOOL);
  for (const std::string& id : ids) {
    v1::ToolResult* r = m.add_parts()->mutable_tool_result();
    r->set_call_id(id);
    r->set_output("out of " + id);
  }
  return m;
}

// "U", "A[c1,c2]", "T[c1,c2]": the shape of a conversation, for comparisons.
std::string Shape(const std::vector<v1::Message>& messages) {
  std::string shape;
  for (const v1::Message& m : messages) {
    if (!shape.empty()) shape += " ";
    std::string ids;
    for (const v1::Part& p : m.parts()) {
      const std::string id = p.has_tool_call()     ? p.tool_call().call_id()
                             : p.has_tool_result() ? p.tool_result().call_id()
                                                   : "";
      if (!id.empty()) ids += (ids.empty() ? "" : ",") + id;
    }
    shape += m.role() == v1::ROLE_USER ? "U" : m.role() == v1::ROLE_ASSISTANT ? "A" : "T";
    if (!ids.empty()) shape += "[" + ids + "]";
  }
  return shape;
}

TEST(HistoryRepair, AValidConversationIsUnchanged) {
  int repairs = -1;
  std::vector<v1::Message> out = RepairHistory(
      {User("hi"), Calls({{"c1", "{}"}}), Results({"c1"}), Calls({}, "done")}, &repairs);
  EXPECT_EQ(repairs, 0);
  EXPECT_EQ(Shape(out), "U A[c1] T[c1] A");
}

TEST(HistoryRepair, ACallWithoutAResultGetsASyntheticOne) {
  int repairs = 0;
  std::vector<v1::Message> out = RepairHistory(
      {User("hi"), Calls({{"c1", "{}"}, {"c2", "{}"}}), Results({"c1"}), User("next")}, &repairs);
  EXPECT_EQ(repairs, 1);
  EXPECT_EQ(Shape(out), "U A[c1,c2] T[c1,c2] U");
  EXPECT_TRUE(out[2].parts(1).tool_result().is_error());
  EXPECT_NE(out[2].parts(1).tool_result().output().find("no result was recorded"),
            std::string::npos);
}

TEST(HistoryRepair, AnOrphanedResultIsDropped) {
  int repairs = 0;
  std::vector<v1::Message> out =
      RepairHistory({User("hi"), Results({"ghost"}), Calls({}, "ok")}, &repairs);
  EXPECT_EQ(repairs, 1);
  EXPECT_EQ(Shape(out), "U A");
}

TEST(HistoryRepair, ADuplicatedCallKeepsItsFirstOccurrence) {
  int repairs = 0;
  std::vector<v1::Message> out = RepairHistory({User("hi"), Calls({{"c1", "{}"}}), Results({"c1"}),
                                                Calls({{"c1", "{}"}}, "again"), Results({"c1"})},
                                               &repairs);
  EXPECT_EQ(Shape(out), "U A[c1] T[c1] A");
  EXPECT_EQ(repairs, 2);  // The second call and its second result.
}

TEST(HistoryRepair, ADuplicatedResultIsDropped) {
  int repairs = 0;
  std::vector<v1::Message> out =
      RepairHistory({User("hi"), Calls({{"c1", "{}"}}), Results({"c1", "c1"})}, &repairs);
  EXPECT_EQ(repairs, 1);
  EXPECT_EQ(Shape(out), "U A[c1] T[c1]");
}

TEST(HistoryRepair, AResultFarFromItsCallMovesRightAfterIt) {
  int repairs = 0;
  std::vector<v1::Message> out = RepairHistory(
      {User("hi"), Calls({{"c1", "{}"}}), User("interjection"), Results({"c1"})}, &repairs);
  EXPECT_EQ(Shape(out), "U A[c1] T[c1] U");
  EXPECT_EQ(out[2].parts(0).tool_result().output(), "out of c1");
}

TEST(HistoryRepair, InvalidJsonArgumentsBecomeAnEmptyObject) {
  int repairs = 0;
  std::vector<v1::Message> out = RepairHistory(
      {User("hi"), Calls({{"c1", "{\"command\": "}, {"c2", "[1]"}}), Results({"c1", "c2"})},
      &repairs);
  EXPECT_EQ(repairs, 2);
  EXPECT_EQ(out[1].parts(0).tool_call().arguments_json(), "{}");
  EXPECT_EQ(out[1].parts(1).tool_call().arguments_json(), "{}");
}

TEST(HistoryRepair, EmptyMessagesAreDropped) {
  v1::Message empty_assistant;
  empty_assistant.set_role(v1::ROLE_ASSISTANT);
  v1::Message empty_user;
  empty_user.set_role(v1::ROLE_USER);
  int repairs = 0;
  std::vector<v1::Message> out = RepairHistory({empty_user, User("hi"), empty_assistant}, &repairs);
  EXPECT_EQ(repairs, 2);
  EXPECT_EQ(Shape(out), "U");
}

TEST(HistoryBudget, KeepsTheNewestWholeTurnsAndAlwaysTheLast) {
  const std::string big(4000, 'x');  // About 1,000 tokens.
  std::vector<v1::Message> history = {User(big), Calls({}, big), User(big), Calls({}, big),
                                      User("now")};
  HistoryWindow all = FitToBudget(history, 0);
  EXPECT_EQ(all.messages.size(), 5u);
  HistoryWindow two = FitToBudget(history, 2100);
  EXPECT_EQ(two.dropped_messages, 2u);
  EXPECT_EQ(Shape(two.messages), "U A U");
  HistoryWindow tiny = FitToBudget(history, 1);
  EXPECT_EQ(Shape(tiny.messages), "U");
  EXPECT_EQ(tiny.messages[0].parts(0).text(), "now");
}

}  // namespace
}  // namespace parley::session
