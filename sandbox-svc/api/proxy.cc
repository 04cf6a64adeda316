// The three proxy state machines: server-streaming (Exec, ReadFile), client-streaming
// (WriteFile) and unary (ListFiles, StatFile, MakeDir, Remove).
//
// The streaming proxies pair a server reactor for the caller with a client reactor to the
// daemon. Each proxy object is reference-counted: one reference for the server side
// (released in its OnDone), one for the daemon side once its call started (released in its
// OnDone), and one for any work parked on the worker pool. Every path finishes the server
// side exactly once, after the daemon side has said how the call ended. The daemon call
// takes the caller's embedded request and the caller's response object as they are: both
// belong to gRPC's server call, which outlives the daemon call.
#include "sandbox-svc/api/proxy.h"

#include <atomic>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "common/status.h"
#include "sandbox-svc/api/call_validation.h"
#include "sandbox-svc/contract/request_validation.h"

namespace parley::sandbox {
namespace {

namespace sandbox_pb = ::parley::sandbox::v1;
namespace sandboxd_pb = ::parley::sandboxd::v1;
using Operation = ProxyContext::Operation;

// Readies a daemon call made on behalf of `server`'s caller: the daemon's token and the
// caller's deadline.
void PrepareDaemonCall(Operation& operation, const grpc::CallbackServerContext* server,
                       grpc::ClientContext& client) {
  operation.daemon().Prepare(client);
  auto deadline = server->deadline();
  if (deadline != std::chrono::system_clock::time_point::max()) client.set_deadline(deadline);
}

// What the two streaming proxies share about their daemon call: the operation it runs
// under, its client context, and whether the caller cancelled before or after the call
// started. A cancel after the start cancels the daemon call; one before it makes the
// proxy finish without starting it.
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

  // Takes `operation` for the daemon call and readies the client context for `server`'s
  // caller. False (and `operation` dropped) when the caller cancelled first: answer
  // CancelledByCaller() then.
  bool TakeOperation(std::unique_ptr<Operation> operation,
                     const grpc::CallbackServerContext* server) {
    {
      absl::MutexLock lock(&mu_);
      if (cancelled_) return false;
      daemon_started_ = true;
    }
    operation_ = std::move(operation);
    PrepareDaemonCall(*operation_, server, client_context_);
    return true;
  }

  static grpc::Status CancelledByCaller() {
    return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the caller");
  }

  std::unique_ptr<Operation> operation_;
  grpc::ClientContext client_context_;
  absl::Mutex mu_;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool daemon_started_ ABSL_GUARDED_BY(mu_) = false;
};

// ---------------------------------------------------------------------------------
// Server-streaming proxy (Exec, ReadFile): the daemon's messages are written to the caller
// as they are read, from one buffer.

template <typename DaemonReq, typename Message>
class StreamProxy : private DaemonCallOwner {
 public:
  using Launch = void (SandboxdAsync::*)(grpc::ClientContext*, const DaemonReq*,
                                         grpc::ClientReadReactor<Message>*);

  StreamProxy(ProxyContext& proxies, grpc::CallbackServerContext* context, std::string sandbox_id,
              const DaemonReq& daemon_request, Launch launch)
      : proxies_(proxies),
        context_(context),
        sandbox_id_(std::move(sandbox_id)),
        daemon_request_(daemon_request),
        launch_(launch) {
    server_.proxy = this;
    daemon_.proxy = this;
  }

  // Starts the proxy (or finishes it with `validation`); returns the server reactor.
  grpc::ServerWriteReactor<Message>* Begin(const std::string& tenant_id,
                                           const absl::Status& validation) {
    if (!validation.ok()) {
      server_.Finish(ToGrpcStatus(validation));
      return &server_;
    }
    refs_.fetch_add(1);  // For the operation lookup, which may park on the pool.
    proxies_.WithOperation(tenant_id, sandbox_id_,
                           [this](absl::StatusOr<std::unique_ptr<Operation>> operation) {
                             Start(std::move(operation));
                             Release();
                           });
    return &server_;
  }

 private:
  struct ServerSide : grpc::ServerWriteReactor<Message> {
    StreamProxy* proxy;
    void OnWriteDone(bool ok) override { proxy->OnServerWriteDone(ok); }
    void OnCancel() override { proxy->OnServerCancel(); }
    void OnDone() override { proxy->Release(); }
  };
  struct DaemonSide : grpc::ClientReadReactor<Message> {
    StreamProxy* proxy;
    void OnReadDone(bool ok) override { proxy->OnDaemonRead(ok); }
    void OnDone(const grpc::Status& status) override { proxy->OnDaemonDone(status); }
  };

  void Start(absl::StatusOr<std::unique_ptr<Operation>> operation) {
    if (!operation.ok()) {
      server_.Finish(ToGrpcStatus(operation.status()));
      return;
    }
    if (!TakeOperation(*std::move(operation), context_)) {
      server_.Finish(CancelledByCaller());
      return;
    }
    refs_.fetch_add(1);  // The daemon side.
    SandboxdAsync* daemon = operation_->daemon().stub().async();
    (daemon->*launch_)(&client_context_, &daemon_request_, &daemon_);
    // Reads are started from the server side's OnWriteDone, outside the daemon call's
    // own reactions: the hold keeps that call from completing (and being freed) until
    // we say no read will follow.
    daemon_.AddHold();
    daemon_.StartRead(&message_);
    daemon_.StartCall();
  }

  void OnDaemonRead(bool ok) {
    if (!ok) {
      daemon_.RemoveHold();  // The stream ended; OnDone follows with the status.
      return;
    }
    server_.StartWrite(&message_);
  }

  void OnServerWriteDone(bool ok) {
    if (ok) {
      message_.Clear();
      daemon_.StartRead(&message_);
    } else {
      client_context_.TryCancel();  // The caller is gone: no further read.
      daemon_.RemoveHold();
    }
  }

  void OnDaemonDone(const grpc::Status& status) {
    if (status.error_code() == grpc::StatusCode::UNAVAILABLE) {
      refs_.fetch_add(1);
      proxies_.JudgeUnavailable(sandbox_id_, status, [this](absl::Status result) {
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

  ProxyContext& proxies_;
  grpc::CallbackServerContext* context_;
  std::string sandbox_id_;
  const DaemonReq& daemon_request_;
  Launch launch_;
  ServerSide server_;
  DaemonSide daemon_;
  Message message_;           // Read from the daemon, then written to the caller: one at a time.
  std::atomic<int> refs_{1};  // The server side.
};

// ---------------------------------------------------------------------------------
// Client-streaming proxy (WriteFile): the header's file message and the data chunks are
// written to the daemon as they are read; the daemon answers into the caller's response.

class WriteProxy : private DaemonCallOwner {
 public:
  WriteProxy(ProxyContext& proxies, grpc::CallbackServerContext* context,
             sandboxd_pb::WriteFileResponse* response)
      : proxies_(proxies), context_(context), response_(response) {
    server_.proxy = this;
    daemon_.proxy = this;
  }

  grpc::ServerReadReactor<sandbox_pb::WriteFileRequest>* Begin() {
    server_.StartRead(&in_);
    return &server_;
  }

 private:
  struct ServerSide : grpc::ServerReadReactor<sandbox_pb::WriteFileRequest> {
    WriteProxy* proxy;
    void OnReadDone(bool ok) override { proxy->OnServerRead(ok); }
    void OnCancel() override { proxy->OnServerCancel(); }
    void OnDone() override { proxy->Release(); }
  };
  struct DaemonSide : grpc::ClientWriteReactor<sandboxd_pb::WriteFileRequest> {
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

  void OnServerRead(bool ok) {
    {
      absl::MutexLock lock(&mu_);
      if (finished_) return;
    }
    if (!header_seen_) return OnHeader(ok);
    if (!ok) {
      daemon_.StartWritesDone();  // The caller half-closed: commit.
      ReleaseDaemonHold();
      return;
    }
    absl::Status chunk =
        in_.has_header() ? InvalidArgumentError("header", "only the first message may be a header")
                         : ValidateWriteChunk(in_.data());
    if (!chunk.ok()) {
      pending_error_ = chunk;
      client_context_.TryCancel();
      ReleaseDaemonHold();
      return;
    }
    out_.Clear();
    out_.set_data(std::move(*in_.mutable_data()));
    daemon_.StartWrite(&out_);
  }

  void OnHeader(bool ok) {
    if (!ok) {
      FinishServer(ToGrpcStatus(
          InvalidArgumentError("header", "the stream ended before a WriteFileHeader")));
      return;
    }
    absl::Status valid =
        in_.has_header()
            ? ValidateCall(in_.header())
            : InvalidArgumentError("header", "the first message must be a WriteFileHeader");
    if (!valid.ok()) {
      FinishServer(ToGrpcStatus(valid));
      return;
    }
    header_seen_ = true;
    sandbox_pb::WriteFileHeader& header = *in_.mutable_header();
    sandbox_id_ = header.sandbox_id();
    out_.mutable_header()->Swap(header.mutable_file());
    refs_.fetch_add(1);
    proxies_.WithOperation(header.tenant_id(), sandbox_id_,
                           [this](absl::StatusOr<std::unique_ptr<Operation>> operation) {
                             Start(std::move(operation));
                             Release();
                           });
  }

  void Start(absl::StatusOr<std::unique_ptr<Operation>> operation) {
    if (!operation.ok()) {
      FinishServer(ToGrpcStatus(operation.status()));
      return;
    }
    // Nothing has finished the server side yet: its only earlier finishes are OnHeader's
    // refusals, which never ask for an operation.
    if (!TakeOperation(*std::move(operation), context_)) {
      FinishServer(CancelledByCaller());
      return;
    }
    refs_.fetch_add(1);  // The daemon side.
    operation_->daemon().stub().async()->WriteFile(&client_context_, response_, &daemon_);
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
      proxies_.JudgeUnavailable(sandbox_id_, status, [this](absl::Status result) {
        operation_.reset();
        FinishServer(ToGrpcStatus(result));
        Release();
      });
    } else {
      operation_.reset();
      FinishServer(status);
    }
    Release();
  }

  void Release() {
    if (refs_.fetch_sub(1) == 1) delete this;
  }

  ProxyContext& proxies_;
  grpc::CallbackServerContext* context_;
  sandboxd_pb::WriteFileResponse* response_;
  ServerSide server_;
  DaemonSide daemon_;
  std::string sandbox_id_;
  sandbox_pb::WriteFileRequest in_;
  sandboxd_pb::WriteFileRequest out_;
  bool header_seen_ = false;  // Only the gRPC read callbacks touch it, one at a time.
  absl::Status pending_error_;
  std::atomic<int> refs_{1};
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool hold_released_ ABSL_GUARDED_BY(mu_) = false;
};

// ---------------------------------------------------------------------------------
// Unary proxy (ListFiles, StatFile, MakeDir, Remove): the embedded request goes to the
// daemon, whose answer lands in the caller's response.

struct UnaryCall {
  grpc::ClientContext context;
  std::unique_ptr<Operation> operation;
};

}  // namespace

void ProxyContext::WithOperation(const std::string& tenant_id, const std::string& sandbox_id,
                                 OperationReady then) {
  absl::StatusOr<std::unique_ptr<Operation>> fast = manager_.TryOperate(tenant_id, sandbox_id);
  if (!fast.ok() || *fast != nullptr) {
    then(std::move(fast));
    return;
  }
  pool_.Schedule([this, tenant_id, sandbox_id, then = std::move(then)] {
    then(manager_.Operate(tenant_id, sandbox_id));
  });
}

void ProxyContext::JudgeUnavailable(std::string sandbox_id, const grpc::Status& status,
                                    std::function<void(absl::Status)> finish) {
  pool_.Schedule([this, sandbox_id = std::move(sandbox_id), status, finish = std::move(finish)] {
    finish(manager_.DaemonFailed(sandbox_id, FromGrpcStatus(status)));
  });
}

grpc::ServerUnaryReactor* ProxyUnaryCall(ProxyContext& proxies,
                                         grpc::CallbackServerContext* context,
                                         const std::string& tenant_id,
                                         const std::string& sandbox_id,
                                         const absl::Status& validation, UnaryDaemonCall launch) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (!validation.ok()) {
    reactor->Finish(ToGrpcStatus(validation));
    return reactor;
  }
  auto call = std::make_shared<UnaryCall>();
  proxies.WithOperation(tenant_id, sandbox_id,
                        [&proxies, context, reactor, call, sandbox_id, launch = std::move(launch)](
                            absl::StatusOr<std::unique_ptr<Operation>> operation) {
                          if (!operation.ok()) {
                            reactor->Finish(ToGrpcStatus(operation.status()));
                            return;
                          }
                          call->operation = *std::move(operation);
                          PrepareDaemonCall(*call->operation, context, call->context);
                          launch(call->operation->daemon().stub().async(), &call->context,
                                 [&proxies, reactor, call, sandbox_id](grpc::Status status) {
                                   if (status.error_code() == grpc::StatusCode::UNAVAILABLE) {
                                     proxies.JudgeUnavailable(
                                         sandbox_id, status, [reactor, call](absl::Status result) {
                                           call->operation.reset();
                                           reactor->Finish(ToGrpcStatus(result));
                                         });
                                     return;
                                   }
                                   call->operation.reset();
                                   reactor->Finish(status);
                                 });
                        });
  return reactor;
}

template <typename Request, typename DaemonReq, typename Message>
grpc::ServerWriteReactor<Message>* ProxyStream(ProxyContext& proxies,
                                               grpc::CallbackServerContext* context,
                                               const Request& request,
                                               const DaemonReq& daemon_request,
                                               StreamMethod<DaemonReq, Message> method,
                                               const absl::Status& validation) {
  auto* proxy = new StreamProxy<DaemonReq, Message>(proxies, context, request.sandbox_id(),
                                                    daemon_request, method);
  return proxy->Begin(request.tenant_id(), validation);
}

// The two streams there are.
template grpc::ServerWriteReactor<sandboxd_pb::ExecResponse>* ProxyStream(
    ProxyContext&, grpc::CallbackServerContext*, const sandbox_pb::ExecRequest&,
    const sandboxd_pb::ExecRequest&,
    StreamMethod<sandboxd_pb::ExecRequest, sandboxd_pb::ExecResponse>, const absl::Status&);
template grpc::ServerWriteReactor<sandboxd_pb::ReadFileResponse>* ProxyStream(
    ProxyContext&, grpc::CallbackServerContext*, const sandbox_pb::ReadFileRequest&,
    const sandboxd_pb::ReadFileRequest&,
    StreamMethod<sandboxd_pb::ReadFileRequest, sandboxd_pb::ReadFileResponse>, const absl::Status&);

grpc::ServerReadReactor<sandbox_pb::WriteFileRequest>* ProxyWriteFile(
    ProxyContext& proxies, grpc::CallbackServerContext* context,
    sandboxd_pb::WriteFileResponse* response) {
  return (new WriteProxy(proxies, context, response))->Begin();
}

}  // namespace parley::sandbox
