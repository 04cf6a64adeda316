// Sandbox lifecycle. The rules that keep it correct:
//  - A record is persisted before the provider is asked to do anything (Plan, then
//    write, then Start), and after every transition.
//  - Quota checks and the reservation they guard (a new entry, or a warm sandbox taken
//    from its pool) happen in one critical section of mu_, so two concurrent creates
//    cannot both squeeze under a limit.
//  - Transitions of one sandbox hold its lifecycle mutex across the provider call; mu_
//    is taken only for short reads and updates of the table, never across I/O.
//  - A failure leaves the sandbox FAILED with the reason and its resources released.
#include "sandbox-svc/manager/manager.h"

#include <algorithm>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/status.h"
#include "sandbox-svc/util/request_validation.h"

namespace parley::sandbox {
namespace {

namespace sv1 = ::parley::sandbox::v1;

constexpr int kMaxLabels = 32;
constexpr size_t kMaxLabelBytes = 63;
constexpr uint64_t kMaxDurationS = 366ull * 24 * 3600;
constexpr uint32_t kDefaultPageSize = 50;
constexpr uint32_t kMaxPageSize = 1000;

google::protobuf::Timestamp ToProto(absl::Time time) {
  google::protobuf::Timestamp ts;
  const int64_t nanos = absl::ToUnixNanos(time);
  ts.set_seconds(nanos / 1'000'000'000);
  ts.set_nanos(static_cast<int32_t>(nanos % 1'000'000'000));
  return ts;
}

absl::Time FromProto(const google::protobuf::Timestamp& ts) {
  return absl::FromUnixSeconds(ts.seconds()) + absl::Nanoseconds(ts.nanos());
}

bool IsLive(sv1::SandboxState state) {
  return state == sv1::SANDBOX_STATE_CREATING || state == sv1::SANDBOX_STATE_READY ||
         state == sv1::SANDBOX_STATE_PAUSED;
}

absl::Status ValidateLabels(const google::protobuf::Map<std::string, std::string>& labels,
                            absl::string_view field) {
  if (labels.size() > static_cast<size_t>(kMaxLabels)) {
    return InvalidArgumentError(field, "too many labels", "32 entries");
  }
  for (const auto& [key, value] : labels) {
    if (key.empty()) return InvalidArgumentError(field, "label keys must not be empty");
    if (key.size() > kMaxLabelBytes) {
      return InvalidArgumentError(absl::StrCat(field, "[", key.substr(0, 16), "…]"),
                                  "label key too long", "63 bytes");
    }
    if (value.size() > kMaxLabelBytes) {
      return InvalidArgumentError(absl::StrCat(field, "[", key, "]"), "label value too long",
                                  "63 bytes");
    }
  }
  return absl::OkStatus();
}

}  // namespace

SandboxManager::SandboxManager(ManagerOptions options, TemplateSet templates,
                               std::map<std::string, SandboxProvider*> providers, StateStore* store,
                               Clock& clock, const telemetry::Logger* logger,
                               telemetry::Registry* registry)
    : options_(std::move(options)),
      templates_(std::move(templates)),
      providers_(std::move(providers)),
      store_(store),
      clock_(clock),
      logger_(logger),
      ids_(clock) {
  if (registry != nullptr) {
    live_gauge_ = &registry->AddGauge("parley_sandbox_sandboxes",
                                      "Sandboxes on this replica by state", {"state"});
    pool_gauge_ = &registry->AddGauge("parley_sandbox_pool_ready",
                                      "Warm sandboxes ready per template", {"template"});
    create_seconds_ = &registry->AddHistogram("parley_sandbox_create_seconds",
                                              "Create-to-ready time by source", {"source"});
    expired_total_ = &registry->AddCounter("parley_sandbox_expired_total", "TTL and idle expiries",
                                           {"reason", "action"});
    // Fixed for the life of the process: which cgroup limits each provider applies.
    telemetry::GaugeFamily& cgroup_mode = registry->AddGauge(
        "parley_sandbox_cgroup_mode",
        "1 for the cgroup mode (v2, v1, none) whose limits this provider's sandboxes get",
        {"provider", "mode"});
    for (const auto& [name, provider] : providers_) {
      if (std::string mode = provider->CgroupMode(); !mode.empty()) {
        cgroup_mode.WithLabels({name, mode}).Set(1);
      }
    }
  }
}

SandboxManager::~SandboxManager() { Stop(false); }

// ---------------------------------------------------------------------------------
// Helpers

absl::Status SandboxManager::NotFound(const std::string& sandbox_id) {
  absl::Status status = absl::NotFoundError(absl::StrCat("sandbox \"", sandbox_id, "\" not found"));
  // Tells callers a missing sandbox from a missing file (both NOT_FOUND).
  SetErrorInfo(status, "SANDBOX_NOT_FOUND");
  return status;
}

absl::Status SandboxManager::Gone(const sv1::Sandbox& sandbox) {
  absl::Status status = absl::FailedPreconditionError(absl::StrCat(
      "sandbox ", sandbox.id(), " is ", sv1::SandboxState_Name(sandbox.state()),
      sandbox.state_message().empty() ? "" : absl::StrCat(": ", sandbox.state_message())));
  SetErrorInfo(status, "SANDBOX_GONE", {{"state", sv1::SandboxState_Name(sandbox.state())}});
  return status;
}

absl::StatusOr<SandboxManager::EntryPtr> SandboxManager::FindOrNotFound(
    const std::string& tenant_id, const std::string& sandbox_id) {
  if (absl::Status s = ValidateId(tenant_id, "tenant_id", true); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(sandbox_id);
  if (it == entries_.end()) return NotFound(sandbox_id);
  const SandboxRecord& record = it->second->record;
  // Another tenant's sandbox and a warm one behave exactly like a missing one.
  if (record.pooled || record.sandbox.tenant_id() != tenant_id) return NotFound(sandbox_id);
  return it->second;
}

SandboxSpec SandboxManager::SpecFor(const SandboxRecord& record) const {
  const TemplateConfig* config = templates_.Find(record.sandbox.template_());
  if (config == nullptr) config = templates_.Find("");
  SandboxSpec spec;
  spec.id = record.sandbox.id();
  spec.template_name = record.sandbox.template_();
  spec.image = config->proto.image();
  spec.limits = record.sandbox.limits();  // The record's: kept across restarts and resumes.
  spec.env = config->env;
  spec.local = config->local;
  spec.kubernetes = config->kubernetes;
  return spec;
}

SandboxProvider* SandboxManager::ProviderFor(const SandboxRecord& record) const {
  auto it = providers_.find(record.sandbox.provider());
  return it == providers_.end() ? nullptr : it->second;
}

absl::Status SandboxManager::Persist(Entry& entry) {
  SandboxRecord snapshot;
  {
    absl::MutexLock lock(&mu_);
    snapshot = entry.record;
  }
  absl::Status status = store_->Write(snapshot);
  if (!status.ok() && logger_ != nullptr) {
    logger_->Error("cannot write sandbox record",
                   {{"sandbox_id", snapshot.sandbox.id()}, {"error", status.ToString()}});
  }
  return status;
}

void SandboxManager::SetState(Entry& entry, sv1::SandboxState state, std::string message) {
  sv1::Sandbox& sandbox = entry.record.sandbox;
  sandbox.set_state(state);
  sandbox.set_state_message(std::move(message));
  *sandbox.mutable_update_time() = ToProto(clock_.Now());
  if (state != sv1::SANDBOX_STATE_READY) sandbox.clear_expire_time();
}

void SandboxManager::Index(const std::string& id, const Entry& entry) {
  const sv1::Sandbox& sandbox = entry.record.sandbox;
  if (entry.record.pooled || sandbox.session_id().empty()) return;
  auto key = std::make_pair(sandbox.tenant_id(), sandbox.session_id());
  auto it = by_session_.find(key);
  if (it == by_session_.end()) {
    by_session_[key] = id;
    return;
  }
  // Keep an existing live sandbox as the session's one.
  auto current = entries_.find(it->second);
  if (current == entries_.end() || !IsLive(current->second->record.sandbox.state())) {
    it->second = id;
  }
}

void SandboxManager::Unindex(const std::string& id, const Entry& entry) {
  const sv1::Sandbox& sandbox = entry.record.sandbox;
  auto key = std::make_pair(sandbox.tenant_id(), sandbox.session_id());
  auto it = by_session_.find(key);
  if (it != by_session_.end() && it->second == id) by_session_.erase(it);
  auto pool = pools_.find(sandbox.template_());
  if (pool != pools_.end()) {
    pool->second.erase(std::remove(pool->second.begin(), pool->second.end(), id),
                       pool->second.end());
  }
}

absl::Status SandboxManager::CheckQuota(const std::string& tenant_id) {
  int node = 0, tenant = 0;
  for (const auto& [id, entry] : entries_) {
    const SandboxRecord& record = entry->record;
    if (!IsLive(record.sandbox.state())) continue;
    ++node;
    if (!record.pooled && record.sandbox.tenant_id() == tenant_id) ++tenant;
  }
  if (!tenant_id.empty() && tenant >= options_.max_sandboxes_per_tenant) {
    absl::Status status = absl::ResourceExhaustedError(absl::StrCat(
        "tenant \"", tenant_id, "\" has ", tenant, " live sandboxes and the limit is ",
        options_.max_sandboxes_per_tenant, " (--max_sandboxes_per_tenant); destroy one first"));
    SetErrorInfo(status, "SANDBOX_QUOTA",
                 {{"scope", "tenant"},
                  {"limit", absl::StrCat(options_.max_sandboxes_per_tenant)},
                  {"live", absl::StrCat(tenant)}});
    return status;
  }
  if (node >= options_.max_sandboxes) {
    absl::Status status = absl::ResourceExhaustedError(
        absl::StrCat("this node runs ", node, " sandboxes and the limit is ",
                     options_.max_sandboxes, " (--max_sandboxes); retry later or elsewhere"));
    SetErrorInfo(status, "SANDBOX_QUOTA",
                 {{"scope", "node"},
                  {"limit", absl::StrCat(options_.max_sandboxes)},
                  {"live", absl::StrCat(node)}});
    SetRetryDelay(status, 1000);
    return status;
  }
  return absl::OkStatus();
}

void SandboxManager::UpdateGauges() {
  if (live_gauge_ == nullptr) return;
  std::map<sv1::SandboxState, int> counts;
  for (const auto& [id, entry] : entries_) counts[entry->record.sandbox.state()]++;
  for (int state = sv1::SANDBOX_STATE_CREATING; state <= sv1::SANDBOX_STATE_FAILED; ++state) {
    auto typed = static_cast<sv1::SandboxState>(state);
    live_gauge_->WithLabels({sv1::SandboxState_Name(typed)}).Set(counts[typed]);
  }
  for (const auto& [name, config] : templates_.by_name) {
    auto it = pools_.find(name);
    pool_gauge_->WithLabels({name}).Set(it == pools_.end() ? 0 : it->second.size());
  }
}

// ---------------------------------------------------------------------------------
// Templates

sv1::Template SandboxManager::TemplateView(const TemplateConfig& config) {
  sv1::Template proto = config.proto;
  auto it = pools_.find(config.proto.name());
  proto.set_warm_pool_ready(it == pools_.end() ? 0 : static_cast<uint32_t>(it->second.size()));
  if (auto provider = providers_.find(config.proto.provider()); provider != providers_.end()) {
    proto.set_cgroup_mode(provider->second->CgroupMode());
  }
  return proto;
}

std::vector<sv1::Template> SandboxManager::ListTemplates() {
  std::vector<sv1::Template> result;
  absl::MutexLock lock(&mu_);
  for (const auto& [name, config] : templates_.by_name) result.push_back(TemplateView(config));
  return result;
}

absl::StatusOr<sv1::Template> SandboxManager::GetTemplate(const std::string& name) {
  const TemplateConfig* config = templates_.Find(name);
  if (config == nullptr || name.empty()) {
    return absl::NotFoundError(absl::StrCat("template \"", name, "\" not found"));
  }
  absl::MutexLock lock(&mu_);
  return TemplateView(*config);
}

int SandboxManager::PoolReady(const std::string& template_name) {
  absl::MutexLock lock(&mu_);
  auto it = pools_.find(template_name);
  return it == pools_.end() ? 0 : static_cast<int>(it->second.size());
}

// ---------------------------------------------------------------------------------
// Create

absl::StatusOr<SandboxManager::CreateParams> SandboxManager::ResolveCreate(
    const std::string& tenant_id, const std::string& session_id, const std::string& template_name,
    uint64_t ttl_s, uint64_t idle_timeout_s, sv1::OnExpiry on_expiry,
    const google::protobuf::Map<std::string, std::string>& labels) {
  if (absl::Status s = ValidateId(tenant_id, "tenant_id", true); !s.ok()) return s;
  if (absl::Status s = ValidateId(session_id, "session_id", false); !s.ok()) return s;
  if (ttl_s > kMaxDurationS) return InvalidArgumentError("ttl_s", "too long", "31622400 s");
  if (idle_timeout_s > kMaxDurationS) {
    return InvalidArgumentError("idle_timeout_s", "too long", "31622400 s");
  }
  if (!sv1::OnExpiry_IsValid(on_expiry)) return InvalidArgumentError("on_expiry", "unknown value");
  if (absl::Status s = ValidateLabels(labels, "labels"); !s.ok()) return s;
  CreateParams params;
  params.config = templates_.Find(template_name);
  if (params.config == nullptr) {
    return absl::NotFoundError(absl::StrCat("template \"", template_name, "\" not found"));
  }
  if (providers_.find(params.config->proto.provider()) == providers_.end()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "template \"", params.config->proto.name(), "\" uses the provider \"",
        params.config->proto.provider(), "\", which is not configured on this replica"));
  }
  params.tenant_id = tenant_id;
  params.session_id = session_id;
  params.ttl_s = ttl_s != 0 ? ttl_s : params.config->proto.default_ttl_s();
  params.idle_timeout_s =
      idle_timeout_s != 0 ? idle_timeout_s : params.config->proto.default_idle_timeout_s();
  params.on_expiry = on_expiry != sv1::ON_EXPIRY_UNSPECIFIED
                         ? on_expiry
                         : params.config->proto.default_on_expiry();
  if (params.on_expiry == sv1::ON_EXPIRY_UNSPECIFIED) params.on_expiry = sv1::ON_EXPIRY_DESTROY;
  params.labels.insert(labels.begin(), labels.end());
  return params;
}

absl::StatusOr<sv1::Sandbox> SandboxManager::Create(const sv1::CreateSandboxRequest& request) {
  absl::StatusOr<CreateParams> params =
      ResolveCreate(request.tenant_id(), request.session_id(), request.template_(), request.ttl_s(),
                    request.idle_timeout_s(), request.on_expiry(), request.labels());
  if (!params.ok()) return params.status();
  bool from_pool = false;
  return CreateResolved(*params, &from_pool);
}

absl::StatusOr<sv1::Sandbox> SandboxManager::CreateResolved(const CreateParams& params,
                                                            bool* from_pool) {
  const absl::Time started = clock_.Now();
  std::optional<absl::StatusOr<sv1::Sandbox>> warm = TakeFromPool(params);
  if (warm.has_value()) {
    *from_pool = true;
    if (create_seconds_ != nullptr && warm->ok()) {
      create_seconds_->WithLabels({"pool"}).Observe(absl::ToDoubleSeconds(clock_.Now() - started));
    }
    return *std::move(warm);
  }
  absl::StatusOr<sv1::Sandbox> sandbox = ColdCreate(params, /*pooled=*/false);
  if (create_seconds_ != nullptr && sandbox.ok()) {
    create_seconds_->WithLabels({"cold"}).Observe(absl::ToDoubleSeconds(clock_.Now() - started));
  }
  return sandbox;
}

std::optional<absl::StatusOr<sv1::Sandbox>> SandboxManager::TakeFromPool(
    const CreateParams& params) {
  const std::string& template_name = params.config->proto.name();
  // A warm sandbox may have died since it was made; try a few before building one.
  for (int attempt = 0; attempt < 3; ++attempt) {
    EntryPtr entry;
    std::string id;
    {
      absl::MutexLock lock(&mu_);
      if (absl::Status s = CheckQuota(params.tenant_id); !s.ok()) {
        // The node quota counts warm sandboxes already; taking one adds nothing.
        auto info = GetErrorInfo(s);
        if (!info || info->metadata().at("scope") == "tenant") return s;
      }
      auto pool = pools_.find(template_name);
      if (pool == pools_.end() || pool->second.empty()) return std::nullopt;
      id = pool->second.front();
      pool->second.pop_front();
      auto it = entries_.find(id);
      if (it == entries_.end() || !it->second->record.pooled) continue;
      entry = it->second;
      // Claim it for the tenant at once, so quotas and lists see it.
      const absl::Time now = clock_.Now();
      SandboxRecord& record = entry->record;
      sv1::Sandbox& sandbox = record.sandbox;
      record.pooled = false;
      sandbox.set_tenant_id(params.tenant_id);
      sandbox.set_session_id(params.session_id);
      sandbox.mutable_labels()->insert(params.labels.begin(), params.labels.end());
      sandbox.set_ttl_s(params.ttl_s);
      sandbox.set_idle_timeout_s(params.idle_timeout_s);
      sandbox.set_on_expiry(params.on_expiry);
      *sandbox.mutable_create_time() = ToProto(now);
      *sandbox.mutable_last_active_time() = ToProto(now);
      *sandbox.mutable_update_time() = ToProto(now);
      if (params.ttl_s > 0) {
        *sandbox.mutable_expire_time() = ToProto(now + absl::Seconds(params.ttl_s));
      }
      Index(id, *entry);
      pool_wakeup_ = true;
    }
    absl::MutexLock lifecycle(&entry->lifecycle);
    SandboxProvider* provider = ProviderFor(entry->record);
    ProviderState state;
    {
      absl::MutexLock lock(&mu_);
      state = entry->record.provider_state;
    }
    if (provider == nullptr || !provider->Alive(state)) {
      FailLocked(*entry, "the warm sandbox's processes exited before it was handed out");
      continue;
    }
    if (absl::Status s = Persist(*entry); !s.ok()) return absl::StatusOr<sv1::Sandbox>(s);
    absl::MutexLock lock(&mu_);
    if (logger_ != nullptr) {
      logger_->Info(
          "sandbox handed out from the warm pool",
          {{"sandbox_id", id}, {"tenant_id", params.tenant_id}, {"template", template_name}});
    }
    return absl::StatusOr<sv1::Sandbox>(entry->record.sandbox);
  }
  return std::nullopt;
}

absl::StatusOr<sv1::Sandbox> SandboxManager::ColdCreate(const CreateParams& params, bool pooled) {
  const TemplateConfig& config = *params.config;
  const std::string id = ids_.Next("sbx");
  auto entry = std::make_shared<Entry>();
  const absl::Time now = clock_.Now();
  sv1::Sandbox& sandbox = entry->record.sandbox;
  sandbox.set_id(id);
  if (!pooled) {
    sandbox.set_tenant_id(params.tenant_id);
    sandbox.set_session_id(params.session_id);
    sandbox.mutable_labels()->insert(params.labels.begin(), params.labels.end());
  }
  sandbox.set_template_(config.proto.name());
  sandbox.set_provider(config.proto.provider());
  sandbox.set_state(sv1::SANDBOX_STATE_CREATING);
  *sandbox.mutable_create_time() = ToProto(now);
  *sandbox.mutable_update_time() = ToProto(now);
  *sandbox.mutable_last_active_time() = ToProto(now);
  sandbox.set_ttl_s(params.ttl_s);
  sandbox.set_idle_timeout_s(params.idle_timeout_s);
  sandbox.set_on_expiry(params.on_expiry);
  *sandbox.mutable_limits() = config.proto.limits();
  entry->record.pooled = pooled;

  // Nobody may transition the sandbox until it is built; lock before it is visible.
  absl::MutexLock lifecycle(&entry->lifecycle);
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return absl::UnavailableError("parley-sandbox is shutting down");
    if (absl::Status s = CheckQuota(pooled ? "" : params.tenant_id); !s.ok()) return s;
    entries_[id] = entry;
    Index(id, *entry);
  }
  const absl::Time begin = absl::Now();  // Real time: these are measurements.
  SandboxProvider* provider = ProviderFor(entry->record);
  const SandboxSpec spec = SpecFor(entry->record);
  absl::StatusOr<ProviderState> plan = provider->Plan(spec);
  if (!plan.ok()) {
    FailLocked(*entry, absl::StrCat("provider: ", plan.status().message()));
    return absl::UnavailableError(absl::StrCat("cannot create sandbox: ", plan.status().message()));
  }
  {
    absl::MutexLock lock(&mu_);
    entry->record.provider_state = *plan;
  }
  // The record exists before any process does.
  if (absl::Status s = Persist(*entry); !s.ok()) {
    FailLocked(*entry, absl::StrCat("cannot record the sandbox: ", s.message()));
    return absl::UnavailableError(absl::StrCat("cannot record the sandbox: ", s.message()));
  }
  ProviderState state = *plan;
  RecordFn record = [this, &entry](const ProviderState& updated) {
    {
      absl::MutexLock lock(&mu_);
      entry->record.provider_state = updated;
    }
    return Persist(*entry);
  };
  const absl::Time start = absl::Now();
  absl::StatusOr<DaemonEndpoint> endpoint = provider->Start(spec, state, record);
  const absl::Time started = absl::Now();
  if (!endpoint.ok()) {
    {
      absl::MutexLock lock(&mu_);
      entry->record.provider_state = state;
    }
    FailLocked(*entry, std::string(endpoint.status().message()));
    return absl::UnavailableError(
        absl::StrCat("sandbox ", id, " failed to start: ", endpoint.status().message()));
  }
  {
    absl::MutexLock lock(&mu_);
    entry->record.provider_state = state;
  }
  absl::StatusOr<std::shared_ptr<DaemonConnection>> daemon =
      ConnectWhileAlive(*provider, state, *endpoint);
  const absl::Time connected = absl::Now();
  if (!daemon.ok()) {
    FailLocked(*entry, std::string(daemon.status().message()));
    absl::Status status = daemon.status();
    if (status.code() != absl::StatusCode::kFailedPrecondition) {
      status = absl::UnavailableError(absl::StrCat(
          "sandbox ", id, " started but its daemon did not answer: ", daemon.status().message()));
    }
    return status;
  }
  {
    absl::MutexLock lock(&mu_);
    const absl::Time ready = clock_.Now();
    entry->daemon = *std::move(daemon);
    SetState(*entry, sv1::SANDBOX_STATE_READY, "");
    *sandbox.mutable_last_active_time() = ToProto(ready);
    if (!pooled && params.ttl_s > 0) {
      *sandbox.mutable_expire_time() =
          ToProto(FromProto(sandbox.create_time()) + absl::Seconds(params.ttl_s));
    }
  }
  if (absl::Status s = Persist(*entry); !s.ok()) {
    FailLocked(*entry, absl::StrCat("cannot record the sandbox: ", s.message()));
    return absl::UnavailableError(absl::StrCat("cannot record the sandbox: ", s.message()));
  }
  if (logger_ != nullptr) {
    // Where create-to-ready time goes: recording, the provider, the daemon's start-up
    // and handshake.
    logger_->Info(pooled ? "warm sandbox ready" : "sandbox created",
                  {{"sandbox_id", id},
                   {"tenant_id", params.tenant_id},
                   {"template", config.proto.name()},
                   {"record_ms", absl::ToDoubleMilliseconds(start - begin)},
                   {"provider_ms", absl::ToDoubleMilliseconds(started - start)},
                   {"hello_ms", absl::ToDoubleMilliseconds(connected - started)}});
  }
  absl::MutexLock lock(&mu_);
  return sandbox;
}

// ---------------------------------------------------------------------------------
// Transitions (caller holds entry.lifecycle)

void SandboxManager::FailLocked(Entry& entry, const std::string& message) {
  SandboxRecord snapshot;
  {
    absl::MutexLock lock(&mu_);
    snapshot = entry.record;
  }
  SandboxProvider* provider = ProviderFor(snapshot);
  bool cleaned = true;
  if (provider != nullptr && !snapshot.provider_state.empty()) {
    absl::Status destroyed = provider->Destroy(snapshot.provider_state);
    cleaned = destroyed.ok();
    if (!cleaned && logger_ != nullptr) {
      logger_->Warn("cannot clean up a failed sandbox; the reaper retries",
                    {{"sandbox_id", snapshot.sandbox.id()}, {"error", destroyed.ToString()}});
    }
  }
  {
    absl::MutexLock lock(&mu_);
    Unindex(entry.record.sandbox.id(), entry);
    entry.record.pooled = false;
    SetState(entry, sv1::SANDBOX_STATE_FAILED, message);
    if (cleaned) entry.record.provider_state.clear();
    entry.daemon.reset();
  }
  if (logger_ != nullptr) {
    logger_->Warn("sandbox failed", {{"sandbox_id", snapshot.sandbox.id()}, {"reason", message}});
  }
  (void)Persist(entry);
}

absl::StatusOr<sv1::Sandbox> SandboxManager::DestroyLocked(Entry& entry, const std::string& why) {
  SandboxRecord snapshot;
  {
    absl::MutexLock lock(&mu_);
    snapshot = entry.record;
  }
  if (snapshot.sandbox.state() == sv1::SANDBOX_STATE_DESTROYED) return snapshot.sandbox;
  SandboxProvider* provider = ProviderFor(snapshot);
  if (provider != nullptr && !snapshot.provider_state.empty()) {
    absl::Status destroyed = provider->Destroy(snapshot.provider_state);
    if (!destroyed.ok()) {
      {
        absl::MutexLock lock(&mu_);
        Unindex(snapshot.sandbox.id(), entry);
        SetState(entry, sv1::SANDBOX_STATE_FAILED,
                 absl::StrCat("destroy failed (retried by the reaper): ", destroyed.message()));
      }
      (void)Persist(entry);
      return absl::UnavailableError(absl::StrCat("cannot destroy sandbox ", snapshot.sandbox.id(),
                                                 ": ", destroyed.message()));
    }
  }
  {
    absl::MutexLock lock(&mu_);
    Unindex(snapshot.sandbox.id(), entry);
    SetState(entry, sv1::SANDBOX_STATE_DESTROYED, why);
    entry.record.provider_state.clear();
    entry.daemon.reset();
  }
  (void)Persist(entry);
  if (logger_ != nullptr) {
    logger_->Info("sandbox destroyed", {{"sandbox_id", snapshot.sandbox.id()}, {"reason", why}});
  }
  absl::MutexLock lock(&mu_);
  return entry.record.sandbox;
}

absl::StatusOr<sv1::Sandbox> SandboxManager::PauseLocked(Entry& entry, const std::string& why) {
  SandboxRecord snapshot;
  {
    absl::MutexLock lock(&mu_);
    snapshot = entry.record;
  }
  const sv1::SandboxState state = snapshot.sandbox.state();
  if (state == sv1::SANDBOX_STATE_PAUSED) return snapshot.sandbox;
  if (state != sv1::SANDBOX_STATE_READY) return Gone(snapshot.sandbox);
  SandboxProvider* provider = ProviderFor(snapshot);
  ProviderState provider_state = snapshot.provider_state;
  absl::Status paused = provider->Pause(SpecFor(snapshot), provider_state);
  if (!paused.ok()) {
    if (!provider->Alive(snapshot.provider_state)) {
      FailLocked(entry, "the sandbox's processes exited unexpectedly");
      absl::MutexLock lock(&mu_);
      return Gone(entry.record.sandbox);
    }
    return absl::UnavailableError(absl::StrCat("cannot pause: ", paused.message()));
  }
  {
    absl::MutexLock lock(&mu_);
    entry.record.provider_state = provider_state;
    SetState(entry, sv1::SANDBOX_STATE_PAUSED, why);
  }
  (void)Persist(entry);
  absl::MutexLock lock(&mu_);
  return entry.record.sandbox;
}

absl::StatusOr<sv1::Sandbox> SandboxManager::ResumeLocked(Entry& entry, bool* resumed) {
  *resumed = false;
  SandboxRecord snapshot;
  {
    absl::MutexLock lock(&mu_);
    snapshot = entry.record;
  }
  const sv1::SandboxState state = snapshot.sandbox.state();
  if (state == sv1::SANDBOX_STATE_READY) return snapshot.sandbox;
  if (state != sv1::SANDBOX_STATE_PAUSED) return Gone(snapshot.sandbox);
  SandboxProvider* provider = ProviderFor(snapshot);
  ProviderState provider_state = snapshot.provider_state;
  RecordFn record = [this, &entry](const ProviderState& updated) {
    {
      absl::MutexLock lock(&mu_);
      entry.record.provider_state = updated;
    }
    return Persist(entry);
  };
  bool restarted = false;
  absl::StatusOr<DaemonEndpoint> endpoint =
      provider->Resume(SpecFor(snapshot), provider_state, record, &restarted);
  if (!endpoint.ok()) {
    {
      absl::MutexLock lock(&mu_);
      entry.record.provider_state = provider_state;
    }
    FailLocked(entry, absl::StrCat("resume failed: ", endpoint.status().message()));
    return absl::UnavailableError(absl::StrCat("cannot resume sandbox ", snapshot.sandbox.id(),
                                               ": ", endpoint.status().message()));
  }
  std::shared_ptr<DaemonConnection> daemon;
  {
    absl::MutexLock lock(&mu_);
    daemon = entry.daemon;
  }
  if (restarted || daemon == nullptr) {
    absl::StatusOr<std::shared_ptr<DaemonConnection>> connected =
        ConnectWhileAlive(*provider, provider_state, *endpoint);
    if (!connected.ok()) {
      FailLocked(entry, absl::StrCat("resumed but the daemon did not answer: ",
                                     connected.status().message()));
      return absl::UnavailableError(connected.status().message());
    }
    daemon = *std::move(connected);
  }
  {
    absl::MutexLock lock(&mu_);
    const absl::Time now = clock_.Now();
    entry.record.provider_state = provider_state;
    entry.daemon = daemon;
    SetState(entry, sv1::SANDBOX_STATE_READY,
             restarted ? "restarted: its processes were gone" : "");
    sv1::Sandbox& sandbox = entry.record.sandbox;
    *sandbox.mutable_last_active_time() = ToProto(now);
    // TTL counts running time: a fresh TTL from each resume, as sandbox.proto says.
    if (sandbox.ttl_s() > 0) {
      *sandbox.mutable_expire_time() = ToProto(now + absl::Seconds(sandbox.ttl_s()));
    }
  }
  (void)Persist(entry);
  *resumed = true;
  absl::MutexLock lock(&mu_);
  return entry.record.sandbox;
}

absl::StatusOr<std::shared_ptr<DaemonConnection>> SandboxManager::ConnectWhileAlive(
    SandboxProvider& provider, const ProviderState& state, const DaemonEndpoint& endpoint) {
  // Hello in short attempts, checking between them that the environment still exists:
  // a sandbox whose setup failed after it was started must not cost the whole timeout.
  const absl::Time give_up = absl::Now() + options_.connect_timeout;
  while (true) {
    const absl::Duration attempt = std::min(absl::Milliseconds(250), give_up - absl::Now());
    absl::StatusOr<std::shared_ptr<DaemonConnection>> daemon =
        DaemonConnection::Connect(endpoint, attempt);
    if (daemon.ok() || daemon.status().code() == absl::StatusCode::kFailedPrecondition) {
      return daemon;
    }
    if (!provider.Alive(state)) {
      std::string diagnostics = provider.Diagnostics(state);
      return absl::UnavailableError(
          absl::StrCat("the sandbox exited before its daemon answered",
                       diagnostics.empty() ? "" : absl::StrCat("; ", diagnostics)));
    }
    if (absl::Now() >= give_up) return daemon;
  }
}

absl::Status SandboxManager::ConnectLocked(Entry& entry) {
  SandboxRecord snapshot;
  {
    absl::MutexLock lock(&mu_);
    if (entry.daemon != nullptr) return absl::OkStatus();
    snapshot = entry.record;
  }
  SandboxProvider* provider = ProviderFor(snapshot);
  absl::StatusOr<DaemonEndpoint> endpoint = provider->Endpoint(snapshot.provider_state);
  if (!endpoint.ok()) return endpoint.status();
  absl::StatusOr<std::shared_ptr<DaemonConnection>> daemon =
      DaemonConnection::Connect(*endpoint, options_.connect_timeout);
  if (!daemon.ok()) {
    if (!provider->Alive(snapshot.provider_state)) {
      FailLocked(entry, "the sandbox's processes exited unexpectedly");
      absl::MutexLock lock(&mu_);
      return Gone(entry.record.sandbox);
    }
    return daemon.status();
  }
  absl::MutexLock lock(&mu_);
  entry.daemon = *std::move(daemon);
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------
// Public lifecycle calls

absl::StatusOr<SandboxManager::Acquired> SandboxManager::AcquireForSession(
    const sv1::AcquireForSessionRequest& request) {
  if (absl::Status s = ValidateId(request.tenant_id(), "tenant_id", true); !s.ok()) return s;
  if (absl::Status s = ValidateId(request.session_id(), "session_id", true); !s.ok()) return s;
  const auto key = std::make_pair(request.tenant_id(), request.session_id());
  std::shared_ptr<absl::Mutex> session_lock;
  {
    absl::MutexLock lock(&mu_);
    std::shared_ptr<absl::Mutex>& slot = session_locks_[key];
    if (slot == nullptr) slot = std::make_shared<absl::Mutex>();
    session_lock = slot;
  }
  absl::StatusOr<Acquired> result = [&]() -> absl::StatusOr<Acquired> {
    absl::MutexLock session(session_lock.get());
    EntryPtr entry;
    {
      absl::MutexLock lock(&mu_);
      auto it = by_session_.find(key);
      if (it != by_session_.end()) {
        auto found = entries_.find(it->second);
        if (found != entries_.end()) entry = found->second;
      }
    }
    if (entry != nullptr) {
      absl::MutexLock lifecycle(&entry->lifecycle);
      sv1::SandboxState state;
      ProviderState provider_state;
      {
        absl::MutexLock lock(&mu_);
        state = entry->record.sandbox.state();
        provider_state = entry->record.provider_state;
      }
      if (state == sv1::SANDBOX_STATE_READY) {
        SandboxProvider* provider = ProviderFor(entry->record);
        if (provider != nullptr && provider->Alive(provider_state)) {
          absl::MutexLock lock(&mu_);
          *entry->record.sandbox.mutable_last_active_time() = ToProto(clock_.Now());
          return Acquired{entry->record.sandbox, false, false};
        }
        FailLocked(*entry, "the sandbox's processes exited unexpectedly");
      }
      if (state == sv1::SANDBOX_STATE_PAUSED) {
        bool resumed = false;
        absl::StatusOr<sv1::Sandbox> sandbox = ResumeLocked(*entry, &resumed);
        if (sandbox.ok()) return Acquired{*std::move(sandbox), false, resumed};
        if (sandbox.status().code() != absl::StatusCode::kFailedPrecondition) {
          return sandbox.status();
        }
      }
      // DESTROYED or FAILED (or just failed to resume): replaced by a new one below.
    }
    absl::StatusOr<CreateParams> params = ResolveCreate(
        request.tenant_id(), request.session_id(), request.template_(), request.ttl_s(),
        request.idle_timeout_s(), request.on_expiry(), request.labels());
    if (!params.ok()) return params.status();
    bool from_pool = false;
    absl::StatusOr<sv1::Sandbox> sandbox = CreateResolved(*params, &from_pool);
    if (!sandbox.ok()) return sandbox.status();
    return Acquired{*std::move(sandbox), true, false};
  }();
  {
    absl::MutexLock lock(&mu_);
    auto it = session_locks_.find(key);
    if (it != session_locks_.end() && it->second.use_count() == 2) session_locks_.erase(it);
  }
  return result;
}

absl::StatusOr<sv1::Sandbox> SandboxManager::Get(const std::string& tenant_id,
                                                 const std::string& sandbox_id) {
  absl::StatusOr<EntryPtr> found = FindOrNotFound(tenant_id, sandbox_id);
  if (!found.ok()) return found.status();
  EntryPtr entry = *std::move(found);
  absl::MutexLock lock(&mu_);
  return entry->record.sandbox;
}

absl::StatusOr<sv1::ListSandboxesResponse> SandboxManager::List(
    const sv1::ListSandboxesRequest& request) {
  if (absl::Status s = ValidateId(request.tenant_id(), "tenant_id", true); !s.ok()) return s;
  if (absl::Status s = ValidateLabels(request.label_selector(), "label_selector"); !s.ok()) {
    return s;
  }
  if (request.page_size() > kMaxPageSize) {
    return InvalidArgumentError("page_size", "too large", "1000");
  }
  // Cursor: "<create time in unix nanos>/<id>" of the last entry returned.
  int64_t after_nanos = 0;
  std::string after_id;
  if (!request.page_token().empty()) {
    std::vector<std::string> parts = absl::StrSplit(request.page_token(), '/');
    if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &after_nanos) || parts[1].empty()) {
      return InvalidArgumentError("page_token", "not a token from a previous response");
    }
    after_id = parts[1];
  }
  std::set<int> states(request.states().begin(), request.states().end());
  std::vector<sv1::Sandbox> matches;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [id, entry] : entries_) {
      const SandboxRecord& record = entry->record;
      const sv1::Sandbox& sandbox = record.sandbox;
      if (record.pooled || sandbox.tenant_id() != request.tenant_id()) continue;
      if (states.empty() ? sandbox.state() == sv1::SANDBOX_STATE_DESTROYED
                         : !states.count(sandbox.state())) {
        continue;
      }
      if (!request.session_id().empty() && sandbox.session_id() != request.session_id()) continue;
      bool labels_match = true;
      for (const auto& [key, value] : request.label_selector()) {
        auto label = sandbox.labels().find(key);
        if (label == sandbox.labels().end() || label->second != value) labels_match = false;
      }
      if (labels_match) matches.push_back(sandbox);
    }
  }
  auto position = [](const sv1::Sandbox& s) {
    return std::make_pair(absl::ToUnixNanos(FromProto(s.create_time())), s.id());
  };
  std::sort(matches.begin(), matches.end(),
            [&](const auto& a, const auto& b) { return position(a) > position(b); });
  const uint32_t page_size = request.page_size() == 0 ? kDefaultPageSize : request.page_size();
  sv1::ListSandboxesResponse response;
  const auto cursor = std::make_pair(after_nanos, after_id);
  for (const sv1::Sandbox& sandbox : matches) {
    if (!request.page_token().empty() && !(position(sandbox) < cursor)) continue;
    if (static_cast<uint32_t>(response.sandboxes_size()) == page_size) {
      const sv1::Sandbox& last = response.sandboxes(response.sandboxes_size() - 1);
      response.set_next_page_token(
          absl::StrCat(absl::ToUnixNanos(FromProto(last.create_time())), "/", last.id()));
      break;
    }
    *response.add_sandboxes() = sandbox;
  }
  return response;
}

absl::StatusOr<sv1::Sandbox> SandboxManager::Pause(const std::string& tenant_id,
                                                   const std::string& sandbox_id) {
  absl::StatusOr<EntryPtr> found = FindOrNotFound(tenant_id, sandbox_id);
  if (!found.ok()) return found.status();
  EntryPtr entry = *std::move(found);
  absl::MutexLock lifecycle(&entry->lifecycle);
  return PauseLocked(*entry, "paused by request");
}

absl::StatusOr<sv1::Sandbox> SandboxManager::Resume(const std::string& tenant_id,
                                                    const std::string& sandbox_id) {
  absl::StatusOr<EntryPtr> found = FindOrNotFound(tenant_id, sandbox_id);
  if (!found.ok()) return found.status();
  EntryPtr entry = *std::move(found);
  absl::MutexLock lifecycle(&entry->lifecycle);
  bool resumed = false;
  return ResumeLocked(*entry, &resumed);
}

absl::StatusOr<sv1::Sandbox> SandboxManager::Destroy(const std::string& tenant_id,
                                                     const std::string& sandbox_id) {
  absl::StatusOr<EntryPtr> found = FindOrNotFound(tenant_id, sandbox_id);
  if (!found.ok()) return found.status();
  EntryPtr entry = *std::move(found);
  absl::MutexLock lifecycle(&entry->lifecycle);
  return DestroyLocked(*entry, "destroyed by request");
}

std::unique_ptr<SandboxManager::Operation> SandboxManager::BeginOperationLocked(Entry& entry,
                                                                                absl::Time now,
                                                                                bool* persist) {
  *entry.record.sandbox.mutable_last_active_time() = ToProto(now);
  ++entry.operations;
  *persist = now - entry.touch_persisted >= options_.touch_persist_interval;
  if (*persist) entry.touch_persisted = now;
  return std::make_unique<Operation>(this, entry.record.sandbox.id(), entry.daemon);
}

void SandboxManager::EndOperation(const std::string& sandbox_id) {
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(sandbox_id);
  if (it == entries_.end()) return;
  Entry& entry = *it->second;
  if (entry.operations > 0) --entry.operations;
  // The idle timeout counts from the end of the last operation.
  if (entry.record.sandbox.state() == sv1::SANDBOX_STATE_READY) {
    *entry.record.sandbox.mutable_last_active_time() = ToProto(clock_.Now());
  }
}

absl::StatusOr<std::unique_ptr<SandboxManager::Operation>> SandboxManager::TryOperate(
    const std::string& tenant_id, const std::string& sandbox_id) {
  absl::StatusOr<EntryPtr> found = FindOrNotFound(tenant_id, sandbox_id);
  if (!found.ok()) return found.status();
  EntryPtr entry = *std::move(found);
  std::unique_ptr<Operation> operation;
  bool persist = false;
  {
    absl::MutexLock lock(&mu_);
    const sv1::Sandbox& sandbox = entry->record.sandbox;
    if (sandbox.state() == sv1::SANDBOX_STATE_DESTROYED ||
        sandbox.state() == sv1::SANDBOX_STATE_FAILED) {
      return Gone(sandbox);
    }
    if (sandbox.state() != sv1::SANDBOX_STATE_READY || entry->daemon == nullptr) {
      return std::unique_ptr<Operation>();
    }
    operation = BeginOperationLocked(*entry, clock_.Now(), &persist);
  }
  // Persisting the idle timer is best effort; never wait behind a transition for it.
  if (persist && entry->lifecycle.TryLock()) {
    (void)Persist(*entry);
    entry->lifecycle.Unlock();
  }
  return operation;
}

absl::StatusOr<std::unique_ptr<SandboxManager::Operation>> SandboxManager::Operate(
    const std::string& tenant_id, const std::string& sandbox_id) {
  absl::StatusOr<std::unique_ptr<Operation>> fast = TryOperate(tenant_id, sandbox_id);
  if (!fast.ok() || *fast != nullptr) return fast;
  absl::StatusOr<EntryPtr> found = FindOrNotFound(tenant_id, sandbox_id);
  if (!found.ok()) return found.status();
  EntryPtr entry = *std::move(found);
  absl::MutexLock lifecycle(&entry->lifecycle);
  sv1::Sandbox sandbox;
  {
    absl::MutexLock lock(&mu_);
    sandbox = entry->record.sandbox;
  }
  if (sandbox.state() == sv1::SANDBOX_STATE_PAUSED) {
    bool resumed = false;
    absl::StatusOr<sv1::Sandbox> result = ResumeLocked(*entry, &resumed);
    if (!result.ok()) return result.status();
  } else if (sandbox.state() == sv1::SANDBOX_STATE_CREATING) {
    return absl::UnavailableError(absl::StrCat("sandbox ", sandbox_id, " is still being created"));
  } else if (sandbox.state() != sv1::SANDBOX_STATE_READY) {
    return Gone(sandbox);
  }
  if (absl::Status s = ConnectLocked(*entry); !s.ok()) return s;
  std::unique_ptr<Operation> operation;
  {
    absl::MutexLock lock(&mu_);
    if (entry->record.sandbox.state() != sv1::SANDBOX_STATE_READY || entry->daemon == nullptr) {
      return Gone(entry->record.sandbox);
    }
    bool persist = false;
    operation = BeginOperationLocked(*entry, clock_.Now(), &persist);
  }
  (void)Persist(*entry);
  return operation;
}

absl::Status SandboxManager::DaemonFailed(const std::string& sandbox_id,
                                          const absl::Status& error) {
  EntryPtr entry;
  {
    absl::MutexLock lock(&mu_);
    auto it = entries_.find(sandbox_id);
    if (it == entries_.end()) return error;
    entry = it->second;
  }
  absl::MutexLock lifecycle(&entry->lifecycle);
  SandboxRecord snapshot;
  {
    absl::MutexLock lock(&mu_);
    snapshot = entry->record;
  }
  if (snapshot.sandbox.state() != sv1::SANDBOX_STATE_READY) return Gone(snapshot.sandbox);
  SandboxProvider* provider = ProviderFor(snapshot);
  if (provider != nullptr && !provider->Alive(snapshot.provider_state)) {
    FailLocked(*entry, "the sandbox's processes exited unexpectedly");
    absl::MutexLock lock(&mu_);
    return Gone(entry->record.sandbox);
  }
  return error;
}

// ---------------------------------------------------------------------------------
// Reaper and pools

void SandboxManager::ReapOnce() {
  const absl::Time now = clock_.Now();
  std::vector<std::pair<std::string, EntryPtr>> entries;
  {
    absl::MutexLock lock(&mu_);
    entries.assign(entries_.begin(), entries_.end());
  }
  std::vector<std::string> forget;
  for (auto& [id, entry] : entries) {
    // Never wait behind a long transition (a create, a destroy): next pass.
    if (!entry->lifecycle.TryLock()) continue;
    SandboxRecord snapshot;
    int operations = 0;
    {
      absl::MutexLock lock(&mu_);
      snapshot = entry->record;
      operations = entry->operations;
    }
    const sv1::Sandbox& sandbox = snapshot.sandbox;
    SandboxProvider* provider = ProviderFor(snapshot);
    switch (sandbox.state()) {
      case sv1::SANDBOX_STATE_READY: {
        if (provider != nullptr && !provider->Alive(snapshot.provider_state)) {
          FailLocked(*entry, "the sandbox's processes exited unexpectedly");
          break;
        }
        if (snapshot.pooled) break;
        std::string reason;
        if (sandbox.has_expire_time() && now >= FromProto(sandbox.expire_time())) {
          reason = "ttl";
        } else if (sandbox.idle_timeout_s() > 0 && operations == 0 &&
                   now >= FromProto(sandbox.last_active_time()) +
                              absl::Seconds(sandbox.idle_timeout_s())) {
          reason = "idle";
        }
        if (reason.empty()) break;
        const bool pause = sandbox.on_expiry() == sv1::ON_EXPIRY_PAUSE;
        if (logger_ != nullptr) {
          logger_->Info("sandbox expired", {{"sandbox_id", id},
                                            {"tenant_id", sandbox.tenant_id()},
                                            {"reason", reason},
                                            {"action", pause ? "pause" : "destroy"}});
        }
        if (expired_total_ != nullptr) {
          expired_total_->WithLabels({reason, pause ? "pause" : "destroy"}).Increment();
        }
        const std::string why = reason == "ttl" ? "ttl expired" : "idle timeout";
        if (pause) {
          absl::StatusOr<sv1::Sandbox> paused = PauseLocked(*entry, why);
          if (!paused.ok() && logger_ != nullptr) {  // Stays READY; the next pass retries.
            logger_->Warn("expired sandbox not paused",
                          {{"sandbox_id", id}, {"error", paused.status().ToString()}});
          }
        } else {
          (void)DestroyLocked(*entry, why);
        }
        break;
      }
      case sv1::SANDBOX_STATE_FAILED:
        if (!snapshot.provider_state.empty()) {
          FailLocked(*entry, sandbox.state_message());  // Retries the cleanup.
        } else if (now >= FromProto(sandbox.update_time()) + options_.destroyed_retention) {
          forget.push_back(id);
        }
        break;
      case sv1::SANDBOX_STATE_DESTROYED:
        if (now >= FromProto(sandbox.update_time()) + options_.destroyed_retention) {
          forget.push_back(id);
        }
        break;
      default:
        break;
    }
    entry->lifecycle.Unlock();
  }
  for (const std::string& id : forget) {
    (void)store_->Remove(id);
    absl::MutexLock lock(&mu_);
    entries_.erase(id);
  }
  absl::MutexLock lock(&mu_);
  UpdateGauges();
}

void SandboxManager::FillPoolsOnce() {
  for (const auto& [name, config] : templates_.by_name) {
    const int target = static_cast<int>(config.proto.warm_pool_target());
    if (target == 0) continue;
    while (true) {
      {
        absl::MutexLock lock(&mu_);
        if (stopping_) return;
        const int have = static_cast<int>(pools_[name].size()) + pool_filling_[name];
        if (have >= target || clock_.Now() < pool_retry_at_[name]) break;
        int live = 0;
        for (const auto& [id, entry] : entries_) live += IsLive(entry->record.sandbox.state());
        if (live >= options_.max_sandboxes) break;
        pool_filling_[name]++;
      }
      CreateParams params;
      params.config = &config;
      params.ttl_s = config.proto.default_ttl_s();
      params.idle_timeout_s = config.proto.default_idle_timeout_s();
      params.on_expiry = config.proto.default_on_expiry();
      absl::StatusOr<sv1::Sandbox> sandbox = ColdCreate(params, /*pooled=*/true);
      absl::MutexLock lock(&mu_);
      pool_filling_[name]--;
      if (sandbox.ok()) {
        auto it = entries_.find(sandbox->id());
        if (it != entries_.end() && it->second->record.pooled &&
            it->second->record.sandbox.state() == sv1::SANDBOX_STATE_READY) {
          pools_[name].push_back(sandbox->id());
        }
        pool_backoff_.erase(name);
        continue;
      }
      absl::Duration& backoff = pool_backoff_[name];
      backoff = std::min(options_.pool_retry_max,
                         backoff == absl::ZeroDuration() ? absl::Milliseconds(100) : backoff * 2);
      pool_retry_at_[name] = clock_.Now() + backoff;
      if (logger_ != nullptr) {
        logger_->Warn("cannot fill the warm pool",
                      {{"template", name},
                       {"error", sandbox.status().ToString()},
                       {"retry_in_ms", absl::ToInt64Milliseconds(backoff)}});
      }
      break;
    }
  }
}

void SandboxManager::ReaperLoop() {
  while (true) {
    ReapOnce();
    absl::MutexLock lock(&mu_);
    mu_.AwaitWithTimeout(absl::Condition(&stopping_), options_.reap_interval);
    if (stopping_) return;
  }
}

void SandboxManager::FillerLoop() {
  while (true) {
    FillPoolsOnce();
    absl::MutexLock lock(&mu_);
    auto wake = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_ || pool_wakeup_; };
    mu_.AwaitWithTimeout(absl::Condition(&wake), absl::Seconds(1));
    pool_wakeup_ = false;
    if (stopping_) return;
  }
}

// ---------------------------------------------------------------------------------
// Start, recovery, stop

absl::Status SandboxManager::Recover() {
  std::vector<std::string> problems;
  absl::StatusOr<std::vector<SandboxRecord>> records = store_->LoadAll(&problems);
  if (!records.ok()) return records.status();
  for (const std::string& problem : problems) {
    if (logger_ != nullptr)
      logger_->Warn("unreadable sandbox record set aside", {{"file", problem}});
  }
  std::set<std::string> known;
  int adopted = 0, reaped = 0;
  for (SandboxRecord& record : *records) {
    const std::string id = record.sandbox.id();
    known.insert(id);
    auto entry = std::make_shared<Entry>();
    entry->record = std::move(record);
    {
      absl::MutexLock lock(&mu_);
      entries_[id] = entry;
    }
    SandboxProvider* provider = ProviderFor(entry->record);
    absl::MutexLock lifecycle(&entry->lifecycle);
    const sv1::SandboxState state = entry->record.sandbox.state();
    if (provider == nullptr) {
      if (IsLive(state)) {
        absl::MutexLock lock(&mu_);
        SetState(*entry, sv1::SANDBOX_STATE_FAILED,
                 absl::StrCat("provider \"", entry->record.sandbox.provider(),
                              "\" is not configured on this replica"));
      }
      (void)Persist(*entry);
      continue;
    }
    provider->Adopt(entry->record.provider_state);
    if (state == sv1::SANDBOX_STATE_CREATING) {
      // A crash mid-creation: whatever it started is an orphan.
      FailLocked(*entry, "parley-sandbox restarted while the sandbox was being created");
      ++reaped;
      continue;
    }
    const bool alive = provider->Alive(entry->record.provider_state);
    if (state == sv1::SANDBOX_STATE_READY && !alive) {
      FailLocked(*entry, "the sandbox's processes were gone after a restart of parley-sandbox");
      ++reaped;
      continue;
    }
    if (state == sv1::SANDBOX_STATE_FAILED && !entry->record.provider_state.empty()) {
      FailLocked(*entry, entry->record.sandbox.state_message());
      continue;
    }
    absl::MutexLock lock(&mu_);
    if (state == sv1::SANDBOX_STATE_READY || state == sv1::SANDBOX_STATE_PAUSED) {
      ++adopted;
      Index(id, *entry);
      if (entry->record.pooled && state == sv1::SANDBOX_STATE_READY) {
        pools_[entry->record.sandbox.template_()].push_back(id);
      }
    }
  }
  for (const auto& [name, provider] : providers_) provider->CollectGarbage(known);
  if (logger_ != nullptr) {
    logger_->Info("sandbox records recovered", {{"records", static_cast<int64_t>(known.size())},
                                                {"adopted", adopted},
                                                {"orphans_reaped", reaped}});
  }
  return absl::OkStatus();
}

absl::Status SandboxManager::Start() {
  if (absl::Status s = store_->Init(); !s.ok()) return s;
  if (absl::Status s = Recover(); !s.ok()) return s;
  if (options_.reap_interval > absl::ZeroDuration()) {
    reaper_ = std::thread([this] { ReaperLoop(); });
  }
  if (options_.fill_pools) filler_ = std::thread([this] { FillerLoop(); });
  return absl::OkStatus();
}

void SandboxManager::Stop(bool destroy_pooled) {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (reaper_.joinable()) reaper_.join();
  if (filler_.joinable()) filler_.join();
  if (!destroy_pooled) return;
  std::vector<std::pair<std::string, EntryPtr>> pooled;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [id, entry] : entries_) {
      if (entry->record.pooled) pooled.emplace_back(id, entry);
    }
  }
  for (auto& [id, entry] : pooled) {
    absl::MutexLock lifecycle(&entry->lifecycle);
    if (DestroyLocked(*entry, "warm sandbox released at shutdown").ok()) {
      (void)store_->Remove(id);
      absl::MutexLock lock(&mu_);
      entries_.erase(id);
    }
  }
}

}  // namespace parley::sandbox
