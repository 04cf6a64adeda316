// The I/O side of a sandbox's transitions; see lifecycle.h for the rules. Each step
// reads a copy of the record, calls the provider with no lock held, then tells the
// Sandbox the outcome and persists its record.
#include "sandbox-svc/manager/lifecycle.h"

#include <algorithm>
#include <optional>

#include "absl/strings/str_cat.h"
#include "common/proto_time.h"
#include "sandbox-svc/contract/sandbox_id.h"

namespace parley::sandbox {

namespace sandbox_pb = ::parley::sandbox::v1;

namespace {

// Before a transition `from` → `to`: the sandbox as it is when it is in `to` already
// (nothing to do), SANDBOX_GONE when it is in neither, nullopt when the transition runs.
std::optional<absl::StatusOr<sandbox_pb::Sandbox>> Settled(const sandbox_pb::Sandbox& sandbox,
                                                           sandbox_pb::SandboxState from,
                                                           sandbox_pb::SandboxState to) {
  if (sandbox.state() == to) return sandbox;
  if (sandbox.state() != from) return SandboxGone(sandbox);
  return std::nullopt;
}

}  // namespace

Lifecycle::Lifecycle(const ManagerOptions& options, const TemplateSet& templates,
                     const std::map<std::string, SandboxProvider*>& providers, StateStore* store,
                     SandboxTable* table, Clock& clock, const telemetry::Logger* logger)
    : options_(options),
      templates_(templates),
      providers_(providers),
      store_(store),
      table_(table),
      clock_(clock),
      logger_(logger),
      ids_(clock) {}

SandboxSpec Lifecycle::SpecFor(const SandboxRecord& record) const {
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

SandboxProvider* Lifecycle::ProviderFor(const SandboxRecord& record) const {
  auto it = providers_.find(record.sandbox.provider());
  return it == providers_.end() ? nullptr : it->second;
}

bool Lifecycle::Alive(const SandboxRecord& record) {
  SandboxProvider* provider = ProviderFor(record);
  return provider != nullptr && provider->Alive(record.provider_state);
}

absl::Status Lifecycle::Persist(Sandbox& sandbox) {
  const SandboxRecord snapshot = sandbox.Record();
  absl::Status status = store_->Write(snapshot);
  if (!status.ok() && logger_ != nullptr) {
    logger_->Error("cannot write sandbox record",
                   {{"sandbox_id", snapshot.sandbox.id()}, {"error", status.ToString()}});
  }
  return status;
}

RecordFn Lifecycle::Recorder(Sandbox& sandbox) {
  return [this, &sandbox](const ProviderState& updated) {
    sandbox.SetProviderState(updated);
    return Persist(sandbox);
  };
}

// ---------------------------------------------------------------------------------
// Create

absl::StatusOr<sandbox_pb::Sandbox> Lifecycle::ColdCreate(const TemplateConfig& config,
                                                          const SandboxTerms& terms, bool pooled) {
  const absl::Time now = clock_.Now();
  SandboxRecord record;
  sandbox_pb::Sandbox& proto = record.sandbox;
  proto.set_id(SandboxIdForReplica(ids_.Next("sbx"), options_.replica));
  if (!pooled) {
    proto.set_tenant_id(terms.tenant_id);
    proto.set_session_id(terms.session_id);
    proto.mutable_labels()->insert(terms.labels.begin(), terms.labels.end());
  }
  proto.set_template_(config.proto.name());
  proto.set_provider(config.proto.provider());
  proto.set_state(sandbox_pb::SANDBOX_STATE_CREATING);
  *proto.mutable_create_time() = ToTimestamp(now);
  *proto.mutable_update_time() = ToTimestamp(now);
  *proto.mutable_last_active_time() = ToTimestamp(now);
  proto.set_ttl_s(terms.ttl_s);
  proto.set_idle_timeout_s(terms.idle_timeout_s);
  proto.set_on_expiry(terms.on_expiry);
  *proto.mutable_limits() = config.proto.limits();
  record.pooled = pooled;
  const SandboxTable::Owner owner{pooled ? "" : terms.tenant_id, pooled ? "" : terms.session_id,
                                  config.proto.name()};
  auto sandbox = std::make_shared<Sandbox>(std::move(record));

  // Nobody may transition the sandbox until it is built: its turn is taken before the
  // table makes it visible.
  Sandbox::Turn turn = sandbox->WaitForTurn();
  if (absl::Status s = table_->Reserve(sandbox, owner); !s.ok()) return s;
  const absl::Time begin = absl::Now();  // Real time: these are measurements.
  const SandboxRecord planned = sandbox->Record();
  SandboxProvider* provider = ProviderFor(planned);
  const SandboxSpec spec = SpecFor(planned);
  absl::StatusOr<ProviderState> plan = provider->Plan(spec);
  if (!plan.ok()) {
    Fail(*sandbox, absl::StrCat("provider: ", plan.status().message()));
    return absl::UnavailableError(absl::StrCat("cannot create sandbox: ", plan.status().message()));
  }
  sandbox->SetProviderState(*plan);
  // The record exists before any process does.
  if (absl::Status s = Persist(*sandbox); !s.ok()) {
    Fail(*sandbox, absl::StrCat("cannot record the sandbox: ", s.message()));
    return absl::UnavailableError(absl::StrCat("cannot record the sandbox: ", s.message()));
  }
  if (absl::Status s = Build(*sandbox, *provider, spec, *plan, absl::Now() - begin); !s.ok()) {
    return s;
  }
  return sandbox->View();
}

absl::Status Lifecycle::Build(Sandbox& sandbox, SandboxProvider& provider, const SandboxSpec& spec,
                              const ProviderState& plan, absl::Duration recording) {
  const std::string& id = sandbox.id();
  ProviderState state = plan;
  const absl::Time start = absl::Now();
  absl::StatusOr<DaemonEndpoint> endpoint = provider.Start(spec, state, Recorder(sandbox));
  const absl::Time started = absl::Now();
  sandbox.SetProviderState(state);
  if (!endpoint.ok()) {
    Fail(sandbox, std::string(endpoint.status().message()));
    return absl::UnavailableError(
        absl::StrCat("sandbox ", id, " failed to start: ", endpoint.status().message()));
  }
  absl::StatusOr<std::shared_ptr<DaemonConnection>> daemon =
      ConnectWhileAlive(provider, state, *endpoint);
  const absl::Time connected = absl::Now();
  if (!daemon.ok()) {
    Fail(sandbox, std::string(daemon.status().message()));
    absl::Status status = daemon.status();
    if (status.code() != absl::StatusCode::kFailedPrecondition) {
      status = absl::UnavailableError(absl::StrCat(
          "sandbox ", id, " started but its daemon did not answer: ", daemon.status().message()));
    }
    return status;
  }
  if (absl::Status ready = sandbox.Ready(*std::move(daemon), "", clock_.Now()); !ready.ok()) {
    return ready;  // Failed or destroyed by another path meanwhile: nothing to hand out.
  }
  if (absl::Status s = Persist(sandbox); !s.ok()) {
    Fail(sandbox, absl::StrCat("cannot record the sandbox: ", s.message()));
    return absl::UnavailableError(absl::StrCat("cannot record the sandbox: ", s.message()));
  }
  if (logger_ != nullptr) {
    const SandboxRecord record = sandbox.Record();
    // Where create-to-ready time goes: recording, the provider, the daemon's start-up
    // and handshake.
    logger_->Info(record.pooled ? "warm sandbox ready" : "sandbox created",
                  {{"sandbox_id", id},
                   {"tenant_id", record.sandbox.tenant_id()},
                   {"template", spec.template_name},
                   {"record_ms", absl::ToDoubleMilliseconds(recording)},
                   {"provider_ms", absl::ToDoubleMilliseconds(started - start)},
                   {"hello_ms", absl::ToDoubleMilliseconds(connected - started)}});
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<DaemonConnection>> Lifecycle::ConnectWhileAlive(
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

// ---------------------------------------------------------------------------------
// Transitions (the caller holds the sandbox's turn)

void Lifecycle::Fail(Sandbox& sandbox, const std::string& message) {
  const SandboxRecord snapshot = sandbox.Record();
  SandboxProvider* provider = ProviderFor(snapshot);
  bool cleaned = true;
  if (provider != nullptr && !snapshot.provider_state.empty()) {
    absl::Status destroyed = provider->Destroy(snapshot.provider_state);
    cleaned = destroyed.ok();
    if (!cleaned && logger_ != nullptr) {
      logger_->Warn("cannot clean up a failed sandbox; the reaper retries",
                    {{"sandbox_id", sandbox.id()}, {"error", destroyed.ToString()}});
    }
  }
  table_->Release(sandbox.id());
  if (!sandbox.Failed(message, cleaned, clock_.Now()).ok()) return;  // Destroyed already.
  if (logger_ != nullptr) {
    logger_->Warn("sandbox failed", {{"sandbox_id", sandbox.id()}, {"reason", message}});
  }
  (void)Persist(sandbox);
}

absl::Status Lifecycle::FailGone(Sandbox& sandbox, const std::string& message) {
  Fail(sandbox, message);
  return SandboxGone(sandbox.View());
}

absl::StatusOr<sandbox_pb::Sandbox> Lifecycle::Destroy(Sandbox& sandbox, const std::string& why) {
  const SandboxRecord snapshot = sandbox.Record();
  if (snapshot.sandbox.state() == sandbox_pb::SANDBOX_STATE_DESTROYED) return snapshot.sandbox;
  SandboxProvider* provider = ProviderFor(snapshot);
  if (provider != nullptr && !snapshot.provider_state.empty()) {
    absl::Status destroyed = provider->Destroy(snapshot.provider_state);
    if (!destroyed.ok()) {
      table_->Release(sandbox.id());
      // Not DESTROYED (checked above, and we hold the turn): the move is legal.
      (void)sandbox.FailedAsIs(
          absl::StrCat("destroy failed (retried by the reaper): ", destroyed.message()),
          clock_.Now());
      (void)Persist(sandbox);
      return absl::UnavailableError(
          absl::StrCat("cannot destroy sandbox ", sandbox.id(), ": ", destroyed.message()));
    }
  }
  table_->Release(sandbox.id());
  (void)sandbox.Destroyed(why, clock_.Now());  // Legal: not DESTROYED, checked above.
  (void)Persist(sandbox);
  if (logger_ != nullptr) {
    logger_->Info("sandbox destroyed", {{"sandbox_id", sandbox.id()}, {"reason", why}});
  }
  return sandbox.View();
}

absl::StatusOr<sandbox_pb::Sandbox> Lifecycle::Pause(Sandbox& sandbox, const std::string& why) {
  const SandboxRecord snapshot = sandbox.Record();
  auto settled =
      Settled(snapshot.sandbox, sandbox_pb::SANDBOX_STATE_READY, sandbox_pb::SANDBOX_STATE_PAUSED);
  if (settled.has_value()) return *std::move(settled);
  SandboxProvider* provider = ProviderFor(snapshot);
  ProviderState provider_state = snapshot.provider_state;
  absl::Status paused = provider->Pause(SpecFor(snapshot), provider_state);
  if (!paused.ok()) {
    if (!provider->Alive(snapshot.provider_state)) {
      return FailGone(sandbox, "the sandbox's processes exited unexpectedly");
    }
    return absl::UnavailableError(absl::StrCat("cannot pause: ", paused.message()));
  }
  if (absl::Status s = sandbox.Paused(std::move(provider_state), why, clock_.Now()); !s.ok()) {
    return s;
  }
  (void)Persist(sandbox);
  return sandbox.View();
}

absl::StatusOr<sandbox_pb::Sandbox> Lifecycle::Resume(Sandbox& sandbox, bool* resumed) {
  *resumed = false;
  const SandboxRecord snapshot = sandbox.Record();
  auto settled =
      Settled(snapshot.sandbox, sandbox_pb::SANDBOX_STATE_PAUSED, sandbox_pb::SANDBOX_STATE_READY);
  if (settled.has_value()) return *std::move(settled);
  SandboxProvider* provider = ProviderFor(snapshot);
  ProviderState provider_state = snapshot.provider_state;
  bool restarted = false;
  absl::StatusOr<DaemonEndpoint> endpoint =
      provider->Resume(SpecFor(snapshot), provider_state, Recorder(sandbox), &restarted);
  if (!endpoint.ok()) {
    sandbox.SetProviderState(provider_state);
    Fail(sandbox, absl::StrCat("resume failed: ", endpoint.status().message()));
    return absl::UnavailableError(
        absl::StrCat("cannot resume sandbox ", sandbox.id(), ": ", endpoint.status().message()));
  }
  std::shared_ptr<DaemonConnection> daemon = sandbox.daemon();
  if (restarted || daemon == nullptr) {
    absl::StatusOr<std::shared_ptr<DaemonConnection>> connected =
        ConnectWhileAlive(*provider, provider_state, *endpoint);
    if (!connected.ok()) {
      Fail(sandbox,
           absl::StrCat("resumed but the daemon did not answer: ", connected.status().message()));
      return absl::UnavailableError(connected.status().message());
    }
    daemon = *std::move(connected);
  }
  sandbox.SetProviderState(std::move(provider_state));
  if (absl::Status s = sandbox.Ready(
          std::move(daemon), restarted ? "restarted: its processes were gone" : "", clock_.Now());
      !s.ok()) {
    return s;
  }
  (void)Persist(sandbox);
  *resumed = true;
  return sandbox.View();
}

absl::Status Lifecycle::Connect(Sandbox& sandbox) {
  if (sandbox.daemon() != nullptr) return absl::OkStatus();
  const SandboxRecord snapshot = sandbox.Record();
  SandboxProvider* provider = ProviderFor(snapshot);
  absl::StatusOr<DaemonEndpoint> endpoint = provider->Endpoint(snapshot.provider_state);
  if (!endpoint.ok()) return endpoint.status();
  absl::StatusOr<std::shared_ptr<DaemonConnection>> daemon =
      DaemonConnection::Connect(*endpoint, options_.connect_timeout);
  if (!daemon.ok()) {
    if (!provider->Alive(snapshot.provider_state)) {
      return FailGone(sandbox, "the sandbox's processes exited unexpectedly");
    }
    return daemon.status();
  }
  sandbox.SetDaemon(*std::move(daemon));
  return absl::OkStatus();
}

}  // namespace parley::sandbox
