// The manager's calls: each finds its sandbox in the table, takes the sandbox's turn
// when it changes it, and hands the I/O to Lifecycle (see manager.h for the parts and
// sandbox-svc/README.md for the threads and the lock order).
#include "sandbox-svc/manager/manager.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/proto_time.h"
#include "common/status.h"
#include "sandbox-svc/contract/list_cursor.h"
#include "sandbox-svc/contract/sandbox_id.h"
#include "sandbox-svc/manager/recovery.h"

namespace parley::sandbox {
namespace {

namespace sandbox_pb = ::parley::sandbox::v1;

constexpr uint32_t kDefaultPageSize = 50;
ListCursor PositionOf(const sandbox_pb::Sandbox& sandbox) {
  return {absl::ToUnixNanos(FromTimestamp(sandbox.create_time())), sandbox.id()};
}

bool Matches(const sandbox_pb::ListSandboxesRequest& request, const std::set<int>& states,
             const sandbox_pb::Sandbox& sandbox) {
  if (states.empty() ? sandbox.state() == sandbox_pb::SANDBOX_STATE_DESTROYED
                     : !states.count(sandbox.state())) {
    return false;
  }
  if (!request.session_id().empty() && sandbox.session_id() != request.session_id()) return false;
  for (const auto& [key, value] : request.label_selector()) {
    auto label = sandbox.labels().find(key);
    if (label == sandbox.labels().end() || label->second != value) return false;
  }
  return true;
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
      table_(options_.max_sandboxes, options_.max_sandboxes_per_tenant),
      lifecycle_(options_, templates_, providers_, store_, &table_, clock_, logger_),
      pool_(options_, templates_, &lifecycle_, &table_, clock_, logger_),
      reaper_(options_, templates_, &lifecycle_, &table_, store_, clock_, logger_, registry) {
  if (registry == nullptr) return;
  create_seconds_ = &registry->AddHistogram("parley_sandbox_create_seconds",
                                            "Create-to-ready time by source", {"source"});
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

SandboxManager::~SandboxManager() { Stop(false); }

absl::Status SandboxManager::Start() {
  if (absl::Status s = store_->Init(); !s.ok()) return s;
  if (absl::Status s = Recover(lifecycle_, table_, *store_, providers_, logger_); !s.ok()) {
    return s;
  }
  reaper_.Start();
  pool_.Start();
  return absl::OkStatus();
}

void SandboxManager::Stop(bool destroy_pooled) {
  table_.Close();
  reaper_.Stop();
  pool_.Stop();
  if (!destroy_pooled) return;
  for (const std::shared_ptr<Sandbox>& sandbox : table_.All()) {
    if (!sandbox->Record().pooled) continue;
    Sandbox::Turn turn = sandbox->WaitForTurn();
    if (lifecycle_.Destroy(*sandbox, "warm sandbox released at shutdown").ok()) {
      (void)store_->Remove(sandbox->id());
      table_.Forget(sandbox->id());
    }
  }
}

// ---------------------------------------------------------------------------------
// Templates

sandbox_pb::Template SandboxManager::TemplateView(const TemplateConfig& config) {
  sandbox_pb::Template proto = config.proto;
  proto.set_warm_pool_ready(static_cast<uint32_t>(table_.PoolReady(config.proto.name())));
  if (auto provider = providers_.find(config.proto.provider()); provider != providers_.end()) {
    proto.set_cgroup_mode(provider->second->CgroupMode());
  }
  return proto;
}

std::vector<sandbox_pb::Template> SandboxManager::ListTemplates() {
  std::vector<sandbox_pb::Template> result;
  for (const auto& [name, config] : templates_.by_name) result.push_back(TemplateView(config));
  return result;
}

absl::StatusOr<sandbox_pb::Template> SandboxManager::GetTemplate(const std::string& name) {
  const TemplateConfig* config = templates_.Find(name);
  if (config == nullptr || name.empty()) {
    return absl::NotFoundError(absl::StrCat("template \"", name, "\" not found"));
  }
  return TemplateView(*config);
}

// ---------------------------------------------------------------------------------
// Create and acquire

template <typename Request>
absl::StatusOr<SandboxManager::CreateParams> SandboxManager::ResolveCreate(
    const Request& request) const {
  CreateParams params;
  params.config = templates_.Find(request.template_());
  if (params.config == nullptr) {
    return absl::NotFoundError(absl::StrCat("template \"", request.template_(), "\" not found"));
  }
  const sandbox_pb::Template& defaults = params.config->proto;
  if (providers_.find(defaults.provider()) == providers_.end()) {
    return absl::FailedPreconditionError(
        absl::StrCat("template \"", defaults.name(), "\" uses the provider \"", defaults.provider(),
                     "\", which is not configured on this replica"));
  }
  SandboxTerms& terms = params.terms;
  terms.tenant_id = request.tenant_id();
  terms.session_id = request.session_id();
  terms.labels.insert(request.labels().begin(), request.labels().end());
  terms.ttl_s = request.ttl_s() != 0 ? request.ttl_s() : defaults.default_ttl_s();
  terms.idle_timeout_s =
      request.idle_timeout_s() != 0 ? request.idle_timeout_s() : defaults.default_idle_timeout_s();
  terms.on_expiry = request.on_expiry() != sandbox_pb::ON_EXPIRY_UNSPECIFIED
                        ? request.on_expiry()
                        : defaults.default_on_expiry();
  if (terms.on_expiry == sandbox_pb::ON_EXPIRY_UNSPECIFIED)
    terms.on_expiry = sandbox_pb::ON_EXPIRY_DESTROY;
  return params;
}

absl::StatusOr<sandbox_pb::Sandbox> SandboxManager::Create(
    const sandbox_pb::CreateSandboxRequest& request) {
  absl::StatusOr<CreateParams> params = ResolveCreate(request);
  if (!params.ok()) return params.status();
  return CreateFrom(*params);
}

absl::StatusOr<sandbox_pb::Sandbox> SandboxManager::CreateFrom(const CreateParams& params) {
  const absl::Time started = clock_.Now();
  std::optional<absl::StatusOr<sandbox_pb::Sandbox>> warm =
      pool_.Take(*params.config, params.terms);
  const bool from_pool = warm.has_value();
  absl::StatusOr<sandbox_pb::Sandbox> sandbox =
      from_pool ? *std::move(warm)
                : lifecycle_.ColdCreate(*params.config, params.terms, /*pooled=*/false);
  if (create_seconds_ != nullptr && sandbox.ok()) {
    create_seconds_->WithLabels({from_pool ? "pool" : "cold"})
        .Observe(absl::ToDoubleSeconds(clock_.Now() - started));
  }
  return sandbox;
}

void SandboxManager::EnterSession(const std::pair<std::string, std::string>& key) {
  absl::MutexLock lock(&sessions_mu_);
  auto free = [this, &key]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(sessions_mu_) {
    return !sessions_in_progress_.count(key);
  };
  sessions_mu_.Await(absl::Condition(&free));
  sessions_in_progress_.insert(key);
}

void SandboxManager::LeaveSession(const std::pair<std::string, std::string>& key) {
  absl::MutexLock lock(&sessions_mu_);
  sessions_in_progress_.erase(key);
}

std::optional<absl::StatusOr<SandboxManager::Acquired>> SandboxManager::ReuseSession(
    const sandbox_pb::AcquireForSessionRequest& request) {
  std::shared_ptr<Sandbox> sandbox =
      table_.FindBySession(request.tenant_id(), request.session_id());
  if (sandbox == nullptr) return std::nullopt;
  Sandbox::Turn turn = sandbox->WaitForTurn();
  const SandboxRecord record = sandbox->Record();
  const sandbox_pb::SandboxState state = record.sandbox.state();
  if (state == sandbox_pb::SANDBOX_STATE_READY) {
    if (lifecycle_.Alive(record)) {
      sandbox->Touch(clock_.Now());
      return Acquired{sandbox->View(), false, false};
    }
    lifecycle_.Fail(*sandbox, "the sandbox's processes exited unexpectedly");
  }
  if (state == sandbox_pb::SANDBOX_STATE_PAUSED) {
    bool resumed = false;
    absl::StatusOr<sandbox_pb::Sandbox> view = lifecycle_.Resume(*sandbox, &resumed);
    if (view.ok()) return Acquired{*std::move(view), false, resumed};
    if (view.status().code() != absl::StatusCode::kFailedPrecondition) return view.status();
  }
  // DESTROYED or FAILED (or just failed to resume): the caller makes a new one.
  return std::nullopt;
}

absl::StatusOr<SandboxManager::Acquired> SandboxManager::AcquireForSession(
    const sandbox_pb::AcquireForSessionRequest& request) {
  const auto key = std::make_pair(request.tenant_id(), request.session_id());
  EnterSession(key);
  absl::StatusOr<Acquired> result = [&]() -> absl::StatusOr<Acquired> {
    if (auto reused = ReuseSession(request); reused.has_value()) return *std::move(reused);
    absl::StatusOr<CreateParams> params = ResolveCreate(request);
    if (!params.ok()) return params.status();
    absl::StatusOr<sandbox_pb::Sandbox> sandbox = CreateFrom(*params);
    if (!sandbox.ok()) return sandbox.status();
    return Acquired{*std::move(sandbox), true, false};
  }();
  LeaveSession(key);
  return result;
}

// ---------------------------------------------------------------------------------
// One sandbox

absl::StatusOr<std::shared_ptr<Sandbox>> SandboxManager::FindOrNotFound(
    const std::string& tenant_id, const std::string& sandbox_id) {
  std::shared_ptr<Sandbox> sandbox = table_.Find(sandbox_id);
  // Another tenant's sandbox and a warm one behave exactly like a missing one.
  if (sandbox != nullptr && sandbox->BelongsTo(tenant_id)) return sandbox;
  // Valid ids only reach here (api/ checks the target), so an owner that does not parse
  // cannot be another replica's.
  absl::StatusOr<std::optional<uint32_t>> owner = SandboxIdOwner(sandbox_id);
  if (options_.replica && owner.ok() && owner->has_value() && **owner != *options_.replica) {
    return SandboxOnAnotherReplica(sandbox_id, **owner, *options_.replica);
  }
  return SandboxNotFound(sandbox_id);
}

absl::StatusOr<sandbox_pb::Sandbox> SandboxManager::Get(const std::string& tenant_id,
                                                        const std::string& sandbox_id) {
  absl::StatusOr<std::shared_ptr<Sandbox>> found = FindOrNotFound(tenant_id, sandbox_id);
  if (!found.ok()) return found.status();
  return (*found)->View();
}

absl::StatusOr<sandbox_pb::ListSandboxesResponse> SandboxManager::List(
    const sandbox_pb::ListSandboxesRequest& request) {
  std::optional<ListCursor> after;
  if (!request.page_token().empty()) {
    absl::StatusOr<ListCursor> parsed = ListCursor::Parse(request.page_token());
    if (!parsed.ok()) return parsed.status();
    after = *std::move(parsed);
  }
  const std::set<int> states(request.states().begin(), request.states().end());
  std::vector<sandbox_pb::Sandbox> matches;
  for (const std::shared_ptr<Sandbox>& sandbox : table_.All()) {
    if (!sandbox->BelongsTo(request.tenant_id())) continue;
    sandbox_pb::Sandbox view = sandbox->View();
    if (Matches(request, states, view)) matches.push_back(std::move(view));
  }
  std::sort(matches.begin(), matches.end(),
            [](const auto& a, const auto& b) { return PositionOf(a) > PositionOf(b); });
  const uint32_t page_size = request.page_size() == 0 ? kDefaultPageSize : request.page_size();
  sandbox_pb::ListSandboxesResponse response;
  for (const sandbox_pb::Sandbox& sandbox : matches) {
    if (after.has_value() && !(PositionOf(sandbox) < *after)) continue;
    if (static_cast<uint32_t>(response.sandboxes_size()) == page_size) {
      response.set_next_page_token(
          PositionOf(response.sandboxes(response.sandboxes_size() - 1)).ToToken());
      break;
    }
    *response.add_sandboxes() = sandbox;
  }
  return response;
}

absl::StatusOr<sandbox_pb::Sandbox> SandboxManager::Pause(const std::string& tenant_id,
                                                          const std::string& sandbox_id) {
  absl::StatusOr<std::shared_ptr<Sandbox>> found = FindOrNotFound(tenant_id, sandbox_id);
  if (!found.ok()) return found.status();
  Sandbox::Turn turn = (*found)->WaitForTurn();
  return lifecycle_.Pause(**found, "paused by request");
}

absl::StatusOr<sandbox_pb::Sandbox> SandboxManager::Resume(const std::string& tenant_id,
                                                           const std::string& sandbox_id) {
  absl::StatusOr<std::shared_ptr<Sandbox>> found = FindOrNotFound(tenant_id, sandbox_id);
  if (!found.ok()) return found.status();
  Sandbox::Turn turn = (*found)->WaitForTurn();
  bool resumed = false;
  return lifecycle_.Resume(**found, &resumed);
}

absl::StatusOr<sandbox_pb::Sandbox> SandboxManager::Destroy(const std::string& tenant_id,
                                                            const std::string& sandbox_id) {
  absl::StatusOr<std::shared_ptr<Sandbox>> found = FindOrNotFound(tenant_id, sandbox_id);
  if (!found.ok()) return found.status();
  Sandbox::Turn turn = (*found)->WaitForTurn();
  return lifecycle_.Destroy(**found, "destroyed by request");
}

// ---------------------------------------------------------------------------------
// Operations

absl::StatusOr<std::unique_ptr<Operation>> SandboxManager::TryOperate(
    const std::string& tenant_id, const std::string& sandbox_id) {
  absl::StatusOr<std::shared_ptr<Sandbox>> found = FindOrNotFound(tenant_id, sandbox_id);
  if (!found.ok()) return found.status();
  std::shared_ptr<Sandbox> sandbox = *std::move(found);
  bool persist = false;
  absl::StatusOr<std::shared_ptr<DaemonConnection>> daemon =
      sandbox->BeginOperation(clock_.Now(), options_.touch_persist_interval, &persist);
  if (!daemon.ok()) return daemon.status();
  if (*daemon == nullptr) return std::unique_ptr<Operation>();
  auto operation = std::make_unique<Operation>(sandbox, *std::move(daemon), clock_);
  // Persisting the idle timer is best effort; never wait behind a transition for it.
  if (persist) {
    if (std::optional<Sandbox::Turn> turn = sandbox->TryTurn(); turn.has_value()) {
      (void)lifecycle_.Persist(*sandbox);
    }
  }
  return operation;
}

absl::StatusOr<std::unique_ptr<Operation>> SandboxManager::Operate(const std::string& tenant_id,
                                                                   const std::string& sandbox_id) {
  absl::StatusOr<std::unique_ptr<Operation>> fast = TryOperate(tenant_id, sandbox_id);
  if (!fast.ok() || *fast != nullptr) return fast;
  absl::StatusOr<std::shared_ptr<Sandbox>> found = FindOrNotFound(tenant_id, sandbox_id);
  if (!found.ok()) return found.status();
  std::shared_ptr<Sandbox> sandbox = *std::move(found);
  Sandbox::Turn turn = sandbox->WaitForTurn();
  const sandbox_pb::Sandbox view = sandbox->View();
  if (view.state() == sandbox_pb::SANDBOX_STATE_PAUSED) {
    bool resumed = false;
    absl::StatusOr<sandbox_pb::Sandbox> result = lifecycle_.Resume(*sandbox, &resumed);
    if (!result.ok()) return result.status();
  } else if (view.state() == sandbox_pb::SANDBOX_STATE_CREATING) {
    return absl::UnavailableError(absl::StrCat("sandbox ", sandbox_id, " is still being created"));
  } else if (view.state() != sandbox_pb::SANDBOX_STATE_READY) {
    return SandboxGone(view);
  }
  if (absl::Status s = lifecycle_.Connect(*sandbox); !s.ok()) return s;
  bool persist = false;
  absl::StatusOr<std::shared_ptr<DaemonConnection>> daemon =
      sandbox->BeginOperation(clock_.Now(), options_.touch_persist_interval, &persist);
  if (!daemon.ok()) return daemon.status();
  if (*daemon == nullptr) return SandboxGone(sandbox->View());
  auto operation = std::make_unique<Operation>(sandbox, *std::move(daemon), clock_);
  (void)lifecycle_.Persist(*sandbox);
  return operation;
}

absl::Status SandboxManager::DaemonFailed(const std::string& sandbox_id,
                                          const absl::Status& error) {
  std::shared_ptr<Sandbox> sandbox = table_.Find(sandbox_id);
  if (sandbox == nullptr) return error;
  Sandbox::Turn turn = sandbox->WaitForTurn();
  const SandboxRecord record = sandbox->Record();
  if (record.sandbox.state() != sandbox_pb::SANDBOX_STATE_READY) return SandboxGone(record.sandbox);
  if (lifecycle_.Alive(record)) return error;
  lifecycle_.Fail(*sandbox, "the sandbox's processes exited unexpectedly");
  return SandboxGone(sandbox->View());
}

}  // namespace parley::sandbox
