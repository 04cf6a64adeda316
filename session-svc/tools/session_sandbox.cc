// The session's sandbox for one turn: lazy acquisition, loss detection, and calls that a
// stop request cancels.
#include "session-svc/tools/session_sandbox.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "session-svc/store_call.h"

namespace parley::session::tools {

namespace sandbox_pb = ::parley::sandbox::v1;
namespace sandboxd_pb = ::parley::sandboxd::v1;

bool IsSandboxGone(const absl::Status& status) {
  const std::string reason = ::parley::session::ErrorReason(status);
  return reason == "SANDBOX_GONE" || reason == "SANDBOX_NOT_FOUND";
}

SessionSandbox::SessionSandbox(SandboxReplicas& replicas, SandboxTarget target, StopSignal& stop)
    : replicas_(replicas), target_(std::move(target)), stop_(stop) {}

std::unique_ptr<SessionSandbox::Call> SessionSandbox::NewCall(absl::Duration timeout) {
  auto call = std::make_unique<Call>();
  call->context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  grpc::ClientContext* context = &call->context;
  call->hook = stop_.OnStop([context] { context->TryCancel(); });
  return call;
}

absl::Status SessionSandbox::Attach(std::optional<v1::SandboxAttached>* attached) {
  std::string replaced;
  {
    absl::MutexLock lock(&mu_);
    if (!sandbox_id_.empty()) return absl::OkStatus();
    replaced = lost_sandbox_id_;
  }
  sandbox_pb::AcquireForSessionRequest request;
  request.set_tenant_id(target_.tenant_id);
  request.set_session_id(target_.session_id);
  request.set_template_(target_.template_name);
  sandbox_pb::AcquireForSessionResponse response;
  // Creation may wait for a cold start or a quota check: generous, and still cancellable.
  std::unique_ptr<Call> call = NewCall(absl::Minutes(2));
  grpc::Status status = replicas_.Any().AcquireForSession(&call->context, request, &response);
  if (stop_.stopping()) return absl::CancelledError("the turn is stopping");
  if (!status.ok()) return FromGrpcStatus(status);
  absl::MutexLock lock(&mu_);
  sandbox_id_ = response.sandbox().id();
  if (response.created() || response.resumed() || !replaced.empty()) {
    v1::SandboxAttached& event = attached->emplace();
    event.set_sandbox_id(sandbox_id_);
    event.set_created(response.created());
    event.set_resumed(response.resumed());
    if (replaced != sandbox_id_) event.set_replaced_sandbox_id(replaced);
  }
  lost_sandbox_id_.clear();
  return absl::OkStatus();
}

absl::StatusOr<SessionSandbox::Attached> SessionSandbox::Current() {
  std::string id;
  {
    absl::MutexLock lock(&mu_);
    if (sandbox_id_.empty()) return absl::FailedPreconditionError("no sandbox is attached");
    id = sandbox_id_;
  }
  absl::StatusOr<SandboxStub*> owner = replicas_.ForSandbox(id);
  if (!owner.ok()) return owner.status();
  return Attached{.id = std::move(id), .owner = *owner};
}

absl::Status SessionSandbox::Finished(const std::string& sandbox_id, const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  if (stop_.stopping()) return absl::CancelledError("the turn is stopping");
  absl::Status result = FromGrpcStatus(status);
  if (IsSandboxGone(result)) {
    absl::MutexLock lock(&mu_);
    if (sandbox_id_ == sandbox_id) {
      lost_sandbox_id_ = sandbox_id_;
      sandbox_id_.clear();
      v1::SandboxLost& loss = unreported_loss_.emplace();
      loss.set_sandbox_id(sandbox_id);
      loss.set_reason(std::string(result.message()));
    }
  }
  return result;
}

std::optional<v1::SandboxLost> SessionSandbox::TakeLoss() {
  absl::MutexLock lock(&mu_);
  return std::exchange(unreported_loss_, std::nullopt);
}

absl::StatusOr<v1::ExecExit> SessionSandbox::Exec(const std::vector<std::string>& argv,
                                                  absl::Duration timeout,
                                                  const OutputFn& on_output) {
  absl::StatusOr<Attached> sandbox = Current();
  if (!sandbox.ok()) return sandbox.status();
  sandbox_pb::ExecRequest request;
  request.set_tenant_id(target_.tenant_id);
  request.set_sandbox_id(sandbox->id);
  sandboxd_pb::ExecRequest* command = request.mutable_command();
  for (const std::string& arg : argv) command->add_argv(arg);
  command->set_timeout_ms(static_cast<uint64_t>(absl::ToInt64Milliseconds(timeout)));
  // The process's own timeout ends it first; the call's deadline is only a backstop.
  std::unique_ptr<Call> call = NewCall(timeout + absl::Seconds(30));
  std::unique_ptr<grpc::ClientReaderInterface<sandboxd_pb::ExecResponse>> reader =
      sandbox->owner->Exec(&call->context, request);
  sandboxd_pb::ExecResponse response;
  std::optional<v1::ExecExit> exit;
  while (reader->Read(&response)) {
    switch (response.output_case()) {
      case sandboxd_pb::ExecResponse::kStdout:
        on_output(v1::OUTPUT_STREAM_STDOUT, response.stdout());
        break;
      case sandboxd_pb::ExecResponse::kStderr:
        on_output(v1::OUTPUT_STREAM_STDERR, response.stderr());
        break;
      case sandboxd_pb::ExecResponse::kExit:
        exit = response.exit();
        break;
      case sandboxd_pb::ExecResponse::OUTPUT_NOT_SET:
        break;
    }
  }
  if (absl::Status status = Finished(sandbox->id, reader->Finish()); !status.ok()) return status;
  if (!exit) return absl::InternalError("the sandbox ended the command without its exit status");
  return *exit;
}

absl::StatusOr<std::string> SessionSandbox::ReadFile(const std::string& path, uint64_t max_bytes,
                                                     uint64_t* size_bytes, absl::Duration timeout) {
  absl::StatusOr<Attached> sandbox = Current();
  if (!sandbox.ok()) return sandbox.status();
  sandbox_pb::ReadFileRequest request;
  request.set_tenant_id(target_.tenant_id);
  request.set_sandbox_id(sandbox->id);
  request.mutable_file()->set_path(path);
  request.mutable_file()->set_limit_bytes(max_bytes);
  std::unique_ptr<Call> call = NewCall(timeout);
  std::unique_ptr<grpc::ClientReaderInterface<sandboxd_pb::ReadFileResponse>> reader =
      sandbox->owner->ReadFile(&call->context, request);
  sandboxd_pb::ReadFileResponse chunk;
  std::string content;
  while (reader->Read(&chunk)) {
    if (chunk.has_info()) *size_bytes = chunk.info().size_bytes();
    content += chunk.data();
  }
  if (absl::Status status = Finished(sandbox->id, reader->Finish()); !status.ok()) return status;
  return content;
}

absl::Status SessionSandbox::WriteFile(const std::string& path, const std::string& content,
                                       absl::Duration timeout) {
  absl::StatusOr<Attached> sandbox = Current();
  if (!sandbox.ok()) return sandbox.status();
  std::unique_ptr<Call> call = NewCall(timeout);
  sandboxd_pb::WriteFileResponse response;
  std::unique_ptr<grpc::ClientWriterInterface<sandbox_pb::WriteFileRequest>> writer =
      sandbox->owner->WriteFile(&call->context, &response);
  sandbox_pb::WriteFileRequest header;
  header.mutable_header()->set_tenant_id(target_.tenant_id);
  header.mutable_header()->set_sandbox_id(sandbox->id);
  header.mutable_header()->mutable_file()->set_path(path);
  header.mutable_header()->mutable_file()->set_create_parents(true);
  bool open = writer->Write(header);
  constexpr size_t kChunk = 1 << 20;
  for (size_t at = 0; open && at < content.size(); at += kChunk) {
    sandbox_pb::WriteFileRequest data;
    data.set_data(content.substr(at, kChunk));
    open = writer->Write(data);
  }
  writer->WritesDone();
  return Finished(sandbox->id, writer->Finish());
}

absl::StatusOr<sandboxd_pb::ListDirResponse> SessionSandbox::ListFiles(const std::string& path,
                                                                       bool recursive,
                                                                       uint32_t max_entries,
                                                                       absl::Duration timeout) {
  absl::StatusOr<Attached> sandbox = Current();
  if (!sandbox.ok()) return sandbox.status();
  sandbox_pb::ListFilesRequest request;
  request.set_tenant_id(target_.tenant_id);
  request.set_sandbox_id(sandbox->id);
  sandboxd_pb::ListDirRequest* list = request.mutable_list();
  list->set_path(path);
  list->set_recursive(recursive);
  list->set_max_entries(max_entries);
  std::unique_ptr<Call> call = NewCall(timeout);
  sandboxd_pb::ListDirResponse response;
  if (absl::Status status =
          Finished(sandbox->id, sandbox->owner->ListFiles(&call->context, request, &response));
      !status.ok()) {
    return status;
  }
  return response;
}

}  // namespace parley::session::tools
