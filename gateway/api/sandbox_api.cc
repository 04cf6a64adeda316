#include "gateway/api/sandbox_api.h"

#include <atomic>
#include <functional>
#include <optional>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "common/status.h"
#include "sandbox-svc/contract/exec_validation.h"
#include "sandbox-svc/contract/file_validation.h"
#include "sandbox-svc/contract/paths.h"
#include "telemetry/grpc_telemetry.h"

namespace parley::gateway {
namespace {

namespace sandbox_pb = ::parley::sandbox::v1;
namespace sandboxd_pb = ::parley::sandboxd::v1;
namespace store_pb = ::parley::store::v1;

using SandboxAsync = sandbox_pb::SandboxManager::StubInterface::async_interface;
// The same validators sandbox-svc and its daemon apply, run here before a sandbox is
// touched.
using sandbox::ValidateExecCommand;
using sandbox::ValidateListDir;
using sandbox::ValidateReadFile;
using sandbox::ValidateStat;
using sandbox::ValidateWriteHeader;

// A status of sandbox-svc as the public API states it. A sandbox lost between the
// lookup and the operation (destroyed, failed, reaped) is UNAVAILABLE for the caller:
// trying again acquires a new one. Everything else passes through unchanged.
grpc::Status Public(const grpc::Status& status) {
  if (status.ok()) return status;
  std::optional<v1::ErrorInfo> info = GetErrorInfo(FromGrpcStatus(status));
  if (!info || (info->reason() != "SANDBOX_GONE" && info->reason() != "SANDBOX_NOT_FOUND")) {
    return status;
  }
  absl::Status lost =
      absl::UnavailableError("the session's sandbox was lost during the call; retry for a new one");
  SetErrorInfo(lost, "SANDBOX_GONE");
  return ToGrpcStatus(lost);
}

// What every SandboxService call does before its operation: check the key and the
// scope, then find the sandbox of the caller's session. Owned by the call's reactor; the
// downstream contexts live here so that a cancel by the caller reaches whichever call is
// in flight, or the next one to start.
class SandboxCall {
 protected:
  using Located = std::function<void(absl::StatusOr<std::string> sandbox_id)>;

  SandboxCall(Authenticator& authenticator, const SandboxApi::Downstream& downstream,
              grpc::CallbackServerContext* context)
      : context_(context), authenticator_(authenticator), downstream_(downstream) {}

  // Authenticates the caller, checks `scope`, `session_id` (named `field` in errors)
  // and `valid` (the operation's own fields, checked by the caller: a malformed request
  // must not create or resume a sandbox), then finds the session's sandbox. `done` runs
  // exactly once, on a gRPC thread (perhaps before Locate returns), with the sandbox's
  // id or the status to answer with.
  void Locate(const char* scope, std::string session_id, const char* field, absl::Status valid,
              Located done) {
    session_id_ = std::move(session_id);
    located_ = std::move(done);
    authenticator_.Authenticate(
        *context_, [this, scope, field, valid = std::move(valid)](absl::StatusOr<Principal> who) {
          absl::Status allowed = who.ok() ? who->Require(scope) : who.status();
          if (allowed.ok() && session_id_.empty())
            allowed = InvalidArgumentError(field, "is required");
          if (allowed.ok()) allowed = valid;
          if (!allowed.ok()) return located_(allowed);
          tenant_id_ = who->tenant_id;
          FindSession();
        });
  }

  // Readies `client` for a downstream call made for this caller: its trace and deadline.
  void Prepare(grpc::ClientContext& client, absl::Duration cap) const {
    telemetry::PrepareDownstream(*context_, client, cap);
  }

  // Cancels the downstream call in flight, and any not yet started.
  void CancelDownstream() {
    session_context_.TryCancel();
    acquire_context_.TryCancel();
    call_context_.TryCancel();
  }

  // Idempotency, for a call that changes something (Exec, WriteFile): the key of the
  // `idempotency-key` header, if the caller sent one (INVALID_ARGUMENT for a malformed
  // one; the header is ignored where the gateway keeps no idempotency store).
  absl::Status ReadIdempotencyKey() {
    if (downstream_.idempotency == nullptr) return absl::OkStatus();
    absl::StatusOr<std::optional<std::string>> key = IdempotencyKeyOf(*context_);
    if (!key.ok()) return key.status();
    key_ = *std::move(key);
    return absl::OkStatus();
  }
  bool has_idempotency_key() const { return key_.has_value(); }
  bool claimed() const { return claim_.has_value(); }

  // Claims the key for `method` and `identity` (what a retry must repeat: the caller's
  // tenant and request, whichever sandbox serves the session) and then acquires the
  // sandbox; or hands `replay` the first outcome of an earlier call with this key (the
  // replay trailer set), or `refused` the status Begin failed with. Called once the
  // session is found and before a sandbox is acquired: a retry that only replays never
  // creates or resumes one. The key stays held for as long as the call may run (its
  // stream deadline, and a margin for the relay), so a retry can never start a second
  // run while the first one still runs.
  using Replay = std::function<void(const grpc::Status& status, const std::string& response)>;
  void ClaimThenAcquire(const char* method, const google::protobuf::Message& identity,
                        Replay replay, std::function<void(const grpc::Status&)> refused) {
    const absl::Duration held = downstream_.stream_timeout + absl::Minutes(1);
    downstream_.idempotency->Begin(
        tenant_id_, method, *key_, identity,
        [this, replay = std::move(replay),
         refused = std::move(refused)](absl::StatusOr<IdempotencyStore::Started> started) {
          if (!started.ok()) return refused(ToGrpcStatus(started.status()));
          if (started->claim) {
            claim_ = std::move(started->claim);
            return AcquireSandbox();
          }
          context_->AddTrailingMetadata(kIdempotentReplayedTrailer, "true");
          replay(started->replay_status, started->replay_response);
        },
        held);
  }

  // Runs `then` (which answers the caller) once a claimed call's outcome — `answer`, and
  // `response` when it is OK — is recorded (or its key released, for a failure a retry
  // may not meet), so that a retry sent after the answer finds it; at once without a
  // claim.
  void RecordThen(const grpc::Status& answer, const google::protobuf::Message* response,
                  std::function<void()> then) {
    if (!claim_) return then();
    downstream_.idempotency->Complete(*std::move(claim_), answer, response, std::move(then));
  }

  const std::string& tenant_id() const { return tenant_id_; }
  // The replica that owns the located sandbox (set before Locate's `done` runs with an id).
  SandboxAsync* sandbox() const { return owner_->async(); }
  const SandboxApi::Downstream& downstream() const { return downstream_; }

  grpc::CallbackServerContext* const context_;
  // The operation's own call to sandbox-svc.
  grpc::ClientContext call_context_;

 private:
  void FindSession() {
    Prepare(session_context_, downstream_.unary_timeout);
    get_session_.set_tenant_id(tenant_id_);
    get_session_.set_session_id(session_id_);
    downstream_.store->async()->GetSession(
        &session_context_, &get_session_, &session_, [this](grpc::Status status) {
          if (!status.ok()) return located_(FromGrpcStatus(status));
          if (session_.session().status() == v1::SESSION_STATUS_CLOSED) {
            absl::Status closed = absl::FailedPreconditionError("the session is closed");
            SetErrorInfo(closed, "SESSION_CLOSED");
            return located_(closed);
          }
          SessionFound();
        });
  }

 protected:
  // Runs once the caller's session is found, before its sandbox is acquired: an
  // override that may end the call without a sandbox calls AcquireSandbox() to go on.
  virtual void SessionFound() { AcquireSandbox(); }

  // Acquires the session's sandbox, then answers Locate's `done`.
  void AcquireSandbox() {
    Prepare(acquire_context_, downstream_.unary_timeout);
    acquire_.set_tenant_id(tenant_id_);
    acquire_.set_session_id(session_id_);
    acquire_.set_template_(session_.session().agent_config().sandbox_template());
    downstream_.sandbox->Any().async()->AcquireForSession(
        &acquire_context_, &acquire_, &acquired_, [this](grpc::Status status) {
          if (!status.ok()) return located_(FromGrpcStatus(status));
          absl::StatusOr<sandbox::SandboxReplicas::Stub*> owner =
              downstream_.sandbox->ForSandbox(acquired_.sandbox().id());
          if (!owner.ok()) return located_(owner.status());
          owner_ = *owner;
          located_(acquired_.sandbox().id());
        });
  }

 private:
  Authenticator& authenticator_;
  const SandboxApi::Downstream& downstream_;
  Located located_;
  std::string session_id_;
  std::string tenant_id_;
  grpc::ClientContext session_context_;
  store_pb::GetSessionRequest get_session_;
  store_pb::GetSessionResponse session_;
  grpc::ClientContext acquire_context_;
  sandbox_pb::AcquireForSessionRequest acquire_;
  sandbox_pb::AcquireForSessionResponse acquired_;
  sandbox::SandboxReplicas::Stub* owner_ = nullptr;
  std::optional<std::string> key_;                // The idempotency key, if any.
  std::optional<IdempotencyStore::Claim> claim_;  // Held while a keyed call runs.
};

// ---------------------------------------------------------------------------------
// Server streams (Exec, ReadFile): sandbox-svc's stream relayed message by message.

template <typename PublicReq, typename PublicMsg, typename InternalReq, typename InternalMsg>
class DownloadCall final : public SandboxCall, public grpc::ServerWriteReactor<PublicMsg> {
 public:
  struct Ops {
    const char* scope;
    // The internal request for the public one (tenant and sandbox are set afterwards).
    void (*build)(const PublicReq&, InternalReq*);
    void (*launch)(SandboxAsync*, grpc::ClientContext*, const InternalReq*,
                   grpc::ClientReadReactor<InternalMsg>*);
    // One message of sandbox-svc's stream as the public message.
    absl::Status (*convert)(InternalMsg&, PublicMsg*);
    // The internal request's own fields, checked before any sandbox is touched.
    absl::Status (*validate)(const InternalReq&);
    // For a call that changes something (Exec): filed under this method, an
    // `idempotency-key` header makes it run at most once, and a retry gets the message
    // `outcome` picks (the exit) again instead of running it (the output is not kept).
    // Null: the header is ignored.
    const char* idempotent_method = nullptr;
    bool (*outcome)(const PublicMsg&) = nullptr;
  };

  DownloadCall(Authenticator& authenticator, const SandboxApi::Downstream& downstream,
               grpc::CallbackServerContext* context, const PublicReq& request, Ops ops)
      : SandboxCall(authenticator, downstream, context), ops_(ops) {
    upstream_.call = this;
    ops_.build(request, &request_);
    absl::Status valid = ops_.validate(request_);
    if (valid.ok() && ops_.idempotent_method != nullptr) valid = ReadIdempotencyKey();
    Locate(ops_.scope, request.session_id(), "session_id", std::move(valid),
           [this](absl::StatusOr<std::string> sandbox_id) {
             if (sandbox_id.ok()) return Start(*sandbox_id);
             const grpc::Status failed = ToGrpcStatus(sandbox_id.status());
             RecordThen(failed, nullptr, [this, failed] { this->Finish(failed); });
           });
  }

  void OnCancel() override { CancelDownstream(); }
  void OnWriteDone(bool ok) override {
    if (replaying_) return this->Finish(grpc::Status::OK);
    if (ok) return upstream_.StartRead(&in_);
    call_context_.TryCancel();  // The caller is gone: read no further.
    upstream_.RemoveHold();
  }
  void OnDone() override { Release(); }

 private:
  struct Upstream final : grpc::ClientReadReactor<InternalMsg> {
    DownloadCall* call;
    void OnReadDone(bool ok) override { call->OnUpstreamRead(ok); }
    void OnDone(const grpc::Status& status) override { call->OnUpstreamDone(status); }
  };

  // With an idempotency key: claimed for this call, or the first outcome replayed.
  void SessionFound() override {
    if (!has_idempotency_key()) return AcquireSandbox();
    request_.set_tenant_id(tenant_id());
    ClaimThenAcquire(
        ops_.idempotent_method, request_,
        [this](const grpc::Status& status, const std::string& response) {
          if (!status.ok()) return this->Finish(status);
          if (!out_.ParseFromString(response)) {
            return this->Finish(
                grpc::Status(grpc::StatusCode::INTERNAL, "unreadable recorded outcome"));
          }
          replaying_ = true;
          this->StartWrite(&out_);
        },
        [this](const grpc::Status& refused) { this->Finish(refused); });
  }

  void Start(const std::string& sandbox_id) {
    request_.set_tenant_id(tenant_id());
    request_.set_sandbox_id(sandbox_id);
    refs_.fetch_add(1);  // The upstream side, until its OnDone.
    Prepare(call_context_, downstream().stream_timeout);
    ops_.launch(sandbox(), &call_context_, &request_, &upstream_);
    // The next read starts from OnWriteDone, outside the upstream call's reactions: the
    // hold keeps that call from completing until no further read will be made.
    upstream_.AddHold();
    upstream_.StartRead(&in_);
    upstream_.StartCall();
  }

  void OnUpstreamRead(bool ok) {
    if (!ok) {
      upstream_.RemoveHold();  // The stream ended; OnDone follows with its status.
      return;
    }
    out_.Clear();
    if (absl::Status converted = ops_.convert(in_, &out_); !converted.ok()) {
      failure_ = ToGrpcStatus(converted);
      call_context_.TryCancel();
      upstream_.RemoveHold();
      return;
    }
    if (claimed() && ops_.outcome(out_)) outcome_ = out_;
    this->StartWrite(&out_);
  }

  void OnUpstreamDone(const grpc::Status& status) {
    const grpc::Status answer = failure_.ok() ? Public(status) : failure_;
    RecordThen(answer, &outcome_, [this, answer] {
      this->Finish(answer);
      Release();
    });
  }

  void Release() {
    if (refs_.fetch_sub(1) == 1) delete this;
  }

  const Ops ops_;
  InternalReq request_;
  Upstream upstream_;
  InternalMsg in_;
  PublicMsg out_;
  grpc::Status failure_;      // Set before the upstream is cancelled for a reason of ours.
  std::atomic<int> refs_{1};  // The server side, until its OnDone.
  // With an idempotency key: the outcome the call records, and whether it only replays
  // an earlier one.
  PublicMsg outcome_;
  bool replaying_ = false;
};

absl::Status ConvertExec(sandboxd_pb::ExecResponse& in, v1::ExecResponse* out) {
  switch (in.output_case()) {
    case sandboxd_pb::ExecResponse::kStdout:
      out->set_stdout(std::move(*in.mutable_stdout()));
      return absl::OkStatus();
    case sandboxd_pb::ExecResponse::kStderr:
      out->set_stderr(std::move(*in.mutable_stderr()));
      return absl::OkStatus();
    case sandboxd_pb::ExecResponse::kExit:
      out->mutable_exit()->Swap(in.mutable_exit());
      return absl::OkStatus();
    default:
      return absl::InternalError("sandbox-svc sent an exec message of an unknown kind");
  }
}

absl::Status ConvertRead(sandboxd_pb::ReadFileResponse& in, v1::ReadFileResponse* out) {
  if (in.has_info()) out->mutable_info()->Swap(in.mutable_info());
  out->set_data(std::move(*in.mutable_data()));
  return absl::OkStatus();
}

using ExecCall = DownloadCall<v1::ExecRequest, v1::ExecResponse, sandbox_pb::ExecRequest,
                              sandboxd_pb::ExecResponse>;
using ReadCall = DownloadCall<v1::ReadFileRequest, v1::ReadFileResponse,
                              sandbox_pb::ReadFileRequest, sandboxd_pb::ReadFileResponse>;

// ---------------------------------------------------------------------------------
// WriteFile: the caller's stream relayed message by message, committed on half-close.
//
// With an `idempotency-key` header the upload runs at most once: the key is claimed
// once the session is found (before a sandbox is acquired), and a retry reads the
// caller's stream to its end, drops it and answers with the first upload's outcome. The
// header (session, path, mode, append, size) is what a retry must repeat; the data is
// not compared.

class UploadCall final : public SandboxCall, public grpc::ServerReadReactor<v1::WriteFileRequest> {
 public:
  UploadCall(Authenticator& authenticator, const SandboxApi::Downstream& downstream,
             grpc::CallbackServerContext* context, v1::WriteFileResponse* response)
      : SandboxCall(authenticator, downstream, context), response_(response) {
    upstream_.call = this;
    StartRead(&in_);  // The header names the session.
  }

  void OnCancel() override { CancelDownstream(); }
  void OnReadDone(bool ok) override {
    if (replaying_) return ok ? StartRead(&in_) : Finish(replay_status_);
    if (!started_) return OnHeader(ok);
    if (!ok) {
      // A half-close commits the file; a cancelled call must leave it untouched (the
      // cancel also reaches the upstream call through OnCancel).
      if (context_->IsCancelled()) {
        call_context_.TryCancel();
      } else {
        upstream_.StartWritesDone();
      }
      upstream_.RemoveHold();
      return;
    }
    if (in_.has_header()) {
      failure_ =
          ToGrpcStatus(InvalidArgumentError("header", "only the first message may be a header"));
      call_context_.TryCancel();
      upstream_.RemoveHold();
      return;
    }
    out_.Clear();
    out_.set_data(std::move(*in_.mutable_data()));
    upstream_.StartWrite(&out_);
  }
  void OnDone() override { Release(); }

 private:
  struct Upstream final : grpc::ClientWriteReactor<sandbox_pb::WriteFileRequest> {
    UploadCall* call;
    void OnWriteDone(bool ok) override { call->OnUpstreamWriteDone(ok); }
    void OnDone(const grpc::Status& status) override { call->OnUpstreamDone(status); }
  };

  void OnHeader(bool ok) {
    if (!ok || !in_.has_header()) {
      return Finish(ToGrpcStatus(
          InvalidArgumentError("header", "the first message must be a WriteFileHeader")));
    }
    const v1::WriteFileHeader& header = in_.header();
    sandboxd_pb::WriteFileHeader* out = out_.mutable_header()->mutable_file();
    out->set_path(header.path());
    out->set_mode(header.mode());
    out->set_create_parents(header.create_parents());
    out->set_append(header.append());
    if (header.has_size()) out->set_size(header.size());
    absl::Status valid = ValidateWriteHeader(*out, "header.");
    if (valid.ok()) valid = ReadIdempotencyKey();
    if (has_idempotency_key()) identity_ = header;
    Locate(kScopeSandboxFiles, header.session_id(), "header.session_id", std::move(valid),
           [this](absl::StatusOr<std::string> sandbox_id) {
             if (sandbox_id.ok()) return Start(*sandbox_id);
             const grpc::Status failed = ToGrpcStatus(sandbox_id.status());
             RecordThen(failed, nullptr, [this, failed] { Finish(failed); });
           });
  }

  // With an idempotency key: claimed for this upload, or the first outcome replayed
  // once the retry's data is read to its end and dropped.
  void SessionFound() override {
    if (!has_idempotency_key()) return AcquireSandbox();
    ClaimThenAcquire(
        "WriteFile", identity_,
        [this](const grpc::Status& status, const std::string& response) {
          replay_status_ = status;
          if (status.ok() && !response_->ParseFromString(response)) {
            replay_status_ =
                grpc::Status(grpc::StatusCode::INTERNAL, "unreadable recorded outcome");
          }
          replaying_ = true;
          StartRead(&in_);
        },
        [this](const grpc::Status& refused) { Finish(refused); });
  }

  void Start(const std::string& sandbox_id) {
    started_ = true;
    out_.mutable_header()->set_tenant_id(tenant_id());
    out_.mutable_header()->set_sandbox_id(sandbox_id);
    refs_.fetch_add(1);  // The upstream side, until its OnDone.
    Prepare(call_context_, downstream().stream_timeout);
    sandbox()->WriteFile(&call_context_, &upstream_response_, &upstream_);
    // Writes start from OnReadDone, outside the upstream call's reactions: hold the call
    // open until the last one is issued.
    upstream_.AddHold();
    upstream_.StartWrite(&out_);
    upstream_.StartCall();
  }

  void OnUpstreamWriteDone(bool ok) {
    if (ok) return StartRead(&in_);
    upstream_.RemoveHold();  // The upstream call ended; its OnDone has the status.
  }

  void OnUpstreamDone(const grpc::Status& status) {
    const grpc::Status answer = failure_.ok() ? Public(status) : failure_;
    if (answer.ok()) {
      response_->mutable_info()->Swap(upstream_response_.mutable_info());
      response_->set_bytes_written(upstream_response_.bytes_written());
    }
    RecordThen(answer, response_, [this, answer] {
      Finish(answer);
      Release();
    });
  }

  void Release() {
    if (refs_.fetch_sub(1) == 1) delete this;
  }

  v1::WriteFileResponse* const response_;
  Upstream upstream_;
  v1::WriteFileRequest in_;
  sandbox_pb::WriteFileRequest out_;
  sandboxd_pb::WriteFileResponse upstream_response_;
  // Reads and the upstream's start happen one after another (each read is started only
  // once the previous step is over), so these need no lock.
  bool started_ = false;
  grpc::Status failure_;
  std::atomic<int> refs_{1};  // The server side, until its OnDone.
  // With an idempotency key: what a retry must repeat, and for a retry, the first
  // outcome it answers with once its stream ends.
  v1::WriteFileHeader identity_;
  bool replaying_ = false;
  grpc::Status replay_status_;
};

// ---------------------------------------------------------------------------------
// Unary calls (ListFiles, StatFile).

template <typename PublicResp, typename InternalReq, typename InternalResp>
class UnaryCall final : public SandboxCall, public grpc::ServerUnaryReactor {
 public:
  using Launch = void (*)(SandboxAsync*, grpc::ClientContext*, const InternalReq*, InternalResp*,
                          std::function<void(grpc::Status)>);
  using Reply = void (*)(InternalResp&, PublicResp*);

  UnaryCall(Authenticator& authenticator, const SandboxApi::Downstream& downstream,
            grpc::CallbackServerContext* context, const std::string& session_id, absl::Status valid,
            InternalReq request, PublicResp* response, Launch launch, Reply reply)
      : SandboxCall(authenticator, downstream, context),
        request_(std::move(request)),
        response_(response),
        launch_(launch),
        reply_(reply) {
    Locate(kScopeSandboxFiles, session_id, "session_id", std::move(valid),
           [this](absl::StatusOr<std::string> sandbox_id) {
             if (!sandbox_id.ok()) return Finish(ToGrpcStatus(sandbox_id.status()));
             request_.set_tenant_id(tenant_id());
             request_.set_sandbox_id(*sandbox_id);
             Prepare(call_context_, this->downstream().unary_timeout);
             launch_(sandbox(), &call_context_, &request_, &internal_, [this](grpc::Status status) {
               if (status.ok()) reply_(internal_, response_);
               Finish(Public(status));
             });
           });
  }

  void OnCancel() override { CancelDownstream(); }
  void OnDone() override { delete this; }

 private:
  InternalReq request_;
  InternalResp internal_;
  PublicResp* const response_;
  const Launch launch_;
  const Reply reply_;
};

}  // namespace

SandboxApi::SandboxApi(Authenticator& authenticator, Downstream downstream)
    : authenticator_(authenticator), downstream_(std::move(downstream)) {}

grpc::ServerWriteReactor<v1::ExecResponse>* SandboxApi::Exec(grpc::CallbackServerContext* context,
                                                             const v1::ExecRequest* request) {
  return new ExecCall(
      authenticator_, downstream_, context, *request,
      {.scope = kScopeSandboxExec,
       .build =
           [](const v1::ExecRequest& in, sandbox_pb::ExecRequest* out) {
             sandboxd_pb::ExecRequest* command = out->mutable_command();
             *command->mutable_argv() = in.argv();
             *command->mutable_env() = in.env();
             command->set_cwd(in.cwd());
             command->set_stdin(in.stdin());
             command->set_timeout_ms(in.timeout_ms());
           },
       .launch =
           [](SandboxAsync* stub, grpc::ClientContext* context, const sandbox_pb::ExecRequest* req,
              grpc::ClientReadReactor<sandboxd_pb::ExecResponse>* reactor) {
             stub->Exec(context, req, reactor);
           },
       .convert = ConvertExec,
       .validate =
           [](const sandbox_pb::ExecRequest& req) { return ValidateExecCommand(req.command()); },
       .idempotent_method = "Exec",
       .outcome = [](const v1::ExecResponse& message) { return message.has_exit(); }});
}

grpc::ServerWriteReactor<v1::ReadFileResponse>* SandboxApi::ReadFile(
    grpc::CallbackServerContext* context, const v1::ReadFileRequest* request) {
  return new ReadCall(
      authenticator_, downstream_, context, *request,
      {.scope = kScopeSandboxFiles,
       .build =
           [](const v1::ReadFileRequest& in, sandbox_pb::ReadFileRequest* out) {
             sandboxd_pb::ReadFileRequest* file = out->mutable_file();
             file->set_path(in.path());
             file->set_offset_bytes(in.offset_bytes());
             file->set_limit_bytes(in.limit_bytes());
           },
       .launch =
           [](SandboxAsync* stub, grpc::ClientContext* context,
              const sandbox_pb::ReadFileRequest* req,
              grpc::ClientReadReactor<sandboxd_pb::ReadFileResponse>* reactor) {
             stub->ReadFile(context, req, reactor);
           },
       .convert = ConvertRead,
       .validate =
           [](const sandbox_pb::ReadFileRequest& req) { return ValidateReadFile(req.file()); }});
}

grpc::ServerReadReactor<v1::WriteFileRequest>* SandboxApi::WriteFile(
    grpc::CallbackServerContext* context, v1::WriteFileResponse* response) {
  return new UploadCall(authenticator_, downstream_, context, response);
}

grpc::ServerUnaryReactor* SandboxApi::ListFiles(grpc::CallbackServerContext* context,
                                                const v1::ListFilesRequest* request,
                                                v1::ListFilesResponse* response) {
  sandbox_pb::ListFilesRequest internal;
  sandboxd_pb::ListDirRequest* list = internal.mutable_list();
  list->set_path(request->path());
  list->set_recursive(request->recursive());
  list->set_max_entries(request->max_entries());
  absl::Status valid = ValidateListDir(*list);
  return new UnaryCall<v1::ListFilesResponse, sandbox_pb::ListFilesRequest,
                       sandboxd_pb::ListDirResponse>(
      authenticator_, downstream_, context, request->session_id(), std::move(valid),
      std::move(internal), response,
      [](SandboxAsync* stub, grpc::ClientContext* context, const sandbox_pb::ListFilesRequest* req,
         sandboxd_pb::ListDirResponse* resp,
         std::function<void(grpc::Status)> done) { stub->ListFiles(context, req, resp, done); },
      [](sandboxd_pb::ListDirResponse& in, v1::ListFilesResponse* out) {
        out->mutable_entries()->Swap(in.mutable_entries());
        out->set_truncated(in.truncated());
      });
}

grpc::ServerUnaryReactor* SandboxApi::StatFile(grpc::CallbackServerContext* context,
                                               const v1::StatFileRequest* request,
                                               v1::StatFileResponse* response) {
  sandbox_pb::StatFileRequest internal;
  internal.mutable_stat()->set_path(request->path());
  absl::Status valid = ValidateStat(internal.stat());
  return new UnaryCall<v1::StatFileResponse, sandbox_pb::StatFileRequest,
                       sandboxd_pb::StatResponse>(
      authenticator_, downstream_, context, request->session_id(), std::move(valid),
      std::move(internal), response,
      [](SandboxAsync* stub, grpc::ClientContext* context, const sandbox_pb::StatFileRequest* req,
         sandboxd_pb::StatResponse* resp,
         std::function<void(grpc::Status)> done) { stub->StatFile(context, req, resp, done); },
      [](sandboxd_pb::StatResponse& in, v1::StatFileResponse* out) {
        out->mutable_info()->Swap(in.mutable_info());
      });
}

}  // namespace parley::gateway
