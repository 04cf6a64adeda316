// The Sandboxd service: Hello, the token check, and the file reactors; Exec starts an
// ExecReactor (exec_reactor.h). Every handler checks the token first, then validates its
// request with the one validator of its message (contract/file_validation.h), then works on the
// Workspace inline: each step is one bounded local read or write.
#include "sandbox-svc/sandboxd/service.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <optional>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "sandbox-svc/contract/file_validation.h"
#include "sandbox-svc/contract/request_validation.h"

namespace parley::sandbox {
namespace sandboxd_pb = ::parley::sandboxd::v1;

namespace {

// One ReadFile data message at most (ReadFileResponse).
constexpr size_t kReadChunkBytes = 64 * 1024;
constexpr uint32_t kDefaultMaxEntries = 1000;

grpc::ServerUnaryReactor* FinishUnary(grpc::CallbackServerContext* context,
                                      const absl::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

// ---------------------------------------------------------------------------------
// ReadFile

class ReadFileReactor final : public grpc::ServerWriteReactor<sandboxd_pb::ReadFileResponse> {
 public:
  ReadFileReactor(const Workspace& workspace, const sandboxd_pb::ReadFileRequest& request,
                  const absl::Status& admitted) {
    absl::Status status = admitted.ok() ? ValidateReadFile(request) : admitted;
    if (!status.ok()) {
      Finish(ToGrpcStatus(status));
      return;
    }
    absl::StatusOr<ReadableFile> file = workspace.OpenForRead(request.path());
    if (!file.ok()) {
      Finish(ToGrpcStatus(file.status()));
      return;
    }
    fd_ = std::move(file->fd);
    offset_ = request.offset_bytes();
    remaining_ = request.limit_bytes() == 0 ? UINT64_MAX : request.limit_bytes();
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
    size_t want = static_cast<size_t>(std::min<uint64_t>(remaining_, kReadChunkBytes));
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
  sandboxd_pb::ReadFileResponse message_;
};

// ---------------------------------------------------------------------------------
// WriteFile

class WriteFileReactor final : public grpc::ServerReadReactor<sandboxd_pb::WriteFileRequest> {
 public:
  WriteFileReactor(const Workspace& workspace, sandboxd_pb::WriteFileResponse* response,
                   const absl::Status& admitted)
      : workspace_(workspace), response_(response) {
    if (!admitted.ok()) {
      Finish(ToGrpcStatus(admitted));
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
      const sandboxd_pb::WriteFileHeader& header = request_.header();
      if (absl::Status s = ValidateWriteHeader(header, ""); !s.ok()) return s;
      absl::StatusOr<std::unique_ptr<FileWriter>> writer = workspace_.OpenForWrite(
          header.path(), header.mode(), header.create_parents(), header.append());
      if (!writer.ok()) return writer.status();
      writer_ = *std::move(writer);
      if (header.has_size()) size_ = header.size();
      return absl::OkStatus();
    }
    if (request_.has_header()) {
      return InvalidArgumentError("header", "only the first message may be a header");
    }
    if (absl::Status s = ValidateWriteChunk(request_.data()); !s.ok()) return s;
    if (size_ && writer_->bytes_written() + request_.data().size() > *size_) {
      return InvalidArgumentError(
          "header.size", absl::StrCat("the data is longer than the ", *size_, " bytes declared"));
    }
    return writer_->Write(request_.data());
  }

  void Complete() {
    if (!writer_) {
      Finish(ToGrpcStatus(
          InvalidArgumentError("header", "the stream ended before a WriteFileHeader")));
      return;
    }
    if (size_ && writer_->bytes_written() != *size_) {
      const uint64_t arrived = writer_->bytes_written();
      writer_.reset();  // Aborts: the old content stays.
      Finish(ToGrpcStatus(InvalidArgumentError(
          "header.size", absl::StrCat("the stream ended after ", arrived, " of the ", *size_,
                                      " bytes declared"))));
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

  const Workspace& workspace_;
  sandboxd_pb::WriteFileResponse* response_;
  sandboxd_pb::WriteFileRequest request_;
  std::unique_ptr<FileWriter> writer_;
  std::optional<uint64_t> size_;  // Declared by the header.
};

}  // namespace

// ---------------------------------------------------------------------------------
// SandboxdService

SandboxdService::SandboxdService(SandboxdOptions options, std::unique_ptr<Workspace> workspace)
    : options_(std::move(options)),
      workspace_(std::move(workspace)),
      exec_slots_(options_.max_concurrent_execs),
      exec_context_{options_.limits, options_.base_env, *workspace_, exec_slots_} {}

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

grpc::ServerUnaryReactor* SandboxdService::Hello(grpc::CallbackServerContext* context,
                                                 const sandboxd_pb::HelloRequest* request,
                                                 sandboxd_pb::HelloResponse* response) {
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

grpc::ServerWriteReactor<sandboxd_pb::ExecResponse>* SandboxdService::Exec(
    grpc::CallbackServerContext* context, const sandboxd_pb::ExecRequest* request) {
  return StartExec(exec_context_, *request, CheckToken(context));
}

grpc::ServerWriteReactor<sandboxd_pb::ReadFileResponse>* SandboxdService::ReadFile(
    grpc::CallbackServerContext* context, const sandboxd_pb::ReadFileRequest* request) {
  return new ReadFileReactor(*workspace_, *request, CheckToken(context));
}

grpc::ServerReadReactor<sandboxd_pb::WriteFileRequest>* SandboxdService::WriteFile(
    grpc::CallbackServerContext* context, sandboxd_pb::WriteFileResponse* response) {
  return new WriteFileReactor(*workspace_, response, CheckToken(context));
}

grpc::ServerUnaryReactor* SandboxdService::ListDir(grpc::CallbackServerContext* context,
                                                   const sandboxd_pb::ListDirRequest* request,
                                                   sandboxd_pb::ListDirResponse* response) {
  if (absl::Status s = CheckToken(context); !s.ok()) return FinishUnary(context, s);
  if (absl::Status s = ValidateListDir(*request); !s.ok()) return FinishUnary(context, s);
  uint32_t max_entries = request->max_entries() == 0 ? kDefaultMaxEntries : request->max_entries();
  absl::StatusOr<Workspace::Listing> listing =
      workspace_->List(request->path(), request->recursive(), max_entries);
  if (!listing.ok()) return FinishUnary(context, listing.status());
  for (auto& entry : listing->entries) *response->add_entries() = std::move(entry);
  response->set_truncated(listing->truncated);
  return FinishUnary(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* SandboxdService::Stat(grpc::CallbackServerContext* context,
                                                const sandboxd_pb::StatRequest* request,
                                                sandboxd_pb::StatResponse* response) {
  if (absl::Status s = CheckToken(context); !s.ok()) return FinishUnary(context, s);
  if (absl::Status s = ValidateStat(*request); !s.ok()) return FinishUnary(context, s);
  absl::StatusOr<::parley::v1::FileInfo> info = workspace_->Stat(request->path());
  if (!info.ok()) return FinishUnary(context, info.status());
  *response->mutable_info() = *std::move(info);
  return FinishUnary(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* SandboxdService::MakeDir(grpc::CallbackServerContext* context,
                                                   const sandboxd_pb::MakeDirRequest* request,
                                                   sandboxd_pb::MakeDirResponse* response) {
  if (absl::Status s = CheckToken(context); !s.ok()) return FinishUnary(context, s);
  if (absl::Status s = ValidateMakeDir(*request); !s.ok()) return FinishUnary(context, s);
  absl::StatusOr<::parley::v1::FileInfo> info =
      workspace_->MakeDir(request->path(), request->parents(), request->mode());
  if (!info.ok()) return FinishUnary(context, info.status());
  *response->mutable_info() = *std::move(info);
  return FinishUnary(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* SandboxdService::Remove(grpc::CallbackServerContext* context,
                                                  const sandboxd_pb::RemoveRequest* request,
                                                  sandboxd_pb::RemoveResponse* response) {
  if (absl::Status s = CheckToken(context); !s.ok()) return FinishUnary(context, s);
  if (absl::Status s = ValidateRemove(*request); !s.ok()) return FinishUnary(context, s);
  absl::StatusOr<bool> removed =
      workspace_->Remove(request->path(), request->recursive(), request->allow_missing());
  if (!removed.ok()) return FinishUnary(context, removed.status());
  response->set_removed(*removed);
  return FinishUnary(context, absl::OkStatus());
}

}  // namespace parley::sandbox
