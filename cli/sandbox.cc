// `parley exec` and `parley files`: processes and files in a session's sandbox.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <system_error>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cli/commands.h"

namespace parley::cli {
namespace {

// The gateway takes at most 1 MiB of content per WriteFile message.
constexpr size_t kUploadChunk = 1 << 20;

// Writes `bytes` to `out` and flushes, so interleaved stdout and stderr keep their order
// as well as a terminal can show it.
void Put(std::FILE* out, const std::string& bytes) {
  std::fwrite(bytes.data(), 1, bytes.size(), out);
  std::fflush(out);
}

// A process's end as an exit status of ours, the way shells report it.
int ShellStatus(const v1::ExecExit& exit) {
  if (exit.signal() != 0) return 128 + exit.signal();
  return exit.exit_code();
}

int FilesPut(const Invocation& call) {
  Options options;
  bool append = false;
  Flags flags(call.program,
              "Uploads LOCAL (\"-\": stdin) to REMOTE in the session's sandbox, creating its "
              "folders; the file is replaced only once the whole upload has arrived.");
  AddConnectionFlags(flags, &options);
  flags.Bool("append", &append, "append to REMOTE instead of replacing it");
  std::vector<std::string> args = ParseArgs(flags, call, 3, 3, "SESSION LOCAL REMOTE");
  std::ifstream file;
  std::istream* in = &std::cin;
  if (args[1] != "-") {
    file.open(args[1], std::ios::binary);
    if (!file) return ReportUsage(call.program, absl::StrCat("cannot read ", args[1]));
    in = &file;
  }
  Connection connection(options);
  std::unique_ptr<grpc::ClientContext> context = connection.Context(/*stream=*/true);
  v1::WriteFileResponse response;
  auto writer = connection.sandboxes().WriteFile(context.get(), &response);
  v1::WriteFileRequest request;
  v1::WriteFileHeader& header = *request.mutable_header();
  header.set_session_id(args[0]);
  header.set_path(args[2]);
  header.set_create_parents(true);
  header.set_append(append);
  // A file's length is known up front: with it, an upload cut short can never replace
  // the remote file. (Standard input's is not.)
  if (args[1] != "-") {
    std::error_code unknown;  // Not a regular file (a pipe, a device): no size.
    const uintmax_t size = std::filesystem::file_size(args[1], unknown);
    if (!unknown) header.set_size(size);
  }
  bool sending = writer->Write(request);
  std::string chunk(kUploadChunk, '\0');
  while (sending && *in) {
    in->read(chunk.data(), static_cast<std::streamsize>(chunk.size()));
    const std::streamsize got = in->gcount();
    if (got <= 0) break;
    request.Clear();
    request.set_data(chunk.data(), static_cast<size_t>(got));
    sending = writer->Write(request);
  }
  if (sending && in->bad()) {
    context->TryCancel();  // Nothing is written when the local read fails.
    (void)writer->Finish();
    return ReportUsage(call.program, absl::StrCat("reading ", args[1], " failed"));
  }
  if (sending) writer->WritesDone();
  grpc::Status status = writer->Finish();
  if (!status.ok()) return ReportError(status, options);
  if (options.json) {
    PrintJson(response);
  } else {
    std::cout << absl::StrFormat("%s: %d bytes\n", response.info().path(),
                                 response.bytes_written());
  }
  return kExitOk;
}

int FilesGet(const Invocation& call) {
  Options options;
  Flags flags(call.program,
              "Downloads REMOTE from the session's sandbox to LOCAL (default: stdout).");
  AddConnectionFlags(flags, &options);
  std::vector<std::string> args = ParseArgs(flags, call, 2, 3, "SESSION REMOTE [LOCAL]");
  const bool to_stdout = args.size() == 2 || args[2] == "-";
  // Into a temporary file first, renamed on success: a failed download leaves LOCAL as
  // it was.
  const std::string partial = to_stdout ? "" : args[2] + ".parley-partial";
  std::FILE* out = stdout;
  if (!to_stdout) {
    out = std::fopen(partial.c_str(), "wb");
    if (out == nullptr) return ReportUsage(call.program, absl::StrCat("cannot write ", args[2]));
  }
  Connection connection(options);
  std::unique_ptr<grpc::ClientContext> context = connection.Context(/*stream=*/true);
  v1::ReadFileRequest request;
  request.set_session_id(args[0]);
  request.set_path(args[1]);
  auto reader = connection.sandboxes().ReadFile(context.get(), request);
  v1::ReadFileResponse response;
  bool write_failed = false;
  while (reader->Read(&response)) {
    const std::string& data = response.data();
    if (!write_failed && std::fwrite(data.data(), 1, data.size(), out) != data.size()) {
      write_failed = true;
      context->TryCancel();
    }
  }
  grpc::Status status = reader->Finish();
  if (to_stdout) {
    std::fflush(stdout);
  } else {
    const bool closed = std::fclose(out) == 0;
    write_failed = write_failed || !closed;
    if (!status.ok() || write_failed || std::rename(partial.c_str(), args[2].c_str()) != 0) {
      std::remove(partial.c_str());
      if (status.ok()) write_failed = true;
    }
  }
  if (write_failed) return ReportUsage(call.program, absl::StrCat("cannot write ", args[2]));
  if (!status.ok()) return ReportError(status, options);
  return kExitOk;
}

int FilesList(const Invocation& call) {
  Options options;
  bool recursive = false;
  Flags flags(call.program, "Lists a folder of the session's sandbox (default: the workspace).");
  AddConnectionFlags(flags, &options);
  flags.Bool("recursive", &recursive, "the whole subtree");
  std::vector<std::string> args = ParseArgs(flags, call, 1, 2, "SESSION [PATH]");
  Connection connection(options);
  v1::ListFilesRequest request;
  request.set_session_id(args[0]);
  if (args.size() == 2) request.set_path(args[1]);
  request.set_recursive(recursive);
  v1::ListFilesResponse response;
  grpc::Status status =
      connection.sandboxes().ListFiles(connection.Context().get(), request, &response);
  if (!status.ok()) return ReportError(status, options);
  Table table(absl::StrFormat("%-9s %10s %-22s %s", "TYPE", "SIZE", "MODIFIED", "PATH"));
  for (const v1::FileInfo& entry : response.entries()) {
    if (options.json) {
      PrintJson(entry);
      continue;
    }
    std::string path = entry.path();
    if (entry.type() == v1::FILE_TYPE_DIRECTORY) path += "/";
    if (entry.type() == v1::FILE_TYPE_SYMLINK) path += " -> " + entry.symlink_target();
    table.Row(absl::StrFormat("%-9s %10d %-22s %s",
                              EnumWord(v1::FileType_Name(entry.type()), "FILE_TYPE_"),
                              entry.size_bytes(), FormatTime(entry.modify_time()), path));
  }
  if (response.truncated() && !options.json) {
    std::cerr << "parley: the listing was cut at " << response.entries_size() << " entries\n";
  }
  return kExitOk;
}

}  // namespace

int ExecCommand(const Invocation& call) {
  Options options;
  std::string cwd;
  absl::Duration process_timeout = absl::ZeroDuration();
  Flags flags(call.program,
              "Runs CMD in the session's sandbox (no shell: use -- bash -lc '...'), streaming "
              "its stdout and stderr, and exits with its exit status (128+N when killed by "
              "signal N).");
  AddConnectionFlags(flags, &options);
  flags.String("cwd", &cwd, "working folder, relative to the workspace");
  flags.Duration("process_timeout", &process_timeout,
                 "kill the command after this long (0: the server's default, 60s)");
  std::vector<std::string> args = ParseArgs(flags, call, 2, SIZE_MAX, "SESSION -- CMD [ARG...]");
  Connection connection(options);
  std::unique_ptr<grpc::ClientContext> context = connection.Context(/*stream=*/true);
  v1::ExecRequest request;
  request.set_session_id(args[0]);
  for (size_t i = 1; i < args.size(); ++i) request.add_argv(args[i]);
  request.set_cwd(cwd);
  request.set_timeout_ms(static_cast<uint64_t>(absl::ToInt64Milliseconds(process_timeout)));
  auto reader = connection.sandboxes().Exec(context.get(), request);
  v1::ExecResponse response;
  int exit_status = kExitFailed;
  while (reader->Read(&response)) {
    if (options.json) {
      PrintJson(response);
    } else if (response.has_stdout()) {
      Put(stdout, response.stdout());
    } else if (response.has_stderr()) {
      Put(stderr, response.stderr());
    }
    if (response.has_exit()) {
      exit_status = ShellStatus(response.exit());
      if (response.exit().timed_out() && !options.json) {
        std::cerr << "parley: the command was killed after its time limit\n";
      }
    }
  }
  grpc::Status status = reader->Finish();
  if (!status.ok()) return ReportError(status, options);
  return exit_status;
}

int FilesCommand(const Invocation& call) {
  const std::string sub = SubcommandOf(call);
  if (sub == "put") return FilesPut(Subcommand(call));
  if (sub == "get") return FilesGet(Subcommand(call));
  if (sub == "ls") return FilesList(Subcommand(call));
  std::cerr << "usage: parley files <put SESSION LOCAL REMOTE | get SESSION REMOTE [LOCAL] | "
               "ls SESSION [PATH]> [flags]\n";
  return kExitUsage;
}

}  // namespace parley::cli
