// The Sandboxd service: reactors for every call.
//
// ExecReactor: the pump thread owns the ProcessTree. It alternates between waiting for
// the previous message to be written (one write in flight, so a slow reader blocks the
// program through the pipe) and polling the pipes, the status pipe and an eventfd that
// OnCancel() and OnWriteDone() use to wake it. The deadline, a cancel and a failed
// write all end in KillAll(); the call then finishes without waiting for pipe EOF.
#include "sandbox-svc/sandboxd/service.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/status.h"
#include "sandbox-svc/util/exec_validation.h"
#include "sandbox-svc/util/request_validation.h"

namespace parley::sandbox {
namespace sbd = ::parley::sandboxd::v1;

namespace {

constexpr size_t kChunkBytes = 64 * 1024;
constexpr uint32_t kDefaultMaxEntries = 1000;

grpc::ServerUnaryReactor* FinishUnary(grpc::CallbackServerContext* context,
                                      const absl::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

// Program environment: the daemon's base, then the request's entries on top.
std::vector<std::string> BuildEnv(const std::vector<std::string>& base,
                                  const google::protobuf::Map<std::string, std::string>& extra) {
  std::map<std::string, std::string> merged;
  for (const std::string& entry : base) {
    size_t eq = entry.find('=');
    if (eq != std::string::npos) merged[entry.substr(0, eq)] = entry.substr(eq + 1);
  }
  for (const auto& [name, value] : extra) merged[name] = value;
  std::vector<std::string> env;
  env.reserve(merged.size());
  for (const auto& [name, value] : merged) env.push_back(absl::StrCat(name, "=", value));
  return env;
}

// ---------------------------------------------------------------------------------
// Exec

class ExecReactor final : public grpc::ServerWriteReactor<sbd::ExecResponse> {
 public:
  ExecReactor(SandboxdService* service, grpc::CallbackServerContext* context,
              const sbd::ExecRequest* request)
      : service_(service) {
    absl::Status status = Begin(context, *request);
    if (!status.ok()) {
      if (counted_) service_->EndExec();
      counted_ = false;
      Finish(ToGrpcStatus(status));
    }
  }

  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    write_in_flight_ = false;
    if (!ok) client_gone_ = true;
    Wake();
  }

  void OnCancel() override {
    absl::MutexLock lock(&mu_);
    cancelled_ = true;
    Wake();
  }

  void OnDone() override {
    if (pump_.joinable()) pump_.join();
    if (counted_) service_->EndExec();
    delete this;
  }

 private:
  absl::Status Begin(grpc::CallbackServerContext* context, const sbd::ExecRequest& request) {
    if (absl::Status s = service_->CheckToken(context); !s.ok()) return s;
    if (absl::Status s = ValidateExecFields(request); !s.ok()) return s;
    absl::StatusOr<UniqueFd> cwd = service_->workspace().OpenDirectory(request.cwd());
    if (!cwd.ok()) {
      absl::Status status = cwd.status();
      if (status.code() == absl::StatusCode::kNotFound) {
        status = absl::NotFoundError(absl::StrCat("cwd: ", status.message()));
      }
      return status;
    }
    if (!service_->TryBeginExec()) {
      absl::Status status = absl::ResourceExhaustedError(
          absl::StrCat("too many concurrent execs in this sandbox (limit ",
                       service_->options().max_concurrent_execs, ")"));
      SetErrorInfo(status, "TOO_MANY_PROCESSES");
      return status;
    }
    counted_ = true;
    wake_fd_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!wake_fd_.valid()) return absl::InternalError("eventfd failed");

    ExecSpec spec;
    spec.argv.assign(request.argv().begin(), request.argv().end());
    spec.env = BuildEnv(service_->options().base_env, request.env());
    spec.cwd = *std::move(cwd);
    spec.has_stdin = !request.stdin().empty();
    stdin_data_ = request.stdin();
    uint64_t timeout_ms = request.timeout_ms() == 0 ? kDefaultExecTimeoutMs : request.timeout_ms();
    start_ = absl::Now();
    deadline_ = start_ + absl::Milliseconds(timeout_ms);
    absl::StatusOr<std::unique_ptr<ProcessTree>> tree =
        ProcessTree::Start(std::move(spec), service_->options().limits);
    if (!tree.ok()) {
      absl::Status status = tree.status();
      if (status.code() == absl::StatusCode::kResourceExhausted) {
        SetErrorInfo(status, "TOO_MANY_PROCESSES");
      }
      return status;
    }
    tree_ = *std::move(tree);
    pump_ = std::thread([this] { Pump(); });
    return absl::OkStatus();
  }

  void Wake() {
    uint64_t one = 1;
    (void)!::write(wake_fd_.get(), &one, sizeof(one));
  }

  // Blocks until the previous write completed, the call ended or `deadline` passed.
  enum class Slot { kFree, kEnded, kDeadline };
  Slot AwaitWriteSlot(absl::Time deadline) {
    absl::MutexLock lock(&mu_);
    bool ready = mu_.AwaitWithDeadline(
        absl::Condition(
            +[](ExecReactor* self) { return !self->write_in_flight_ || self->cancelled_; }, this),
        deadline);
    if (cancelled_ || client_gone_) return Slot::kEnded;
    return ready ? Slot::kFree : Slot::kDeadline;
  }

  void Send(sbd::ExecResponse message) {
    {
      absl::MutexLock lock(&mu_);
      write_in_flight_ = true;
    }
    current_ = std::move(message);
    StartWrite(&current_);
  }

  void FinishWithExit(bool timed_out) {
    absl::Duration elapsed = (end_ == absl::InfinitePast() ? absl::Now() : end_) - start_;
    current_.Clear();
    auto* exit = current_.mutable_exit();
    exit->set_duration_ms(static_cast<uint64_t>(absl::ToInt64Milliseconds(elapsed)));
    if (timed_out || !wait_status_) {
      exit->set_exit_code(-1);
      exit->set_signal(SIGKILL);
      exit->set_timed_out(timed_out);
    } else if (WIFEXITED(*wait_status_)) {
      exit->set_exit_code(WEXITSTATUS(*wait_status_));
    } else if (WIFSIGNALED(*wait_status_)) {
      exit->set_exit_code(-1);
      exit->set_signal(WTERMSIG(*wait_status_));
    }
    {
      absl::MutexLock lock(&mu_);
      write_in_flight_ = true;
    }
    StartWriteAndFinish(&current_, grpc::WriteOptions(), grpc::Status::OK);
  }

  void Abort() {
    tree_->KillAll();
    tree_->CloseOutputs();
    Finish(grpc::Status(grpc::StatusCode::CANCELLED, "exec cancelled; process tree killed"));
  }

  // Reads one chunk from `fd` into a message; false on EOF (or error) closes it.
  enum class ReadResult { kData, kEof, kNothing };
  ReadResult ReadChunk(int fd, bool is_stdout) {
    std::string buffer(kChunkBytes, '\0');
    ssize_t n = ::read(fd, buffer.data(), buffer.size());
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return ReadResult::kNothing;
    if (n <= 0) return ReadResult::kEof;
    buffer.resize(static_cast<size_t>(n));
    sbd::ExecResponse message;
    if (is_stdout) {
      message.set_stdout(std::move(buffer));
    } else {
      message.set_stderr(std::move(buffer));
    }
    Send(std::move(message));
    return ReadResult::kData;
  }

  void Pump() {
    bool out_open = true, err_open = true, status_open = true;
    size_t stdin_offset = 0;
    bool prefer_stderr = false;
    if (!tree_->startup_message().empty()) {
      sbd::ExecResponse message;
      message.set_stderr(tree_->startup_message());
      Send(std::move(message));
    }
    while (true) {
      Slot slot = AwaitWriteSlot(deadline_);
      if (slot == Slot::kEnded) return Abort();
      if (slot == Slot::kDeadline) {
        // The client reads too slowly to let us finish in time: kill now, then wait for
        // the write in flight before the exit can go out.
        tree_->KillAll();
        tree_->CloseOutputs();
        if (AwaitWriteSlot(absl::InfiniteFuture()) == Slot::kEnded) return Abort();
        return FinishWithExit(true);
      }
      if (!out_open && !err_open && !status_open) return FinishWithExit(false);
      absl::Time now = absl::Now();
      if (now >= deadline_) {
        tree_->KillAll();
        tree_->CloseOutputs();
        return FinishWithExit(true);
      }
      pollfd fds[5];
      int count = 0;
      int out_index = -1, err_index = -1, status_index = -1, stdin_index = -1;
      fds[count++] = {wake_fd_.get(), POLLIN, 0};
      if (out_open) fds[out_index = count++] = {tree_->stdout_fd(), POLLIN, 0};
      if (err_open) fds[err_index = count++] = {tree_->stderr_fd(), POLLIN, 0};
      if (status_open) fds[status_index = count++] = {tree_->status_fd(), POLLIN, 0};
      if (tree_->stdin_fd() >= 0) fds[stdin_index = count++] = {tree_->stdin_fd(), POLLOUT, 0};
      int64_t wait_ms = absl::ToInt64Milliseconds(deadline_ - now) + 1;
      int ready = ::poll(fds, static_cast<nfds_t>(count),
                         static_cast<int>(std::min<int64_t>(wait_ms, 60'000)));
      if (ready < 0 && errno != EINTR) return Abort();
      if (ready <= 0) continue;
      if (fds[0].revents & POLLIN) {
        uint64_t drained;
        (void)!::read(wake_fd_.get(), &drained, sizeof(drained));
      }
      if (stdin_index >= 0 && fds[stdin_index].revents) {
        ssize_t n = ::write(tree_->stdin_fd(), stdin_data_.data() + stdin_offset,
                            stdin_data_.size() - stdin_offset);
        if (n > 0) stdin_offset += static_cast<size_t>(n);
        if ((n < 0 && errno != EAGAIN && errno != EINTR) || stdin_offset == stdin_data_.size()) {
          tree_->CloseStdin();
        }
      }
      if (status_index >= 0 && fds[status_index].revents) {
        wait_status_ = tree_->ReadStatus();
        end_ = absl::Now();
        status_open = false;
      }
      // Alternate which pipe goes first so neither starves the other.
      int first = prefer_stderr ? err_index : out_index;
      int second = prefer_stderr ? out_index : err_index;
      prefer_stderr = !prefer_stderr;
      for (int index : {first, second}) {
        if (index < 0 || !(fds[index].revents & (POLLIN | POLLHUP | POLLERR))) continue;
        bool is_stdout = index == out_index;
        ReadResult result = ReadChunk(fds[index].fd, is_stdout);
        if (result == ReadResult::kEof) (is_stdout ? out_open : err_open) = false;
        if (result == ReadResult::kData) break;  // One message in flight at a time.
      }
    }
  }

  SandboxdService* service_;
  bool counted_ = false;
  std::string stdin_data_;
  std::unique_ptr<ProcessTree> tree_;
  UniqueFd wake_fd_;
  std::thread pump_;
  absl::Time start_;
  absl::Time deadline_;
  absl::Time end_ = absl::InfinitePast();
  std::optional<int> wait_status_;
  sbd::ExecResponse current_;  // The message being written (one at a time).

  absl::Mutex mu_;
  bool write_in_flight_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool client_gone_ ABSL_GUARDED_BY(mu_) = false;
};

// ---------------------------------------------------------------------------------
// ReadFile

class ReadFileReactor final : public grpc::ServerWriteReactor<sbd::ReadFileResponse> {
 public:
  ReadFileReactor(SandboxdService* service, grpc::CallbackServerContext* context,
                  const sbd::ReadFileRequest* request) {
    absl::Status status = service->CheckToken(context);
    if (status.ok()) status = CheckCallerPath(request->path());
    if (!status.ok()) {
      Finish(ToGrpcStatus(status));
      return;
    }
    absl::StatusOr<ReadableFile> file = service->workspace().OpenForRead(request->path());
    if (!file.ok()) {
      Finish(ToGrpcStatus(file.status()));
      return;
    }
    fd_ = std::move(file->fd);
    offset_ = request->offset_bytes();
    remaining_ = request->limit_bytes() == 0 ? UINT64_MAX : request->limit_bytes();
    *message_.mutable_info() = std::move(file->info);
    if (!ReadNext()) return;
    StartWrite(&message_);
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "client went away"));
      return;
    }
    message_.Clear();
    if (remaining_ == 0) {
      Finish(grpc::Status::OK);
      return;
    }
    if (!ReadNext()) return;
    if (message_.data().empty()) {
      Finish(grpc::Status::OK);
      return;
    }
    StartWrite(&message_);
  }

  void OnDone() override { delete this; }

 private:
  // Reads the next chunk into message_; false when the call was finished with an error.
  bool ReadNext() {
    size_t want = static_cast<size_t>(std::min<uint64_t>(remaining_, kChunkBytes));
    std::string buffer(want, '\0');
    ssize_t n;
    do {
      n = ::pread(fd_.get(), buffer.data(), want, static_cast<off_t>(offset_));
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
      Finish(ToGrpcStatus(ErrnoToStatus(errno, "read", message_.info().path())));
      return false;
    }
    buffer.resize(static_cast<size_t>(n));
    offset_ += static_cast<uint64_t>(n);
    remaining_ = n == 0 ? 0 : remaining_ - static_cast<uint64_t>(n);
    message_.set_data(std::move(buffer));
    return true;
  }

  UniqueFd fd_;
  uint64_t offset_ = 0;
  uint64_t remaining_ = 0;
  sbd::ReadFileResponse message_;
};

// ---------------------------------------------------------------------------------
// WriteFile

class WriteFileReactor final : public grpc::ServerReadReactor<sbd::WriteFileRequest> {
 public:
  WriteFileReactor(SandboxdService* service, grpc::CallbackServerContext* context,
                   sbd::WriteFileResponse* response)
      : service_(service), response_(response) {
    if (absl::Status status = service->CheckToken(context); !status.ok()) {
      Finish(ToGrpcStatus(status));
      return;
    }
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) return Complete();
    absl::Status status = Consume();
    if (!status.ok()) {
      writer_.reset();  // Aborts: the old content stays.
      Finish(ToGrpcStatus(status));
      return;
    }
    StartRead(&request_);
  }

  void OnDone() override { delete this; }

 private:
  absl::Status Consume() {
    if (!writer_) {
      if (!request_.has_header()) {
        return InvalidArgumentError("header", "the first message must be a WriteFileHeader");
      }
      const sbd::WriteFileHeader& header = request_.header();
      if (absl::Status s = CheckCallerPath(header.path()); !s.ok()) return s;
      if (absl::Status s = ValidateMode(header.mode(), "mode"); !s.ok()) return s;
      absl::StatusOr<std::unique_ptr<FileWriter>> writer = service_->workspace().OpenForWrite(
          header.path(), header.mode(), header.create_parents(), header.append());
      if (!writer.ok()) return writer.status();
      writer_ = *std::move(writer);
      return absl::OkStatus();
    }
    if (request_.has_header()) {
      return InvalidArgumentError("header", "only the first message may be a header");
    }
    if (absl::Status s = ValidateWriteChunk(request_.data()); !s.ok()) return s;
    return writer_->Write(request_.data());
  }

  void Complete() {
    if (!writer_) {
      Finish(ToGrpcStatus(
          InvalidArgumentError("header", "the stream ended before a WriteFileHeader")));
      return;
    }
    absl::StatusOr<::parley::v1::FileInfo> info = writer_->Commit();
    if (!info.ok()) {
      Finish(ToGrpcStatus(info.status()));
      return;
    }
    *response_->mutable_info() = *std::move(info);
    response_->set_bytes_written(writer_->bytes_written());
    Finish(grpc::Status::OK);
  }

  SandboxdService* service_;
  sbd::WriteFileResponse* response_;
  sbd::WriteFileRequest request_;
  std::unique_ptr<FileWriter> writer_;
};

}  // namespace

// ---------------------------------------------------------------------------------
// SandboxdService

SandboxdService::SandboxdService(SandboxdOptions options, std::unique_ptr<Workspace> workspace)
    : options_(std::move(options)), workspace_(std::move(workspace)) {}

absl::Status SandboxdService::CheckToken(grpc::CallbackServerContext* context) const {
  if (options_.token.empty()) return absl::OkStatus();
  const auto& metadata = context->client_metadata();
  auto it = metadata.find("x-parley-sandbox-token");
  if (it == metadata.end()) {
    return absl::UnauthenticatedError("missing x-parley-sandbox-token metadata");
  }
  absl::string_view given(it->second.data(), it->second.size());
  // Constant-time comparison: the token must not leak through timing.
  unsigned char diff = given.size() == options_.token.size() ? 0 : 1;
  for (size_t i = 0; i < given.size() && i < options_.token.size(); ++i) {
    diff |= static_cast<unsigned char>(given[i] ^ options_.token[i]);
  }
  if (diff != 0) return absl::UnauthenticatedError("wrong x-parley-sandbox-token");
  return absl::OkStatus();
}

bool SandboxdService::TryBeginExec() {
  int current = running_execs_.load();
  while (current < options_.max_concurrent_execs) {
    if (running_execs_.compare_exchange_weak(current, current + 1)) return true;
  }
  return false;
}

void SandboxdService::EndExec() { running_execs_.fetch_sub(1); }

grpc::ServerUnaryReactor* SandboxdService::Hello(grpc::CallbackServerContext* context,
                                                 const sbd::HelloRequest* request,
                                                 sbd::HelloResponse* response) {
  if (absl::Status s = CheckToken(context); !s.ok()) return FinishUnary(context, s);
  if (request->client_protocol_version() != kSandboxdProtocolVersion) {
    absl::Status status = absl::FailedPreconditionError(
        absl::StrCat("sandboxd protocol mismatch: client ", request->client_protocol_version(),
                     ", daemon ", kSandboxdProtocolVersion));
    SetErrorInfo(status, "PROTOCOL_MISMATCH",
                 {{"client_protocol_version", absl::StrCat(request->client_protocol_version())},
                  {"daemon_protocol_version", absl::StrCat(kSandboxdProtocolVersion)}});
    return FinishUnary(context, status);
  }
  response->set_daemon_protocol_version(kSandboxdProtocolVersion);
  response->set_daemon_version(options_.version);
  response->set_workspace_root(workspace_->root_path());
  return FinishUnary(context, absl::OkStatus());
}

grpc::ServerWriteReactor<sbd::ExecResponse>* SandboxdService::Exec(
    grpc::CallbackServerContext* context, const sbd::ExecRequest* request) {
  return new ExecReactor(this, context, request);
}

grpc::ServerWriteReactor<sbd::ReadFileResponse>* SandboxdService::ReadFile(
    grpc::CallbackServerContext* context, const sbd::ReadFileRequest* request) {
  return new ReadFileReactor(this, context, request);
}

grpc::ServerReadReactor<sbd::WriteFileRequest>* SandboxdService::WriteFile(
    grpc::CallbackServerContext* context, sbd::WriteFileResponse* response) {
  return new WriteFileReactor(this, context, response);
}

grpc::ServerUnaryReactor* SandboxdService::ListDir(grpc::CallbackServerContext* context,
                                                   const sbd::ListDirRequest* request,
                                                   sbd::ListDirResponse* response) {
  if (absl::Status s = CheckToken(context); !s.ok()) return FinishUnary(context, s);
  if (absl::Status s = CheckCallerPath(request->path()); !s.ok()) return FinishUnary(context, s);
  if (absl::Status s = ValidateMaxEntries(request->max_entries()); !s.ok()) {
    return FinishUnary(context, s);
  }
  uint32_t max_entries = request->max_entries() == 0 ? kDefaultMaxEntries : request->max_entries();
  absl::StatusOr<Workspace::Listing> listing =
      workspace_->List(request->path(), request->recursive(), max_entries);
  if (!listing.ok()) return FinishUnary(context, listing.status());
  for (auto& entry : listing->entries) *response->add_entries() = std::move(entry);
  response->set_truncated(listing->truncated);
  return FinishUnary(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* SandboxdService::Stat(grpc::CallbackServerContext* context,
                                                const sbd::StatRequest* request,
                                                sbd::StatResponse* response) {
  if (absl::Status s = CheckToken(context); !s.ok()) return FinishUnary(context, s);
  if (absl::Status s = CheckCallerPath(request->path()); !s.ok()) return FinishUnary(context, s);
  absl::StatusOr<::parley::v1::FileInfo> info = workspace_->Stat(request->path());
  if (!info.ok()) return FinishUnary(context, info.status());
  *response->mutable_info() = *std::move(info);
  return FinishUnary(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* SandboxdService::MakeDir(grpc::CallbackServerContext* context,
                                                   const sbd::MakeDirRequest* request,
                                                   sbd::MakeDirResponse* response) {
  if (absl::Status s = CheckToken(context); !s.ok()) return FinishUnary(context, s);
  if (absl::Status s = CheckCallerPath(request->path()); !s.ok()) return FinishUnary(context, s);
  if (absl::Status s = ValidateMode(request->mode(), "mode"); !s.ok()) {
    return FinishUnary(context, s);
  }
  absl::StatusOr<::parley::v1::FileInfo> info =
      workspace_->MakeDir(request->path(), request->parents(), request->mode());
  if (!info.ok()) return FinishUnary(context, info.status());
  *response->mutable_info() = *std::move(info);
  return FinishUnary(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* SandboxdService::Remove(grpc::CallbackServerContext* context,
                                                  const sbd::RemoveRequest* request,
                                                  sbd::RemoveResponse* response) {
  if (absl::Status s = CheckToken(context); !s.ok()) return FinishUnary(context, s);
  if (absl::Status s = CheckCallerPath(request->path()); !s.ok()) return FinishUnary(context, s);
  absl::StatusOr<bool> removed =
      workspace_->Remove(request->path(), request->recursive(), request->allow_missing());
  if (!removed.ok()) return FinishUnary(context, removed.status());
  response->set_removed(*removed);
  return FinishUnary(context, absl::OkStatus());
}

}  // namespace parley::sandbox
