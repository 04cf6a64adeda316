// Records are {"sandbox": <Sandbox in proto JSON>, "pooled": bool, "provider": {..}}.
#include "sandbox-svc/manager/state_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <google/protobuf/util/json_util.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/unique_fd.h"

namespace parley::sandbox {

absl::Status StateStore::Init() {
  if (::mkdir(dir_.c_str(), 0700) != 0 && errno != EEXIST) {
    return absl::FailedPreconditionError(absl::StrCat("mkdir ", dir_, ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

std::string StateStore::Serialize(const SandboxRecord& record) {
  std::string sandbox_json;
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(record.sandbox, &sandbox_json, options);
  nlohmann::json root;
  root["sandbox"] = nlohmann::json::parse(sandbox_json);
  root["pooled"] = record.pooled;
  root["provider"] = record.provider_state;
  return root.dump(1) + "\n";
}

absl::StatusOr<SandboxRecord> StateStore::Parse(const std::string& text) {
  nlohmann::json root = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded() || !root.is_object() || !root.contains("sandbox")) {
    return absl::DataLossError("not a sandbox record");
  }
  SandboxRecord record;
  auto status =
      google::protobuf::util::JsonStringToMessage(root.at("sandbox").dump(), &record.sandbox);
  if (!status.ok()) return absl::DataLossError(std::string(status.message()));
  record.pooled = root.value("pooled", false);
  if (root.contains("provider") && root.at("provider").is_object()) {
    for (const auto& [key, value] : root.at("provider").items()) {
      if (value.is_string()) record.provider_state[key] = value.get<std::string>();
    }
  }
  if (record.sandbox.id().empty()) return absl::DataLossError("record without an id");
  return record;
}

absl::Status StateStore::Write(const SandboxRecord& record) {
  const std::string path = absl::StrCat(dir_, "/", record.sandbox.id(), ".json");
  const std::string temp = path + ".tmp";
  const std::string text = Serialize(record);
  UniqueFd fd(::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!fd.valid()) {
    return absl::UnavailableError(absl::StrCat("write ", temp, ": ", std::strerror(errno)));
  }
  size_t offset = 0;
  while (offset < text.size()) {
    ssize_t n = ::write(fd.get(), text.data() + offset, text.size() - offset);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      return absl::UnavailableError(absl::StrCat("write ", temp, ": ", std::strerror(errno)));
    }
    offset += static_cast<size_t>(n);
  }
  fd.reset();
  if (::rename(temp.c_str(), path.c_str()) != 0) {
    return absl::UnavailableError(absl::StrCat("rename ", path, ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

absl::Status StateStore::Remove(const std::string& id) {
  const std::string path = absl::StrCat(dir_, "/", id, ".json");
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    return absl::UnavailableError(absl::StrCat("unlink ", path, ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

absl::StatusOr<SandboxRecord> StateStore::ReadFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    if (errno == ENOENT) return absl::NotFoundError(absl::StrCat(path, " does not exist"));
    return absl::UnavailableError(absl::StrCat("open ", path, ": ", std::strerror(errno)));
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  return Parse(buffer.str());
}

absl::StatusOr<SandboxRecord> StateStore::Read(const std::string& id) const {
  return ReadFile(absl::StrCat(dir_, "/", id, ".json"));
}

absl::StatusOr<StateStore::Scan> StateStore::ScanDir() const {
  DIR* dir = ::opendir(dir_.c_str());
  if (dir == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat("open ", dir_, ": ", std::strerror(errno)));
  }
  std::vector<std::string> names;
  while (struct dirent* entry = ::readdir(dir)) names.emplace_back(entry->d_name);
  ::closedir(dir);
  Scan scan;
  for (const std::string& name : names) {
    if (absl::EndsWith(name, ".json.tmp")) {
      scan.temp_names.push_back(name);
      continue;
    }
    if (!absl::EndsWith(name, ".json")) continue;
    absl::StatusOr<SandboxRecord> record = ReadFile(absl::StrCat(dir_, "/", name));
    // Removed since readdir (a live manager destroyed the sandbox): simply gone.
    if (absl::IsNotFound(record.status())) continue;
    if (!record.ok()) {
      scan.unreadable.emplace_back(name, std::string(record.status().message()));
      continue;
    }
    scan.records.push_back(*std::move(record));
  }
  return scan;
}

absl::StatusOr<std::vector<SandboxRecord>> StateStore::ReadAll(
    std::vector<std::string>* problems) const {
  absl::StatusOr<Scan> scan = ScanDir();
  if (!scan.ok()) return scan.status();
  if (problems != nullptr) {
    for (const auto& [name, problem] : scan->unreadable) {
      problems->push_back(absl::StrCat(name, ": ", problem));
    }
  }
  return std::move(scan->records);
}

absl::StatusOr<std::vector<SandboxRecord>> StateStore::LoadAll(std::vector<std::string>* problems) {
  absl::StatusOr<Scan> scan = ScanDir();
  if (!scan.ok()) return scan.status();
  for (const std::string& name : scan->temp_names) {
    ::unlink(absl::StrCat(dir_, "/", name).c_str());
  }
  for (const auto& [name, problem] : scan->unreadable) {
    if (problems != nullptr) problems->push_back(absl::StrCat(name, ": ", problem));
    const std::string path = absl::StrCat(dir_, "/", name);
    ::rename(path.c_str(), (path + ".corrupt").c_str());
  }
  return std::move(scan->records);
}

}  // namespace parley::sandbox
