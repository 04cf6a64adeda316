// parley sessions | send | watch | turns | messages: the SessionService from a shell.
#include <iostream>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "cli/commands.h"
#include "cli/events.h"

namespace parley::cli {
namespace {

using SessionStub = v1::SessionService::Stub;

// The settings a session can be created or updated with; an empty value is "not given".
struct SessionFields {
  std::string title, external_id, user_id, tags, metadata;
  std::string provider, model, system_prompt, policy, tools;
};

void AddSessionFlags(Flags& flags, SessionFields* f) {
  flags.String("title", &f->title, "title shown in listings");
  flags.String("user_id", &f->user_id, "the end user the session belongs to");
  flags.String("tags", &f->tags, "comma-separated tags");
  flags.String("metadata", &f->metadata, "comma-separated key=value pairs");
  flags.String("provider", &f->provider, "model provider name (the server's configuration)");
  flags.String("model", &f->model, "model name");
  flags.String("system_prompt", &f->system_prompt, "system prompt of every turn");
  flags.String("tools", &f->tools,
               "comma-separated tools the model may call in the session's sandbox: bash, "
               "read_file, write_file, edit_file, list_files");
  flags.Choice("policy", &f->policy, "what a message does while a turn runs",
               {"", "enqueue", "interrupt", "reject", "steer"});
}

v1::MultitaskPolicy PolicyFromName(const std::string& name) {
  if (name == "enqueue") return v1::MULTITASK_POLICY_ENQUEUE;
  if (name == "interrupt") return v1::MULTITASK_POLICY_INTERRUPT;
  if (name == "reject") return v1::MULTITASK_POLICY_REJECT;
  if (name == "steer") return v1::MULTITASK_POLICY_STEER;
  return v1::MULTITASK_POLICY_UNSPECIFIED;
}

// Copies the given fields into `session`; each one given is added to `paths`.
absl::Status ApplySessionFields(const SessionFields& f, v1::Session* session,
                                std::vector<std::string>* paths) {
  auto given = [&](const std::string& value, const char* path) {
    if (value.empty()) return false;
    paths->push_back(path);
    return true;
  };
  if (given(f.title, "title")) session->set_title(f.title);
  if (given(f.user_id, "user_id")) session->set_user_id(f.user_id);
  if (given(f.tags, "tags")) {
    for (absl::string_view tag : absl::StrSplit(f.tags, ',', absl::SkipEmpty())) {
      session->add_tags(std::string(tag));
    }
  }
  if (given(f.metadata, "metadata")) {
    for (absl::string_view pair : absl::StrSplit(f.metadata, ',', absl::SkipEmpty())) {
      std::pair<std::string, std::string> kv = absl::StrSplit(pair, absl::MaxSplits('=', 1));
      if (kv.first.empty() || pair.find('=') == absl::string_view::npos) {
        return absl::InvalidArgumentError(
            absl::StrCat("--metadata: expected key=value, got \"", pair, "\""));
      }
      (*session->mutable_metadata())[kv.first] = kv.second;
    }
  }
  v1::AgentConfig* agent = session->mutable_agent_config();
  if (given(f.provider, "agent_config.provider")) agent->set_provider(f.provider);
  if (given(f.model, "agent_config.model")) agent->set_model(f.model);
  if (given(f.system_prompt, "agent_config.system_prompt")) {
    agent->set_system_prompt(f.system_prompt);
  }
  if (given(f.tools, "agent_config.tools")) {
    for (absl::string_view tool : absl::StrSplit(f.tools, ',', absl::SkipEmpty())) {
      agent->add_tools(std::string(tool));
    }
  }
  if (given(f.policy, "agent_config.multitask_policy")) {
    agent->set_multitask_policy(PolicyFromName(f.policy));
  }
  return absl::OkStatus();
}

void PrintSession(const v1::Session& s, const Options& options) {
  if (options.json) return PrintJson(s);
  std::cout << "id:           " << s.id() << "\n"
            << "status:       " << EnumWord(v1::SessionStatus_Name(s.status()), "SESSION_STATUS_")
            << "\n"
            << "title:        " << s.title() << "\n";
  if (!s.external_id().empty()) std::cout << "external_id:  " << s.external_id() << "\n";
  if (!s.user_id().empty()) std::cout << "user_id:      " << s.user_id() << "\n";
  if (s.tags_size() > 0) std::cout << "tags:         " << absl::StrJoin(s.tags(), ",") << "\n";
  for (const auto& [key, value] : s.metadata()) {
    std::cout << "metadata:     " << key << "=" << value << "\n";
  }
  const v1::AgentConfig& agent = s.agent_config();
  if (!agent.provider().empty() || !agent.model().empty()) {
    std::cout << "model:        " << agent.provider() << "/" << agent.model() << "\n";
  }
  if (agent.tools_size() > 0) {
    std::cout << "tools:        " << absl::StrJoin(agent.tools(), ",") << "\n";
  }
  std::cout << "current_turn: " << (s.current_turn_id().empty() ? "-" : s.current_turn_id()) << "\n"
            << "last_seq:     " << s.last_seq() << "\n"
            << "version:      " << s.version() << "\n"
            << "created:      " << FormatTime(s.create_time()) << "\n"
            << "updated:      " << FormatTime(s.update_time()) << "\n";
}

void PrintTurn(const v1::Turn& t, const Options& options) {
  if (options.json) return PrintJson(t);
  std::cout << "id:          " << t.id() << "\n"
            << "session:     " << t.session_id() << "\n"
            << "status:      " << EnumWord(v1::TurnStatus_Name(t.status()), "TURN_STATUS_") << "\n"
            << "finish:      "
            << EnumWord(v1::FinishReason_Name(t.finish_reason()), "FINISH_REASON_") << "\n"
            << "attempt:     " << t.attempt() << "\n"
            << "steps:       " << t.steps() << "\n"
            << "tokens:      " << t.usage().input_tokens() << " in, " << t.usage().output_tokens()
            << " out\n"
            << "seqs:        " << t.first_seq() << ".." << t.last_seq() << "\n"
            << "created:     " << FormatTime(t.create_time()) << "\n"
            << "ended:       " << FormatTime(t.end_time()) << "\n";
  if (t.cancel_requested()) std::cout << "cancel:      requested\n";
  if (t.has_error()) std::cout << "error:       " << t.error().message() << "\n";
}

int SessionsCreate(const Invocation& call) {
  Options options;
  SessionFields fields;
  Flags flags(call.program, "Creates a session and prints its id.");
  AddConnectionFlags(flags, &options);
  AddSessionFlags(flags, &fields);
  flags.String("external_id", &fields.external_id,
               "your own id for it: creating again with the same one returns the same session");
  ParseArgs(flags, call, 0, 0, "no arguments");
  v1::CreateSessionRequest request;
  v1::Session session;
  std::vector<std::string> paths;
  if (absl::Status s = ApplySessionFields(fields, &session, &paths); !s.ok()) {
    return ReportUsage(call.program, std::string(s.message()));
  }
  request.set_title(session.title());
  request.set_user_id(session.user_id());
  request.set_external_id(fields.external_id);
  *request.mutable_tags() = session.tags();
  *request.mutable_metadata() = session.metadata();
  *request.mutable_agent_config() = session.agent_config();
  Connection connection(options);
  v1::CreateSessionResponse response;
  grpc::Status status =
      connection.sessions().CreateSession(connection.Context().get(), request, &response);
  if (!status.ok()) return ReportError(status, options);
  if (options.json) {
    PrintJson(response);
  } else {
    std::cout << response.session().id() << "\n";
    if (!response.created()) std::cerr << "(an existing session with this external id)\n";
  }
  return kExitOk;
}

int SessionsList(const Invocation& call) {
  Options options;
  std::string status_filter;
  int64_t limit = 50;
  std::string tag, user_id, external_id;
  Flags flags(call.program, "Lists sessions, newest first.");
  AddConnectionFlags(flags, &options);
  flags.Choice("status", &status_filter, "only sessions in this status", {"", "active", "closed"});
  flags.String("user_id", &user_id, "only this end user's sessions");
  flags.String("tag", &tag, "only sessions with this tag");
  flags.String("external_id", &external_id, "only the session with this external id");
  flags.Int("limit", &limit, "most sessions to print", 1, 100000);
  ParseArgs(flags, call, 0, 0, "no arguments");
  v1::ListSessionsRequest request;
  if (status_filter == "active") request.set_status(v1::SESSION_STATUS_ACTIVE);
  if (status_filter == "closed") request.set_status(v1::SESSION_STATUS_CLOSED);
  if (!tag.empty()) request.add_tags(tag);
  request.set_user_id(user_id);
  request.set_external_id(external_id);
  Connection connection(options);
  Table table(absl::StrFormat("%-32s %-8s %-22s %s", "ID", "STATUS", "CREATED", "TITLE"));
  int64_t printed = 0;
  do {
    request.set_page_size(static_cast<uint32_t>(std::min<int64_t>(limit - printed, 1000)));
    v1::ListSessionsResponse response;
    grpc::Status status =
        connection.sessions().ListSessions(connection.Context().get(), request, &response);
    if (!status.ok()) return ReportError(status, options);
    for (const v1::Session& s : response.sessions()) {
      if (options.json) {
        PrintJson(s);
      } else {
        table.Row(absl::StrFormat("%-32s %-8s %-22s %s", s.id(),
                                  EnumWord(v1::SessionStatus_Name(s.status()), "SESSION_STATUS_"),
                                  FormatTime(s.create_time()), s.title()));
      }
      ++printed;
    }
    request.set_page_token(response.next_page_token());
  } while (!request.page_token().empty() && printed < limit);
  return kExitOk;
}

int SessionsGet(const Invocation& call) {
  Options options;
  Flags flags(call.program, "Shows one session.");
  AddConnectionFlags(flags, &options);
  std::vector<std::string> args = ParseArgs(flags, call, 1, 1, "SESSION");
  Connection connection(options);
  v1::GetSessionRequest request;
  request.set_session_id(args[0]);
  v1::GetSessionResponse response;
  grpc::Status status =
      connection.sessions().GetSession(connection.Context().get(), request, &response);
  if (!status.ok()) return ReportError(status, options);
  PrintSession(response.session(), options);
  return kExitOk;
}

int SessionsUpdate(const Invocation& call) {
  Options options;
  SessionFields fields;
  int64_t expected_version = 0;
  Flags flags(call.program, "Changes the given fields of a session (others stay as they are).");
  AddConnectionFlags(flags, &options);
  AddSessionFlags(flags, &fields);
  flags.Int("expected_version", &expected_version,
            "apply only if the session is at this version (ABORTED otherwise)", 0, INT64_MAX);
  std::vector<std::string> args = ParseArgs(flags, call, 1, 1, "SESSION");
  v1::UpdateSessionRequest request;
  request.set_session_id(args[0]);
  request.set_expected_version(static_cast<uint64_t>(expected_version));
  std::vector<std::string> paths;
  if (absl::Status s = ApplySessionFields(fields, request.mutable_session(), &paths); !s.ok()) {
    return ReportUsage(call.program, std::string(s.message()));
  }
  if (paths.empty()) return ReportUsage(call.program, "nothing to change: give a field flag");
  for (const std::string& path : paths) request.mutable_update_mask()->add_paths(path);
  Connection connection(options);
  v1::UpdateSessionResponse response;
  grpc::Status status =
      connection.sessions().UpdateSession(connection.Context().get(), request, &response);
  if (!status.ok()) return ReportError(status, options);
  PrintSession(response.session(), options);
  return kExitOk;
}

int SessionsClose(const Invocation& call) {
  Options options;
  Flags flags(call.program, "Closes a session: its running turn is cancelled, no new messages.");
  AddConnectionFlags(flags, &options);
  std::vector<std::string> args = ParseArgs(flags, call, 1, 1, "SESSION");
  Connection connection(options);
  v1::CloseSessionRequest request;
  request.set_session_id(args[0]);
  v1::CloseSessionResponse response;
  grpc::Status status =
      connection.sessions().CloseSession(connection.Context().get(), request, &response);
  if (!status.ok()) return ReportError(status, options);
  if (options.json) {
    PrintJson(response);
  } else {
    std::cout << response.session().id() << " closed\n";
  }
  return kExitOk;
}

constexpr char kSessionsUsage[] = "usage: parley sessions <create|list|get|update|close> [flags]\n";

}  // namespace

int SessionsCommand(const Invocation& call) {
  const std::string sub = SubcommandOf(call);
  if (sub == "create") return SessionsCreate(Subcommand(call));
  if (sub == "list") return SessionsList(Subcommand(call));
  if (sub == "get") return SessionsGet(Subcommand(call));
  if (sub == "update") return SessionsUpdate(Subcommand(call));
  if (sub == "close") return SessionsClose(Subcommand(call));
  std::cerr << kSessionsUsage;
  return kExitUsage;
}

int SendCommand(const Invocation& call) {
  Options options;
  bool follow = false;
  std::string policy, idempotency_key;
  Flags flags(call.program,
              "Sends a user message; the session's next turn answers it. Prints the turn id, or "
              "with --follow streams the turn until it ends (exit 1 if it did not succeed).");
  AddConnectionFlags(flags, &options);
  flags.Bool("follow", &follow, "stream the turn's events until it ends");
  flags.Choice("policy", &policy,
               "if a turn is running: queue behind it, interrupt it, refuse, or steer it (the "
               "running turn sees the message at its next step)",
               {"", "enqueue", "interrupt", "reject", "steer"});
  flags.String("idempotency_key", &idempotency_key,
               "the same key again returns the first send's message and turn");
  std::vector<std::string> args = ParseArgs(flags, call, 2, 2, "SESSION TEXT");
  Connection connection(options);
  v1::SendMessageRequest request;
  request.set_session_id(args[0]);
  request.add_content()->set_text(args[1]);
  request.set_idempotency_key(idempotency_key);
  request.set_multitask_policy(PolicyFromName(policy));
  v1::SendMessageResponse response;
  grpc::Status status =
      connection.sessions().SendMessage(connection.Context().get(), request, &response);
  if (!status.ok()) return ReportError(status, options);
  if (!follow) {
    if (options.json) {
      PrintJson(response);
    } else {
      std::cout << response.turn().id() << "\n";
    }
    return kExitOk;
  }
  v1::StreamEventsRequest stream;
  stream.set_session_id(args[0]);
  stream.set_from_turn_id(response.turn().id());
  stream.set_until_turn_end(true);
  return FollowEvents(connection, stream);
}

int WatchCommand(const Invocation& call) {
  Options options;
  int64_t after = -1;
  bool from_latest = false, until_turn_end = false;
  std::string from_turn;
  Flags flags(call.program,
              "Streams a session's events: history first, then live ones, until the session is "
              "closed (or Ctrl-C). Resumes by itself after a dropped connection. Several "
              "sessions share one Subscribe stream, each line prefixed with its session.");
  AddConnectionFlags(flags, &options);
  flags.Int("after", &after, "start after this seq (default: from the first event)", -1, INT64_MAX);
  flags.Bool("from_latest", &from_latest, "only events newer than now");
  flags.String("from_turn", &from_turn, "start with this turn's first event");
  flags.Bool("until_turn_end", &until_turn_end, "stop when a turn ends");
  std::vector<std::string> args = ParseArgs(flags, call, 1, 10'000, "SESSION [SESSION...]");
  if ((after >= 0) + from_latest + !from_turn.empty() > 1) {
    return ReportUsage(call.program, "--after, --from_latest and --from_turn exclude each other");
  }
  if (args.size() > 1 && !from_turn.empty()) {
    return ReportUsage(call.program, "--from_turn names a turn of one session");
  }
  std::vector<v1::StreamEventsRequest> requests;
  for (const std::string& session : args) {
    v1::StreamEventsRequest& request = requests.emplace_back();
    request.set_session_id(session);
    request.set_until_turn_end(until_turn_end);
    if (after >= 0) request.set_after_seq(static_cast<uint64_t>(after));
    if (from_latest) request.set_from_latest(true);
    if (!from_turn.empty()) request.set_from_turn_id(from_turn);
  }
  Connection connection(options);
  if (requests.size() == 1) return FollowEvents(connection, requests.front());
  return FollowMany(connection, requests);
}

namespace {

int TurnsList(const Invocation& call) {
  Options options;
  std::string status_filter;
  Flags flags(call.program, "Lists a session's turns, oldest first.");
  AddConnectionFlags(flags, &options);
  flags.Choice("status", &status_filter, "only turns in this status",
               {"", "queued", "running", "succeeded", "failed", "cancelled"});
  std::vector<std::string> args = ParseArgs(flags, call, 1, 1, "SESSION");
  v1::ListTurnsRequest request;
  request.set_session_id(args[0]);
  if (!status_filter.empty()) {
    // Flags::Choice admitted only names that parse.
    v1::TurnStatus status = v1::TURN_STATUS_UNSPECIFIED;
    v1::TurnStatus_Parse("TURN_STATUS_" + absl::AsciiStrToUpper(status_filter), &status);
    request.add_statuses(status);
  }
  Connection connection(options);
  Table table(absl::StrFormat("%-32s %-10s %-12s %-22s %s", "ID", "STATUS", "FINISH", "CREATED",
                              "TOKENS IN/OUT"));
  grpc::Status status = ForEachPage(
      connection, connection.sessions(), &SessionStub::ListTurns, request,
      [&](const v1::ListTurnsResponse& page) {
        for (const v1::Turn& t : page.turns()) {
          if (options.json) {
            PrintJson(t);
            continue;
          }
          std::string finish =
              t.finish_reason() == v1::FINISH_REASON_UNSPECIFIED
                  ? "-"
                  : EnumWord(v1::FinishReason_Name(t.finish_reason()), "FINISH_REASON_");
          table.Row(absl::StrFormat("%-32s %-10s %-12s %-22s %d/%d", t.id(),
                                    EnumWord(v1::TurnStatus_Name(t.status()), "TURN_STATUS_"),
                                    finish, FormatTime(t.create_time()), t.usage().input_tokens(),
                                    t.usage().output_tokens()));
        }
      });
  return status.ok() ? kExitOk : ReportError(status, options);
}

int TurnsGet(const Invocation& call) {
  Options options;
  Flags flags(call.program, "Shows one turn.");
  AddConnectionFlags(flags, &options);
  std::vector<std::string> args = ParseArgs(flags, call, 2, 2, "SESSION TURN");
  Connection connection(options);
  v1::GetTurnRequest request;
  request.set_session_id(args[0]);
  request.set_turn_id(args[1]);
  v1::GetTurnResponse response;
  grpc::Status status =
      connection.sessions().GetTurn(connection.Context().get(), request, &response);
  if (!status.ok()) return ReportError(status, options);
  PrintTurn(response.turn(), options);
  return kExitOk;
}

int TurnsCancel(const Invocation& call) {
  Options options;
  Flags flags(call.program, "Cancels a turn (without TURN: the session's running turn).");
  AddConnectionFlags(flags, &options);
  std::vector<std::string> args = ParseArgs(flags, call, 1, 2, "SESSION [TURN]");
  Connection connection(options);
  v1::CancelTurnRequest request;
  request.set_session_id(args[0]);
  if (args.size() == 2) request.set_turn_id(args[1]);
  v1::CancelTurnResponse response;
  grpc::Status status =
      connection.sessions().CancelTurn(connection.Context().get(), request, &response);
  if (!status.ok()) return ReportError(status, options);
  PrintTurn(response.turn(), options);
  return kExitOk;
}

}  // namespace

int TurnsCommand(const Invocation& call) {
  const std::string sub = SubcommandOf(call);
  if (sub == "list") return TurnsList(Subcommand(call));
  if (sub == "get") return TurnsGet(Subcommand(call));
  if (sub == "cancel") return TurnsCancel(Subcommand(call));
  std::cerr << "usage: parley turns <list|get|cancel> SESSION [TURN] [flags]\n";
  return kExitUsage;
}

int MessagesCommand(const Invocation& call) {
  Options options;
  int64_t limit = 50;
  bool latest = false;
  Flags flags(call.program, "Prints a session's stored messages, oldest first.");
  AddConnectionFlags(flags, &options);
  flags.Int("limit", &limit, "most messages to print", 1, 1000);
  flags.Bool("latest", &latest, "the newest --limit messages instead of the first ones");
  std::vector<std::string> args = ParseArgs(flags, call, 1, 1, "SESSION");
  Connection connection(options);
  v1::ListMessagesRequest request;
  request.set_session_id(args[0]);
  request.set_limit(static_cast<uint32_t>(limit));
  if (latest) request.set_latest(true);
  v1::ListMessagesResponse response;
  grpc::Status status =
      connection.sessions().ListMessages(connection.Context().get(), request, &response);
  if (!status.ok()) return ReportError(status, options);
  const Style style = Style::ForStdout();
  for (const v1::Message& m : response.messages()) {
    if (options.json) {
      PrintJson(m);
      continue;
    }
    std::string role = EnumWord(v1::Role_Name(m.role()), "ROLE_");
    std::cout << style.Bold(role + ":");
    for (const v1::Part& part : m.parts()) {
      if (part.has_tool_call()) {
        std::cout << " "
                  << style.Cyan(absl::StrCat("[tool ", part.tool_call().name(), " ",
                                             part.tool_call().arguments_json(), "]"));
      } else if (part.has_tool_result()) {
        std::cout << " " << style.Cyan("[tool result]") << " " << part.tool_result().output();
      } else if (part.has_reasoning()) {
        std::cout << " " << style.Dim(part.reasoning());
      } else {
        std::cout << " " << part.text();
      }
    }
    std::cout << "\n";
  }
  return kExitOk;
}

}  // namespace parley::cli
