// The Exec reactor and its pump loop (see exec_reactor.h for the threads). The pump is the
// only thread that touches the ProcessTree and the pipes; the reactor's mutex guards just
// the flags gRPC's threads set (write done, cancelled, client gone).
#include "sandbox-svc/sandboxd/exec_reactor.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <map>
#include <memory>
#include <optional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/status.h"
#include "sandbox-svc/contract/exec_validation.h"

namespace parley::sandbox {
namespace {

namespace sandboxd_pb = ::parley::sandboxd::v1;

// One stdout or stderr message at most (ExecResponse).
constexpr size_t kOutputChunkBytes = 64 * 1024;

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

class ExecReactor final : public grpc::ServerWriteReactor<sandboxd_pb::ExecResponse> {
 public:
  ExecReactor(const ExecContext& context, const sandboxd_pb::ExecRequest& request,
              const absl::Status& admitted)
      : context_(context) {
    absl::Status status = admitted.ok() ? Begin(request) : admitted;
    if (!status.ok()) {
      if (counted_) context_.slots.Release();
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
    if (counted_) context_.slots.Release();
    delete this;
  }

 private:
  absl::Status Begin(const sandboxd_pb::ExecRequest& request) {
    if (absl::Status s = ValidateExecCommand(request); !s.ok()) return s;
    absl::StatusOr<UniqueFd> cwd = context_.workspace.OpenDirectory(request.cwd());
    if (!cwd.ok()) {
      absl::Status status = cwd.status();
      if (status.code() == absl::StatusCode::kNotFound) {
        status = absl::NotFoundError(absl::StrCat("cwd: ", status.message()));
      }
      return status;
    }
    if (!context_.slots.TryAcquire()) {
      absl::Status status = absl::ResourceExhaustedError(absl::StrCat(
          "too many concurrent execs in this sandbox (limit ", context_.slots.limit(), ")"));
      SetErrorInfo(status, "TOO_MANY_PROCESSES");
      return status;
    }
    counted_ = true;
    wake_fd_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!wake_fd_.valid()) return absl::InternalError("eventfd failed");

    ExecSpec spec;
    spec.argv.assign(request.argv().begin(), request.argv().end());
    spec.env = BuildEnv(context_.base_env, request.env());
    spec.cwd = *std::move(cwd);
    spec.has_stdin = !request.stdin().empty();
    stdin_data_ = request.stdin();
    uint64_t timeout_ms = request.timeout_ms() == 0 ? kDefaultExecTimeoutMs : request.timeout_ms();
    start_ = absl::Now();
    deadline_ = start_ + absl::Milliseconds(timeout_ms);
    absl::StatusOr<std::unique_ptr<ProcessTree>> tree =
        ProcessTree::Start(std::move(spec), context_.limits);
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

  void Send(sandboxd_pb::ExecResponse message) {
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
    std::string buffer(kOutputChunkBytes, '\0');
    ssize_t n = ::read(fd, buffer.data(), buffer.size());
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return ReadResult::kNothing;
    if (n <= 0) return ReadResult::kEof;
    buffer.resize(static_cast<size_t>(n));
    sandboxd_pb::ExecResponse message;
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
      sandboxd_pb::ExecResponse message;
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

  const ExecContext context_;
  bool counted_ = false;
  std::string stdin_data_;
  std::unique_ptr<ProcessTree> tree_;
  UniqueFd wake_fd_;
  std::thread pump_;
  absl::Time start_;
  absl::Time deadline_;
  absl::Time end_ = absl::InfinitePast();
  std::optional<int> wait_status_;
  sandboxd_pb::ExecResponse current_;  // The message being written (one at a time).

  absl::Mutex mu_;
  bool write_in_flight_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool client_gone_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace

bool ExecSlots::TryAcquire() {
  int current = running_.load();
  while (current < limit_) {
    if (running_.compare_exchange_weak(current, current + 1)) return true;
  }
  return false;
}

grpc::ServerWriteReactor<sandboxd_pb::ExecResponse>* StartExec(
    const ExecContext& context, const sandboxd_pb::ExecRequest& request,
    const absl::Status& admitted) {
  return new ExecReactor(context, request, admitted);
}

}  // namespace parley::sandbox
