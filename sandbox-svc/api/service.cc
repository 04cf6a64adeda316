// The SandboxManager gRPC service. The proxies (Exec, ReadFile, WriteFile) pair a
// server reactor for the caller with a client reactor to the daemon. Each proxy
// object is reference-counted: one reference for the server side (released in its
// OnDone), one for the daemon side once its call started (released in its OnDone),
// and one for any work parked on the worker pool. Every path finishes the server side
// exactly once, after the daemon side has said how the call ended.
#include "sandbox-svc/api/service.h"

#include <atomic>
#include <functional>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "sandbox-svc/api/paths.h"
#include "sandbox-svc/util/exec_validation.h"
#include "sandbox-svc/util/request_validation.h"

namespace parley::sandbox {
namespace {

namespace sv1 = ::parley::sandbox::v1;
namespace sbd = ::parley::sandboxd::v1;
using Operation = SandboxManager::Operation;

absl::Status CheckTarget(const std::string& tenant_id, const std::string& sandbox_id) {
  if (absl::Status s = ValidateId(tenant_id, "tenant_id", true); !s.ok()) return s;
  return ValidateId(sandbox_id, "sandbox_id", true);
}

grpc::ServerUnaryReactor* FinishNow(grpc::CallbackServerContext* context,
                                    const absl::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

// Runs `op` (blocking) on the pool and finishes the call with its sandbox or error.
template <typename Response, typename Op>
grpc::ServerUnaryReactor* RunOnPool(ThreadPool& pool, grpc::CallbackServerContext* context,
                                    Response* response, Op op) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  pool.Schedule([reactor, response, op = std::move(op)] {
    absl::StatusOr<sv1::Sandbox> result = op();
    if (result.ok()) *response->mutable_sandbox() = *std::move(result);
    reactor->Finish(ToGrpcStatus(result.status()));
  });
  return reactor;
}

// A lifecycle change of one sandbox (Pause, Resume, Destroy).
using LifecycleChange = absl::StatusOr<sv1::Sandbox> (SandboxManager::*)(
    const std::string& tenant_id, const std::string& sandbox_id);

// Validates the target inline, then runs `change` on the pool.
template <typename Request, typename Response>
grpc::ServerUnaryReactor* ChangeOnPool(SandboxManager& manager, ThreadPool& pool,
                                       grpc::CallbackServerContext* context, const Request* request,
                                       Response* response, LifecycleChange change) {
  if (absl::Status s = CheckTarget(request->tenant_id(), request->sandbox_id()); !s.ok()) {
    return FinishNow(context, s);
  }
  return RunOnPool(pool, context, response, [&manager, request, change] {
    return (manager.*change)(request->tenant_id(), request->sandbox_id());
  });
}

// Readies a daemon call made on behalf of `server`'s caller: the daemon's token and the
// caller's deadline.
void PrepareDaemonCall(Operation& operation, const grpc::CallbackServerContext* server,
                       grpc::ClientContext& client) {
  operation.daemon().Prepare(client);
  auto deadline = server->deadline();
  if (deadline != std::chrono::system_clock::time_point::max()) client.set_deadline(deadline);
}

// A daemon call ended UNAVAILABLE: is the sandbox dead or just slow? That check may
// block, so it runs on the pool; `finish` gets the status to answer the caller with
// (SANDBOX_GONE or the original error) there.
void JudgeUnavailableOnPool(SandboxManagerService* service, std::string sandbox_id,
                            const grpc::Status& status, std::function<void(absl::Status)> finish) {
  service->pool().Schedule(
      [service, sandbox_id = std::move(sandbox_id), status, finish = std::move(finish)] {
        finish(service->manager().DaemonFailed(sandbox_id, FromGrpcStatus(status)));
      });
}

// What the two streaming proxies share about their daemon call: its client context and
// whether the caller cancelled before or after the call started. A cancel after the start
// cancels the daemon call; one before it makes Start finish without starting it.
class DaemonCallOwner {
 protected:
  void OnServerCancel() {
    bool started;
    {
      absl::MutexLock lock(&mu_);
      cancelled_ = true;
      started = daemon_started_;
    }
    if (started) client_context_.TryCancel();
  }

  grpc::ClientContext client_context_;
  absl::Mutex mu_;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool daemon_started_ ABSL_GUARDED_BY(mu_) = false;
};

void Convert(sbd::ExecResponse& in, sv1::ExecResponse* out) {
  out->Clear();
  switch (in.output_case()) {
    case sbd::ExecResponse::kStdout:
      out->set_stdout(std::move(*in.mutable_stdout()));
      break;
    case sbd::ExecResponse::kStderr:
      out->set_stderr(std::move(*in.mutable_stderr()));
      break;
    case sbd::ExecResponse::kExit:
      *out->mutable_exit() = in.exit();
      break;
    default:
      break;
  }
}

void Convert(sbd::ReadFileResponse& in, sv1::ReadFileResponse* out) {
  out->Clear();
  if (in.has_info()) *out->mutable_info() = in.info();
  out->set_data(std::move(*in.mutable_data()));
}

// Obtains an operation on the sandbox without blocking a gRPC thread: inline when the
// sandbox is READY and connected, else on the worker pool. `then` runs exactly once,
// with the operation or the error.
void WithOperation(SandboxManagerService* service, const std::string& tenant_id,
                   const std::string& sandbox_id,
                   std::function<void(absl::StatusOr<std::unique_ptr<Operation>>)> then) {
  absl::StatusOr<std::unique_ptr<Operation>> fast =
      service->manager().TryOperate(tenant_id, sandbox_id);
  if (!fast.ok() || *fast != nullptr) {
    then(std::move(fast));
    return;
  }
  service->pool().Schedule([service, tenant_id, sandbox_id, then = std::move(then)] {
    then(service->manager().Operate(tenant_id, sandbox_id));
  });
}

// ---------------------------------------------------------------------------------
// Server-streaming proxy (Exec, ReadFile)

template <typename ServerMsg, typename DaemonReq, typename DaemonMsg>
class StreamProxy : private DaemonCallOwner {
 public:
  using Launch = void (*)(sbd::Sandboxd::Stub::async_interface*, grpc::ClientContext*,
                          const DaemonReq*, grpc::ClientReadReactor<DaemonMsg>*);

  StreamProxy(SandboxManagerService* service, grpc::CallbackServerContext* context,
              std::string tenant_id, std::string sandbox_id, DaemonReq daemon_request,
              Launch launch)
      : service_(service),
        context_(context),
        tenant_id_(std::move(tenant_id)),
        sandbox_id_(std::move(sandbox_id)),
        daemon_request_(std::move(daemon_request)),
        launch_(launch) {
    server_.proxy = this;
    daemon_.proxy = this;
  }

  // Starts the proxy (or finishes it with `validation`); returns the server reactor.
  grpc::ServerWriteReactor<ServerMsg>* Begin(const absl::Status& validation) {
    if (!validation.ok()) {
      server_.Finish(ToGrpcStatus(validation));
      return &server_;
    }
    refs_.fetch_add(1);  // For the operation lookup, which may park on the pool.
    WithOperation(service_, tenant_id_, sandbox_id_,
                  [this](absl::StatusOr<std::unique_ptr<Operation>> operation) {
                    Start(std::move(operation));
                    Release();
                  });
    return &server_;
  }

 private:
  struct ServerSide : grpc::ServerWriteReactor<ServerMsg> {
    StreamProxy* proxy;
    void OnWriteDone(bool ok) override { proxy->OnServerWriteDone(ok); }
    void OnCancel() override { proxy->OnServerCancel(); }
    void OnDone() override { proxy->Release(); }
  };
  struct DaemonSide : grpc::ClientReadReactor<DaemonMsg> {
    StreamProxy* proxy;
    void OnReadDone(bool ok) override { proxy->OnDaemonRead(ok); }
    void OnDone(const grpc::Status& status) override { proxy->OnDaemonDone(status); }
  };

  void Start(absl::StatusOr<std::unique_ptr<Operation>> operation) {
    if (!operation.ok()) {
      server_.Finish(ToGrpcStatus(operation.status()));
      return;
    }
    {
      absl::MutexLock lock(&mu_);
      if (cancelled_) {
        server_.Finish(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the caller"));
        return;
      }
      daemon_started_ = true;
    }
    refs_.fetch_add(1);  // The daemon side.
    operation_ = *std::move(operation);
    PrepareDaemonCall(*operation_, context_, client_context_);
    launch_(operation_->daemon().stub().async(), &client_context_, &daemon_request_, &daemon_);
    // Reads are started from the server side's OnWriteDone, outside the daemon call's
    // own reactions: the hold keeps that call from completing (and being freed) until
    // we say no read will follow.
    daemon_.AddHold();
    daemon_.StartRead(&in_);
    daemon_.StartCall();
  }

  void OnDaemonRead(bool ok) {
    if (!ok) {
      daemon_.RemoveHold();  // The stream ended; OnDone follows with the status.
      return;
    }
    Convert(in_, &out_);
    server_.StartWrite(&out_);
  }

  void OnServerWriteDone(bool ok) {
    if (ok) {
      daemon_.StartRead(&in_);
    } else {
      client_context_.TryCancel();  // The caller is gone: no further read.
      daemon_.RemoveHold();
    }
  }

  void OnDaemonDone(const grpc::Status& status) {
    if (status.error_code() == grpc::StatusCode::UNAVAILABLE) {
      refs_.fetch_add(1);
      JudgeUnavailableOnPool(service_, sandbox_id_, status, [this](absl::Status result) {
        operation_.reset();
        server_.Finish(ToGrpcStatus(result));
        Release();
      });
    } else {
      operation_.reset();
      server_.Finish(status);
    }
    Release();
  }

  void Release() {
    if (refs_.fetch_sub(1) == 1) delete this;
  }

  SandboxManagerService* service_;
  grpc::CallbackServerContext* context_;
  std::string tenant_id_;
  std::string sandbox_id_;
  DaemonReq daemon_request_;
  Launch launch_;
  ServerSide server_;
  DaemonSide daemon_;
  std::unique_ptr<Operation> operation_;
  DaemonMsg in_;
  ServerMsg out_;
  std::atomic<int> refs_{1};  // The server side.
};

using ExecProxy = StreamProxy<sv1::ExecResponse, sbd::ExecRequest, sbd::ExecResponse>;
using ReadProxy = StreamProxy<sv1::ReadFileResponse, sbd::ReadFileRequest, sbd::ReadFileResponse>;

// ---------------------------------------------------------------------------------
// Client-streaming proxy (WriteFile)

class WriteProxy : private DaemonCallOwner {
 public:
  WriteProxy(SandboxManagerService* service, grpc::CallbackServerContext* context,
             sv1::WriteFileResponse* response)
      : service_(service), context_(context), response_(response) {
    server_.proxy = this;
    daemon_.proxy = this;
  }

  grpc::ServerReadReactor<sv1::WriteFileRequest>* Begin() {
    server_.StartRead(&in_);
    return &server_;
  }

 private:
  struct ServerSide : grpc::ServerReadReactor<sv1::WriteFileRequest> {
    WriteProxy* proxy;
    void OnReadDone(bool ok) override { proxy->OnServerRead(ok); }
    void OnCancel() override { proxy->OnServerCancel(); }
    void OnDone() override { proxy->Release(); }
  };
  struct DaemonSide : grpc::ClientWriteReactor<sbd::WriteFileRequest> {
    WriteProxy* proxy;
    void OnWriteDone(bool ok) override { proxy->OnDaemonWriteDone(ok); }
    void OnDone(const grpc::Status& status) override { proxy->OnDaemonDone(status); }
  };

  // Finishes the server side once, whoever gets there first.
  void FinishServer(const grpc::Status& status) {
    {
      absl::MutexLock lock(&mu_);
      if (finished_) return;
      finished_ = true;
    }
    server_.Finish(status);
  }

  absl::Status ValidateHeader() {
    if (!in_.has_header()) {
      return InvalidArgumentError("header", "the first message must be a WriteFileHeader");
    }
    const sv1::WriteFileHeader& header = in_.header();
    if (absl::Status s = CheckTarget(header.tenant_id(), header.sandbox_id()); !s.ok()) return s;
    if (absl::Status s = CheckCallerPath(header.path(), "header.path"); !s.ok()) return s;
    if (header.path().empty()) return InvalidArgumentError("header.path", "required");
    return ValidateMode(header.mode(), "header.mode");
  }

  void OnServerRead(bool ok) {
    {
      absl::MutexLock lock(&mu_);
      if (finished_) return;
    }
    if (!header_seen_) {
      if (!ok) {
        FinishServer(ToGrpcStatus(
            InvalidArgumentError("header", "the stream ended before a WriteFileHeader")));
        return;
      }
      if (absl::Status s = ValidateHeader(); !s.ok()) {
        FinishServer(ToGrpcStatus(s));
        return;
      }
      header_seen_ = true;
      const sv1::WriteFileHeader& header = in_.header();
      sandbox_id_ = header.sandbox_id();
      sbd::WriteFileHeader* out = out_.mutable_header();
      out->set_path(header.path());
      out->set_mode(header.mode());
      out->set_create_parents(header.create_parents());
      out->set_append(header.append());
      refs_.fetch_add(1);
      WithOperation(service_, header.tenant_id(), header.sandbox_id(),
                    [this](absl::StatusOr<std::unique_ptr<Operation>> operation) {
                      Start(std::move(operation));
                      Release();
                    });
      return;
    }
    if (!ok) {
      daemon_.StartWritesDone();  // The caller half-closed: commit.
      ReleaseDaemonHold();
      return;
    }
    if (in_.has_header()) {
      pending_error_ = InvalidArgumentError("header", "only the first message may be a header");
      client_context_.TryCancel();
      ReleaseDaemonHold();
      return;
    }
    if (absl::Status s = ValidateWriteChunk(in_.data()); !s.ok()) {
      pending_error_ = s;
      client_context_.TryCancel();
      ReleaseDaemonHold();
      return;
    }
    out_.Clear();
    out_.set_data(std::move(*in_.mutable_data()));
    daemon_.StartWrite(&out_);
  }

  void Start(absl::StatusOr<std::unique_ptr<Operation>> operation) {
    if (!operation.ok()) {
      FinishServer(ToGrpcStatus(operation.status()));
      return;
    }
    {
      absl::MutexLock lock(&mu_);
      if (cancelled_ || finished_) {
        finished_ = true;
        server_.Finish(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the caller"));
        return;
      }
      daemon_started_ = true;
    }
    refs_.fetch_add(1);  // The daemon side.
    operation_ = *std::move(operation);
    PrepareDaemonCall(*operation_, context_, client_context_);
    operation_->daemon().stub().async()->WriteFile(&client_context_, &daemon_response_, &daemon_);
    // Writes are started from the server side's OnReadDone, outside the daemon call's
    // own reactions: hold the call open until the last one is issued.
    daemon_.AddHold();
    daemon_.StartWrite(&out_);
    daemon_.StartCall();
  }

  void ReleaseDaemonHold() {
    {
      absl::MutexLock lock(&mu_);
      if (hold_released_) return;
      hold_released_ = true;
    }
    daemon_.RemoveHold();
  }

  void OnDaemonWriteDone(bool ok) {
    if (ok) {
      server_.StartRead(&in_);
    } else {
      ReleaseDaemonHold();  // The daemon's call ended; OnDone has the status.
    }
  }

  void OnDaemonDone(const grpc::Status& status) {
    if (!pending_error_.ok()) {
      operation_.reset();
      FinishServer(ToGrpcStatus(pending_error_));
    } else if (status.error_code() == grpc::StatusCode::UNAVAILABLE) {
      refs_.fetch_add(1);
      JudgeUnavailableOnPool(service_, sandbox_id_, status, [this](absl::Status result) {
        operation_.reset();
        FinishServer(ToGrpcStatus(result));
        Release();
      });
    } else {
      if (status.ok()) {
        *response_->mutable_info() = daemon_response_.info();
        response_->set_bytes_written(daemon_response_.bytes_written());
      }
      operation_.reset();
      FinishServer(status);
    }
    Release();
  }

  void Release() {
    if (refs_.fetch_sub(1) == 1) delete this;
  }

  SandboxManagerService* service_;
  grpc::CallbackServerContext* context_;
  sv1::WriteFileResponse* response_;
  ServerSide server_;
  DaemonSide daemon_;
  std::unique_ptr<Operation> operation_;
  std::string sandbox_id_;
  sv1::WriteFileRequest in_;
  sbd::WriteFileRequest out_;
  sbd::WriteFileResponse daemon_response_;
  bool header_seen_ = false;  // Only the gRPC read callbacks touch it, one at a time.
  absl::Status pending_error_;
  std::atomic<int> refs_{1};
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool hold_released_ ABSL_GUARDED_BY(mu_) = false;
};

// ---------------------------------------------------------------------------------
// Unary proxies

template <typename DaemonReq, typename DaemonResp>
struct UnaryCall {
  grpc::ClientContext context;
  DaemonReq request;
  DaemonResp response;
  std::unique_ptr<Operation> operation;
};

template <typename DaemonReq, typename DaemonResp, typename Launch, typename Fill>
grpc::ServerUnaryReactor* ProxyUnary(SandboxManagerService* service,
                                     grpc::CallbackServerContext* context,
                                     const std::string& tenant_id, const std::string& sandbox_id,
                                     const absl::Status& validation, DaemonReq request,
                                     Launch launch, Fill fill) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (!validation.ok()) {
    reactor->Finish(ToGrpcStatus(validation));
    return reactor;
  }
  auto call = std::make_shared<UnaryCall<DaemonReq, DaemonResp>>();
  call->request = std::move(request);
  WithOperation(service, tenant_id, sandbox_id,
                [service, context, reactor, call, launch, fill,
                 sandbox_id](absl::StatusOr<std::unique_ptr<Operation>> operation) {
                  if (!operation.ok()) {
                    reactor->Finish(ToGrpcStatus(operation.status()));
                    return;
                  }
                  call->operation = *std::move(operation);
                  PrepareDaemonCall(*call->operation, context, call->context);
                  launch(call->operation->daemon().stub().async(), &call->context, &call->request,
                         &call->response,
                         [service, reactor, call, fill, sandbox_id](grpc::Status status) {
                           if (status.error_code() == grpc::StatusCode::UNAVAILABLE) {
                             JudgeUnavailableOnPool(service, sandbox_id, status,
                                                    [reactor, call](absl::Status result) {
                                                      call->operation.reset();
                                                      reactor->Finish(ToGrpcStatus(result));
                                                    });
                             return;
                           }
                           if (status.ok()) fill(call->response);
                           call->operation.reset();
                           reactor->Finish(status);
                         });
                });
  return reactor;
}

}  // namespace

SandboxManagerService::SandboxManagerService(SandboxManager* manager, int lifecycle_threads)
    : manager_(manager), pool_(lifecycle_threads) {}

// ---------------------------------------------------------------------------------
// Templates and reads (inline)

grpc::ServerUnaryReactor* SandboxManagerService::ListTemplates(
    grpc::CallbackServerContext* context, const sv1::ListTemplatesRequest* request,
    sv1::ListTemplatesResponse* response) {
  for (sv1::Template& t : manager_->ListTemplates()) *response->add_templates() = std::move(t);
  return FinishNow(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* SandboxManagerService::GetTemplate(grpc::CallbackServerContext* context,
                                                             const sv1::GetTemplateRequest* request,
                                                             sv1::GetTemplateResponse* response) {
  absl::StatusOr<sv1::Template> result = manager_->GetTemplate(request->name());
  if (result.ok()) *response->mutable_template_() = *std::move(result);
  return FinishNow(context, result.status());
}

grpc::ServerUnaryReactor* SandboxManagerService::GetSandbox(grpc::CallbackServerContext* context,
                                                            const sv1::GetSandboxRequest* request,
                                                            sv1::GetSandboxResponse* response) {
  if (absl::Status s = CheckTarget(request->tenant_id(), request->sandbox_id()); !s.ok()) {
    return FinishNow(context, s);
  }
  absl::StatusOr<sv1::Sandbox> result = manager_->Get(request->tenant_id(), request->sandbox_id());
  if (result.ok()) *response->mutable_sandbox() = *std::move(result);
  return FinishNow(context, result.status());
}

grpc::ServerUnaryReactor* SandboxManagerService::ListSandboxes(
    grpc::CallbackServerContext* context, const sv1::ListSandboxesRequest* request,
    sv1::ListSandboxesResponse* response) {
  absl::StatusOr<sv1::ListSandboxesResponse> result = manager_->List(*request);
  if (result.ok()) *response = *std::move(result);
  return FinishNow(context, result.status());
}

// ---------------------------------------------------------------------------------
// Lifecycle (on the worker pool)

grpc::ServerUnaryReactor* SandboxManagerService::CreateSandbox(
    grpc::CallbackServerContext* context, const sv1::CreateSandboxRequest* request,
    sv1::CreateSandboxResponse* response) {
  return RunOnPool(pool_, context, response,
                   [this, request] { return manager_->Create(*request); });
}

grpc::ServerUnaryReactor* SandboxManagerService::AcquireForSession(
    grpc::CallbackServerContext* context, const sv1::AcquireForSessionRequest* request,
    sv1::AcquireForSessionResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  pool_.Schedule([this, reactor, request, response] {
    absl::StatusOr<SandboxManager::Acquired> result = manager_->AcquireForSession(*request);
    if (result.ok()) {
      *response->mutable_sandbox() = std::move(result->sandbox);
      response->set_created(result->created);
      response->set_resumed(result->resumed);
    }
    reactor->Finish(ToGrpcStatus(result.status()));
  });
  return reactor;
}

grpc::ServerUnaryReactor* SandboxManagerService::PauseSandbox(
    grpc::CallbackServerContext* context, const sv1::PauseSandboxRequest* request,
    sv1::PauseSandboxResponse* response) {
  return ChangeOnPool(*manager_, pool_, context, request, response, &SandboxManager::Pause);
}

grpc::ServerUnaryReactor* SandboxManagerService::ResumeSandbox(
    grpc::CallbackServerContext* context, const sv1::ResumeSandboxRequest* request,
    sv1::ResumeSandboxResponse* response) {
  return ChangeOnPool(*manager_, pool_, context, request, response, &SandboxManager::Resume);
}

grpc::ServerUnaryReactor* SandboxManagerService::DestroySandbox(
    grpc::CallbackServerContext* context, const sv1::DestroySandboxRequest* request,
    sv1::DestroySandboxResponse* response) {
  return ChangeOnPool(*manager_, pool_, context, request, response, &SandboxManager::Destroy);
}

// ---------------------------------------------------------------------------------
// Operations inside a sandbox (proxied)

grpc::ServerWriteReactor<sv1::ExecResponse>* SandboxManagerService::Exec(
    grpc::CallbackServerContext* context, const sv1::ExecRequest* request) {
  absl::Status validation = CheckTarget(request->tenant_id(), request->sandbox_id());
  if (validation.ok()) validation = ValidateExecFields(*request);
  sbd::ExecRequest daemon_request;
  *daemon_request.mutable_argv() = request->argv();
  *daemon_request.mutable_env() = request->env();
  daemon_request.set_cwd(request->cwd());
  daemon_request.set_stdin(request->stdin());
  daemon_request.set_timeout_ms(request->timeout_ms());
  auto* proxy = new ExecProxy(
      this, context, request->tenant_id(), request->sandbox_id(), std::move(daemon_request),
      [](sbd::Sandboxd::Stub::async_interface* async, grpc::ClientContext* client,
         const sbd::ExecRequest* daemon_request, grpc::ClientReadReactor<sbd::ExecResponse>* r) {
        async->Exec(client, daemon_request, r);
      });
  return proxy->Begin(validation);
}

grpc::ServerWriteReactor<sv1::ReadFileResponse>* SandboxManagerService::ReadFile(
    grpc::CallbackServerContext* context, const sv1::ReadFileRequest* request) {
  absl::Status validation = CheckTarget(request->tenant_id(), request->sandbox_id());
  if (validation.ok()) validation = CheckCallerPath(request->path());
  if (validation.ok() && request->path().empty()) {
    validation = InvalidArgumentError("path", "required");
  }
  sbd::ReadFileRequest daemon_request;
  daemon_request.set_path(request->path());
  daemon_request.set_offset_bytes(request->offset_bytes());
  daemon_request.set_limit_bytes(request->limit_bytes());
  auto* proxy = new ReadProxy(
      this, context, request->tenant_id(), request->sandbox_id(), std::move(daemon_request),
      [](sbd::Sandboxd::Stub::async_interface* async, grpc::ClientContext* client,
         const sbd::ReadFileRequest* daemon_request,
         grpc::ClientReadReactor<sbd::ReadFileResponse>* r) {
        async->ReadFile(client, daemon_request, r);
      });
  return proxy->Begin(validation);
}

grpc::ServerReadReactor<sv1::WriteFileRequest>* SandboxManagerService::WriteFile(
    grpc::CallbackServerContext* context, sv1::WriteFileResponse* response) {
  return (new WriteProxy(this, context, response))->Begin();
}

grpc::ServerUnaryReactor* SandboxManagerService::ListFiles(grpc::CallbackServerContext* context,
                                                           const sv1::ListFilesRequest* request,
                                                           sv1::ListFilesResponse* response) {
  absl::Status validation = CheckTarget(request->tenant_id(), request->sandbox_id());
  if (validation.ok()) validation = CheckCallerPath(request->path());
  if (validation.ok()) validation = ValidateMaxEntries(request->max_entries());
  sbd::ListDirRequest daemon_request;
  daemon_request.set_path(request->path());
  daemon_request.set_recursive(request->recursive());
  daemon_request.set_max_entries(request->max_entries());
  return ProxyUnary<sbd::ListDirRequest, sbd::ListDirResponse>(
      this, context, request->tenant_id(), request->sandbox_id(), validation,
      std::move(daemon_request),
      [](auto* async, auto* client, auto* req, auto* resp, auto done) {
        async->ListDir(client, req, resp, std::move(done));
      },
      [response](sbd::ListDirResponse& result) {
        *response->mutable_entries() = std::move(*result.mutable_entries());
        response->set_truncated(result.truncated());
      });
}

grpc::ServerUnaryReactor* SandboxManagerService::StatFile(grpc::CallbackServerContext* context,
                                                          const sv1::StatFileRequest* request,
                                                          sv1::StatFileResponse* response) {
  absl::Status validation = CheckTarget(request->tenant_id(), request->sandbox_id());
  if (validation.ok()) validation = CheckCallerPath(request->path());
  sbd::StatRequest daemon_request;
  daemon_request.set_path(request->path());
  return ProxyUnary<sbd::StatRequest, sbd::StatResponse>(
      this, context, request->tenant_id(), request->sandbox_id(), validation,
      std::move(daemon_request),
      [](auto* async, auto* client, auto* req, auto* resp, auto done) {
        async->Stat(client, req, resp, std::move(done));
      },
      [response](sbd::StatResponse& result) { *response->mutable_info() = result.info(); });
}

grpc::ServerUnaryReactor* SandboxManagerService::MakeDir(grpc::CallbackServerContext* context,
                                                         const sv1::MakeDirRequest* request,
                                                         sv1::MakeDirResponse* response) {
  absl::Status validation = CheckTarget(request->tenant_id(), request->sandbox_id());
  if (validation.ok()) validation = CheckCallerPath(request->path());
  if (validation.ok()) validation = ValidateMode(request->mode(), "mode");
  sbd::MakeDirRequest daemon_request;
  daemon_request.set_path(request->path());
  daemon_request.set_parents(request->parents());
  daemon_request.set_mode(request->mode());
  return ProxyUnary<sbd::MakeDirRequest, sbd::MakeDirResponse>(
      this, context, request->tenant_id(), request->sandbox_id(), validation,
      std::move(daemon_request),
      [](auto* async, auto* client, auto* req, auto* resp, auto done) {
        async->MakeDir(client, req, resp, std::move(done));
      },
      [response](sbd::MakeDirResponse& result) { *response->mutable_info() = result.info(); });
}

grpc::ServerUnaryReactor* SandboxManagerService::Remove(grpc::CallbackServerContext* context,
                                                        const sv1::RemoveRequest* request,
                                                        sv1::RemoveResponse* response) {
  absl::Status validation = CheckTarget(request->tenant_id(), request->sandbox_id());
  if (validation.ok()) validation = CheckCallerPath(request->path());
  sbd::RemoveRequest daemon_request;
  daemon_request.set_path(request->path());
  daemon_request.set_recursive(request->recursive());
  daemon_request.set_allow_missing(request->allow_missing());
  return ProxyUnary<sbd::RemoveRequest, sbd::RemoveResponse>(
      this, context, request->tenant_id(), request->sandbox_id(), validation,
      std::move(daemon_request),
      [](auto* async, auto* client, auto* req, auto* resp, auto done) {
        async->Remove(client, req, resp, std::move(done));
      },
      [response](sbd::RemoveResponse& result) { response->set_removed(result.removed()); });
}

}  // namespace parley::sandbox
