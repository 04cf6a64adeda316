// The four objects of a kubernetes sandbox (NetworkPolicy, PersistentVolumeClaim,
// Secret, Pod), the readiness watch, and the label-scoped garbage collection.
#include "sandbox-svc/provider/kubernetes_provider.h"

#include <random>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/time/clock.h"

namespace parley::sandbox {
namespace {

using nlohmann::json;

constexpr char kManagedBy[] = "parley-sandbox";
constexpr char kManagedByLabel[] = "app.kubernetes.io/managed-by";
constexpr char kSandboxIdLabel[] = "parley.dev/sandbox-id";
constexpr char kOwnerLabel[] = "parley.dev/owner";
constexpr char kTokenKey[] = "token";  // The daemon token's key in the sandbox's Secret.

// The name of one of the sandbox's objects ("claim", "secret"); records written before
// those existed have only "pod", which is the name of all four.
std::string NameOf(const ProviderState& state, const std::string& key) {
  std::string name = StateValue(state, key);
  return name.empty() ? StateValue(state, "pod") : name;
}

std::string PodsPath(const std::string& ns) {
  return absl::StrCat("/api/v1/namespaces/", ns, "/pods");
}
std::string ClaimsPath(const std::string& ns) {
  return absl::StrCat("/api/v1/namespaces/", ns, "/persistentvolumeclaims");
}
std::string SecretsPath(const std::string& ns) {
  return absl::StrCat("/api/v1/namespaces/", ns, "/secrets");
}
std::string PolicyPath(const std::string& ns) {
  return absl::StrCat("/apis/networking.k8s.io/v1/namespaces/", ns, "/networkpolicies");
}
std::string PodPath(const ProviderState& state) {
  return absl::StrCat(PodsPath(StateValue(state, "namespace")), "/", StateValue(state, "pod"));
}

std::string RandomToken() {
  std::random_device device;
  std::string token;
  for (int i = 0; i < 4; ++i) {
    absl::StrAppend(&token,
                    absl::Hex(static_cast<uint64_t>(device()) << 32 | device(), absl::kZeroPad16));
  }
  return token;
}

// Why a Pod that will never become ready stopped, from its container statuses.
std::string FailureReason(const json& pod) {
  std::string reason = pod["status"].value("reason", "");
  std::string message = pod["status"].value("message", "");
  if (pod["status"].contains("containerStatuses")) {
    for (const json& container : pod["status"]["containerStatuses"]) {
      if (!container.contains("state")) continue;
      for (const char* key : {"terminated", "waiting"}) {
        if (container["state"].contains(key)) {
          const json& detail = container["state"][key];
          reason = detail.value("reason", reason);
          message = detail.value("message", message);
        }
      }
    }
  }
  return absl::StrCat(reason.empty() ? "unknown" : reason, message.empty() ? "" : ": ", message);
}

// Why a Pending Pod is not running yet (a container waiting, e.g. on a missing Secret,
// or a scheduling problem, e.g. a missing claim), or "".
std::string PendingReason(const json& pod) {
  if (!pod.contains("status")) return "";
  const json& status = pod["status"];
  for (const json& container : status.value("containerStatuses", json::array())) {
    if (container.contains("state") && container["state"].contains("waiting")) {
      const json& waiting = container["state"]["waiting"];
      return absl::StrCat(waiting.value("reason", "waiting"), ": ", waiting.value("message", ""));
    }
  }
  for (const json& condition : status.value("conditions", json::array())) {
    if (condition.value("status", "") == "False" && condition.contains("reason")) {
      return absl::StrCat(condition.value("reason", ""), ": ", condition.value("message", ""));
    }
  }
  return "";
}

bool PodReady(const json& pod) {
  if (!pod.contains("status")) return false;
  // A Pod being deleted may still report Ready; it is the old one, not ours.
  if (pod.contains("metadata") && pod["metadata"].contains("deletionTimestamp")) return false;
  const json& status = pod["status"];
  if (status.value("phase", "") != "Running" || status.value("podIP", "").empty()) return false;
  if (!status.contains("conditions")) return false;
  for (const json& condition : status["conditions"]) {
    if (condition.value("type", "") == "Ready" && condition.value("status", "") == "True") {
      return true;
    }
  }
  return false;
}

}  // namespace

KubernetesProvider::KubernetesProvider(std::unique_ptr<KubeClient> client,
                                       KubernetesOptions options)
    : client_(std::move(client)), options_(std::move(options)) {
  if (options_.default_namespace.empty()) {
    options_.default_namespace = client_->config().namespace_name;
  }
}

std::string KubernetesProvider::Capabilities() const {
  return absl::StrCat("kubernetes: ", client_->config().server, ", namespace ",
                      options_.default_namespace, ", daemon port ", options_.sandboxd_port,
                      ", owner ", options_.owner.empty() ? "(none)" : options_.owner);
}

absl::StatusOr<ProviderState> KubernetesProvider::Plan(const SandboxSpec& spec) {
  ProviderState state;
  state["id"] = spec.id;
  // DNS-1123 label: lower-case alphanumerics and '-'.
  state["pod"] =
      absl::StrCat("parley-", absl::AsciiStrToLower(absl::StrReplaceAll(spec.id, {{"_", "-"}})));
  state["claim"] = state["pod"];
  state["secret"] = state["pod"];
  state["namespace"] = spec.kubernetes.namespace_name.empty() ? options_.default_namespace
                                                              : spec.kubernetes.namespace_name;
  state["token"] = RandomToken();
  return state;
}

json KubernetesProvider::Metadata(const SandboxSpec& spec, const ProviderState& state,
                                  const std::string& name) const {
  json labels = {{kManagedByLabel, kManagedBy},
                 {"parley.dev/sandbox", StateValue(state, "pod")},
                 {kSandboxIdLabel, StateValue(state, "id")},
                 {"parley.dev/template", spec.template_name}};
  if (!options_.owner.empty()) labels[kOwnerLabel] = options_.owner;
  return {{"name", name}, {"namespace", StateValue(state, "namespace")}, {"labels", labels}};
}

json KubernetesProvider::ClaimManifest(const SandboxSpec& spec, const ProviderState& state) const {
  json claim_spec = {
      {"accessModes", {"ReadWriteOnce"}},
      {"resources",
       {{"requests", {{"storage", absl::StrCat(spec.kubernetes.workspace_storage_bytes)}}}}}};
  if (!spec.kubernetes.storage_class_name.empty()) {
    claim_spec["storageClassName"] = spec.kubernetes.storage_class_name;
  }
  return {{"apiVersion", "v1"},
          {"kind", "PersistentVolumeClaim"},
          {"metadata", Metadata(spec, state, NameOf(state, "claim"))},
          {"spec", claim_spec}};
}

json KubernetesProvider::SecretManifest(const SandboxSpec& spec, const ProviderState& state) const {
  return {{"apiVersion", "v1"},
          {"kind", "Secret"},
          {"metadata", Metadata(spec, state, NameOf(state, "secret"))},
          {"type", "Opaque"},
          {"immutable", true},
          {"data", {{kTokenKey, absl::Base64Escape(StateValue(state, "token"))}}}};
}

json KubernetesProvider::PodManifest(const SandboxSpec& spec, const ProviderState& state) const {
  const auto& limits = spec.limits;
  json command = {options_.sandboxd_path, absl::StrCat("--listen=0.0.0.0:", options_.sandboxd_port),
                  "--workspace=/workspace"};
  for (std::string& flag : SandboxdLimitFlags(limits)) command.push_back(std::move(flag));
  json env = json::array();
  // By reference: the token itself is only in the Secret, never in the Pod spec.
  env.push_back(
      {{"name", "PARLEY_SANDBOXD_TOKEN"},
       {"valueFrom", {{"secretKeyRef", {{"name", NameOf(state, "secret")}, {"key", kTokenKey}}}}}});
  env.push_back({{"name", "HOME"}, {"value", "/workspace"}});
  for (const auto& [name, value] : spec.env) env.push_back({{"name", name}, {"value", value}});
  json resource_limits = {
      {"cpu", absl::StrCat(spec.kubernetes.cpu_millis, "m")},
      {"ephemeral-storage", absl::StrCat(spec.kubernetes.ephemeral_storage_bytes)}};
  if (limits.memory_bytes() > 0) resource_limits["memory"] = absl::StrCat(limits.memory_bytes());
  json container = {{"name", "sandbox"},
                    {"image", spec.image},
                    {"command", command},
                    {"env", env},
                    {"workingDir", "/workspace"},
                    {"ports", {{{"name", "sandboxd"}, {"containerPort", options_.sandboxd_port}}}},
                    {"resources", {{"limits", resource_limits}, {"requests", resource_limits}}},
                    {"securityContext",
                     {{"allowPrivilegeEscalation", false},
                      {"privileged", false},
                      {"readOnlyRootFilesystem", true},
                      {"capabilities", {{"drop", {"ALL"}}}}}},
                    {"volumeMounts",
                     {{{"name", "workspace"}, {"mountPath", "/workspace"}},
                      {{"name", "tmp"}, {"mountPath", "/tmp"}}}},
                    {"readinessProbe",
                     {{"tcpSocket", {{"port", options_.sandboxd_port}}}, {"periodSeconds", 1}}}};
  json pod_spec = {
      {"restartPolicy", "Never"},
      {"automountServiceAccountToken", false},
      {"enableServiceLinks", false},
      {"terminationGracePeriodSeconds", 0},
      {"securityContext",
       {{"runAsNonRoot", true},
        {"runAsUser", 1000},
        {"runAsGroup", 1000},
        {"fsGroup", 1000},
        {"fsGroupChangePolicy", "OnRootMismatch"},
        {"seccompProfile", {{"type", "RuntimeDefault"}}}}},
      {"containers", {container}},
      {"volumes",
       {{{"name", "workspace"}, {"persistentVolumeClaim", {{"claimName", NameOf(state, "claim")}}}},
        {{"name", "tmp"},
         {"emptyDir",
          {{"medium", "Memory"}, {"sizeLimit", absl::StrCat(spec.local.tmp_size_bytes)}}}}}}};
  if (!spec.kubernetes.runtime_class_name.empty()) {
    pod_spec["runtimeClassName"] = spec.kubernetes.runtime_class_name;
  }
  if (!spec.kubernetes.service_account.empty()) {
    pod_spec["serviceAccountName"] = spec.kubernetes.service_account;
  }
  if (!spec.kubernetes.node_selector.empty())
    pod_spec["nodeSelector"] = spec.kubernetes.node_selector;
  return {{"apiVersion", "v1"},
          {"kind", "Pod"},
          {"metadata", Metadata(spec, state, StateValue(state, "pod"))},
          {"spec", pod_spec}};
}

json KubernetesProvider::NetworkPolicyManifest(const SandboxSpec& spec,
                                               const ProviderState& state) const {
  // Ingress: only the daemon's port. Egress: nothing, unless the template allows it.
  json egress = spec.limits.network() ? json::array({json::object()}) : json::array();
  return {{"apiVersion", "networking.k8s.io/v1"},
          {"kind", "NetworkPolicy"},
          {"metadata", Metadata(spec, state, StateValue(state, "pod"))},
          {"spec",
           {{"podSelector", {{"matchLabels", {{"parley.dev/sandbox", StateValue(state, "pod")}}}}},
            {"policyTypes", {"Ingress", "Egress"}},
            {"ingress", {{{"ports", {{{"protocol", "TCP"}, {"port", options_.sandboxd_port}}}}}}},
            {"egress", egress}}}};
}

absl::StatusOr<std::string> KubernetesProvider::WaitForPodIp(const ProviderState& state) {
  const std::string pod = StateValue(state, "pod");
  const int64_t timeout_s = absl::ToInt64Seconds(options_.ready_timeout);
  std::string ip, failure, pending;
  absl::Status watched = client_->Watch(
      absl::StrCat(PodsPath(StateValue(state, "namespace")),
                   "?watch=1&fieldSelector=metadata.name%3D", pod, "&timeoutSeconds=", timeout_s),
      options_.ready_timeout + absl::Seconds(5), [&](const json& event) {
        const std::string type = event.value("type", "");
        if (type == "ERROR") {
          failure = event.contains("object") ? event["object"].value("message", "watch error")
                                             : "watch error";
          return false;
        }
        if (!event.contains("object")) return true;
        const json& object = event["object"];
        if (type == "DELETED") {
          failure = "the Pod was deleted while starting";
          return false;
        }
        const std::string phase =
            object.contains("status") ? object["status"].value("phase", "") : "";
        if (phase == "Failed" || phase == "Succeeded") {
          failure = absl::StrCat("the Pod ended (", phase, "): ", FailureReason(object));
          return false;
        }
        if (PodReady(object)) {
          ip = object["status"].value("podIP", "");
          return false;
        }
        if (std::string reason = PendingReason(object); !reason.empty()) pending = reason;
        return true;
      });
  if (!failure.empty()) return absl::UnavailableError(failure);
  if (!ip.empty()) return ip;
  const std::string last = pending.empty() ? "" : absl::StrCat(" (last: ", pending, ")");
  if (!watched.ok()) {
    return absl::UnavailableError(
        absl::StrCat("Pod ", pod, " did not become ready: ", watched.message(), last));
  }
  return absl::UnavailableError(absl::StrCat("Pod ", pod, " did not become ready", last));
}

absl::Status KubernetesProvider::WaitForPodGone(const ProviderState& state) {
  const absl::Time deadline = absl::Now() + options_.ready_timeout;
  while (true) {
    absl::StatusOr<json> pod = client_->Get(PodPath(state));
    if (!pod.ok() && pod.status().code() == absl::StatusCode::kNotFound) return absl::OkStatus();
    if (!pod.ok()) return absl::UnavailableError(pod.status().message());
    if (absl::Now() >= deadline) {
      return absl::UnavailableError(
          absl::StrCat("the previous Pod ", StateValue(state, "pod"), " is still terminating"));
    }
    absl::SleepFor(absl::Milliseconds(200));
  }
}

absl::Status KubernetesProvider::EnsureCreated(const std::string& collection_path,
                                               const json& object) {
  absl::StatusOr<json> created = client_->Create(collection_path, object);
  if (created.ok() || created.status().code() == absl::StatusCode::kAlreadyExists) {
    return absl::OkStatus();
  }
  return absl::UnavailableError(created.status().message());
}

absl::StatusOr<DaemonEndpoint> KubernetesProvider::Start(const SandboxSpec& spec,
                                                         ProviderState& state,
                                                         const RecordFn& record) {
  const std::string ns = StateValue(state, "namespace");
  if (spec.image.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("template \"", spec.template_name, "\" has no image"));
  }
  // The policy first, so the Pod never runs without it; then the claim and the Secret
  // the Pod needs (the Secret after the other two, through which garbage collection
  // finds it); the Pod last. On resume the first three exist already.
  for (const auto& [path, object] : {std::pair{PolicyPath(ns), NetworkPolicyManifest(spec, state)},
                                     std::pair{ClaimsPath(ns), ClaimManifest(spec, state)},
                                     std::pair{SecretsPath(ns), SecretManifest(spec, state)},
                                     std::pair{PodsPath(ns), PodManifest(spec, state)}}) {
    if (absl::Status s = EnsureCreated(path, object); !s.ok()) return s;
  }
  state["created"] = "1";
  state.erase("paused");
  if (record) {
    if (absl::Status s = record(state); !s.ok()) return s;
  }
  absl::StatusOr<std::string> ip = WaitForPodIp(state);
  if (!ip.ok()) return ip.status();
  state["pod_ip"] = *ip;
  if (record) {
    if (absl::Status s = record(state); !s.ok()) return s;
  }
  return Endpoint(state);
}

absl::StatusOr<DaemonEndpoint> KubernetesProvider::Endpoint(const ProviderState& state) {
  std::string ip = StateValue(state, "pod_ip");
  if (ip.empty()) {
    absl::StatusOr<json> pod = client_->Get(PodPath(state));
    if (!pod.ok()) return pod.status();
    ip = (*pod)["status"].value("podIP", "");
    if (ip.empty()) return absl::UnavailableError("the Pod has no IP yet");
  }
  std::string host = absl::StrContains(ip, ":") ? absl::StrCat("[", ip, "]") : ip;
  return DaemonEndpoint{absl::StrCat(host, ":", options_.sandboxd_port),
                        StateValue(state, "token")};
}

bool KubernetesProvider::Alive(const ProviderState& state) {
  const std::string key =
      absl::StrCat(StateValue(state, "namespace"), "/", StateValue(state, "pod"));
  const absl::Time now = absl::Now();
  {
    absl::MutexLock lock(&mu_);
    auto it = alive_cache_.find(key);
    if (it != alive_cache_.end() && now - it->second.first < options_.liveness_cache) {
      return it->second.second;
    }
  }
  absl::StatusOr<json> pod = client_->Get(PodPath(state));
  bool alive;
  if (pod.ok()) {
    const std::string phase = (*pod)["status"].value("phase", "");
    alive = (phase == "Running" || phase == "Pending") &&
            !(*pod)["metadata"].contains("deletionTimestamp");
  } else {
    // Only a definite "not found" is death; an unreachable API server is not.
    alive = pod.status().code() != absl::StatusCode::kNotFound;
  }
  absl::MutexLock lock(&mu_);
  alive_cache_[key] = {now, alive};
  return alive;
}

void KubernetesProvider::ForgetLiveness(const ProviderState& state) {
  absl::MutexLock lock(&mu_);
  alive_cache_.erase(absl::StrCat(StateValue(state, "namespace"), "/", StateValue(state, "pod")));
}

absl::Status KubernetesProvider::Pause(const SandboxSpec& spec, ProviderState& state) {
  // Only the Pod: its processes end; the claim (the workspace), the Secret and the
  // NetworkPolicy stay for the resume.
  if (absl::Status deleted = client_->Delete(PodPath(state)); !deleted.ok()) return deleted;
  state["paused"] = "1";
  state.erase("pod_ip");
  ForgetLiveness(state);
  return absl::OkStatus();
}

absl::StatusOr<DaemonEndpoint> KubernetesProvider::Resume(const SandboxSpec& spec,
                                                          ProviderState& state,
                                                          const RecordFn& record, bool* restarted) {
  *restarted = false;
  if (StateValue(state, "paused").empty() && Alive(state)) return Endpoint(state);
  // The Pod was deleted by Pause() (or died): a new one on the same claim.
  *restarted = true;
  ForgetLiveness(state);
  if (absl::Status deleted = client_->Delete(PodPath(state)); !deleted.ok()) return deleted;
  if (absl::Status gone = WaitForPodGone(state); !gone.ok()) return gone;
  state.erase("pod_ip");
  return Start(spec, state, record);
}

absl::Status KubernetesProvider::Destroy(const ProviderState& state) {
  const std::string ns = StateValue(state, "namespace");
  const std::string pod = StateValue(state, "pod");
  if (ns.empty() || pod.empty()) return absl::OkStatus();
  // Every delete is tried whatever the others do; the policy goes last so it outlives
  // the Pod. 404 is success, so this is idempotent.
  absl::Status first_error;
  for (const std::string& path : {absl::StrCat(PodsPath(ns), "/", pod),
                                  absl::StrCat(SecretsPath(ns), "/", NameOf(state, "secret")),
                                  absl::StrCat(ClaimsPath(ns), "/", NameOf(state, "claim")),
                                  absl::StrCat(PolicyPath(ns), "/", pod)}) {
    absl::Status deleted = client_->Delete(path);
    if (!deleted.ok() && first_error.ok()) first_error = deleted;
  }
  ForgetLiveness(state);
  return first_error;
}

void KubernetesProvider::CollectGarbage(const std::set<std::string>& known_ids) {
  // Without an owner there is no telling our objects from another replica's.
  if (options_.owner.empty()) return;
  const std::string selector =
      absl::StrCat(kManagedByLabel, "=", kManagedBy, ",", kOwnerLabel, "=", options_.owner);
  std::set<std::string> namespaces = options_.namespaces;
  namespaces.insert(options_.default_namespace);
  for (const std::string& ns : namespaces) {
    // Secrets are not listed (that would need `list` on every Secret of the namespace);
    // each one has a policy and a claim created before it.
    std::map<std::string, std::string> orphans;  // sandbox id → object name
    for (const std::string& collection : {PodsPath(ns), PolicyPath(ns), ClaimsPath(ns)}) {
      absl::StatusOr<std::vector<json>> items = client_->List(collection, selector);
      if (!items.ok()) continue;
      for (const json& item : *items) {
        if (!item.contains("metadata") || !item["metadata"].is_object()) continue;
        const json& metadata = item["metadata"];
        if (!metadata.contains("labels") || !metadata["labels"].is_object()) continue;
        const json id = metadata["labels"].value(kSandboxIdLabel, json());
        const json name = metadata.value("name", json());
        if (!id.is_string() || !name.is_string() || known_ids.count(id.get<std::string>())) {
          continue;
        }
        orphans.emplace(id.get<std::string>(), name.get<std::string>());
      }
    }
    for (const auto& [id, name] : orphans) {
      (void)Destroy({{"id", id}, {"namespace", ns}, {"pod", name}});
    }
  }
}

}  // namespace parley::sandbox
