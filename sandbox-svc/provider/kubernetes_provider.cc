// Pods, NetworkPolicies and the readiness watch for the kubernetes provider.
#include "sandbox-svc/provider/kubernetes_provider.h"

#include <random>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/time/clock.h"

namespace parley::sandbox {
namespace {

using nlohmann::json;

constexpr char kManagedBy[] = "parley-sandbox";

std::string Get(const ProviderState& state, const std::string& key) {
  auto it = state.find(key);
  return it == state.end() ? "" : it->second;
}

std::string PodsPath(const std::string& ns) {
  return absl::StrCat("/api/v1/namespaces/", ns, "/pods");
}
std::string PolicyPath(const std::string& ns) {
  return absl::StrCat("/apis/networking.k8s.io/v1/namespaces/", ns, "/networkpolicies");
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

bool PodReady(const json& pod) {
  if (!pod.contains("status")) return false;
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
                      options_.default_namespace, ", daemon port ", options_.sandboxd_port);
}

absl::StatusOr<ProviderState> KubernetesProvider::Plan(const SandboxSpec& spec) {
  ProviderState state;
  state["id"] = spec.id;
  // DNS-1123 label: lower-case alphanumerics and '-'.
  state["pod"] =
      absl::StrCat("parley-", absl::AsciiStrToLower(absl::StrReplaceAll(spec.id, {{"_", "-"}})));
  state["namespace"] = spec.kubernetes.namespace_name.empty() ? options_.default_namespace
                                                              : spec.kubernetes.namespace_name;
  state["token"] = RandomToken();
  return state;
}

json KubernetesProvider::PodManifest(const SandboxSpec& spec, const ProviderState& state) const {
  const auto& limits = spec.limits;
  json command = {options_.sandboxd_path, absl::StrCat("--listen=0.0.0.0:", options_.sandboxd_port),
                  "--workspace=/workspace"};
  auto flag = [&command](const char* name, uint64_t value) {
    if (value > 0) command.push_back(absl::StrCat("--", name, "=", value));
  };
  flag("rlimit_as_bytes", limits.memory_bytes());
  flag("rlimit_cpu_s", (limits.cpu_ms() + 999) / 1000);
  flag("rlimit_nproc", limits.max_processes());
  flag("rlimit_nofile", limits.max_open_files());
  flag("rlimit_fsize_bytes", limits.max_file_size_bytes());
  json env = json::array();
  env.push_back({{"name", "PARLEY_SANDBOXD_TOKEN"}, {"value", Get(state, "token")}});
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
        {"seccompProfile", {{"type", "RuntimeDefault"}}}}},
      {"containers", {container}},
      {"volumes",
       {{{"name", "workspace"}, {"emptyDir", json::object()}},
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
          {"metadata",
           {{"name", Get(state, "pod")},
            {"namespace", Get(state, "namespace")},
            {"labels",
             {{"app.kubernetes.io/managed-by", kManagedBy},
              {"parley.dev/sandbox", Get(state, "pod")},
              {"parley.dev/template", spec.template_name}}}}},
          {"spec", pod_spec}};
}

json KubernetesProvider::NetworkPolicyManifest(const SandboxSpec& spec,
                                               const ProviderState& state) const {
  // Ingress: only the daemon's port. Egress: nothing, unless the template allows it.
  json egress = spec.limits.network() ? json::array({json::object()}) : json::array();
  return {{"apiVersion", "networking.k8s.io/v1"},
          {"kind", "NetworkPolicy"},
          {"metadata",
           {{"name", Get(state, "pod")},
            {"namespace", Get(state, "namespace")},
            {"labels", {{"app.kubernetes.io/managed-by", kManagedBy}}}}},
          {"spec",
           {{"podSelector", {{"matchLabels", {{"parley.dev/sandbox", Get(state, "pod")}}}}},
            {"policyTypes", {"Ingress", "Egress"}},
            {"ingress", {{{"ports", {{{"protocol", "TCP"}, {"port", options_.sandboxd_port}}}}}}},
            {"egress", egress}}}};
}

absl::StatusOr<std::string> KubernetesProvider::WaitForPodIp(const ProviderState& state) {
  const std::string pod = Get(state, "pod");
  const int64_t timeout_s = absl::ToInt64Seconds(options_.ready_timeout);
  std::string ip, failure;
  absl::Status watched = client_->Watch(
      absl::StrCat(PodsPath(Get(state, "namespace")), "?watch=1&fieldSelector=metadata.name%3D",
                   pod, "&timeoutSeconds=", timeout_s),
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
        return true;
      });
  if (!failure.empty()) return absl::UnavailableError(failure);
  if (!ip.empty()) return ip;
  if (!watched.ok()) {
    return absl::UnavailableError(
        absl::StrCat("Pod ", pod, " did not become ready: ", watched.message()));
  }
  return absl::UnavailableError(absl::StrCat("Pod ", pod, " did not become ready"));
}

absl::StatusOr<DaemonEndpoint> KubernetesProvider::Start(const SandboxSpec& spec,
                                                         ProviderState& state,
                                                         const RecordFn& record) {
  const std::string ns = Get(state, "namespace");
  if (spec.image.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("template \"", spec.template_name, "\" has no image"));
  }
  absl::StatusOr<json> policy = client_->Create(PolicyPath(ns), NetworkPolicyManifest(spec, state));
  if (!policy.ok() && policy.status().code() != absl::StatusCode::kAlreadyExists) {
    return absl::UnavailableError(policy.status().message());
  }
  // The policy exists before the Pod, so the Pod never runs without it.
  absl::StatusOr<json> pod = client_->Create(PodsPath(ns), PodManifest(spec, state));
  if (!pod.ok() && pod.status().code() != absl::StatusCode::kAlreadyExists) {
    return absl::UnavailableError(pod.status().message());
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
  std::string ip = Get(state, "pod_ip");
  if (ip.empty()) {
    absl::StatusOr<json> pod =
        client_->Get(absl::StrCat(PodsPath(Get(state, "namespace")), "/", Get(state, "pod")));
    if (!pod.ok()) return pod.status();
    ip = (*pod)["status"].value("podIP", "");
    if (ip.empty()) return absl::UnavailableError("the Pod has no IP yet");
  }
  std::string host = absl::StrContains(ip, ":") ? absl::StrCat("[", ip, "]") : ip;
  return DaemonEndpoint{absl::StrCat(host, ":", options_.sandboxd_port), Get(state, "token")};
}

bool KubernetesProvider::Alive(const ProviderState& state) {
  const std::string key = absl::StrCat(Get(state, "namespace"), "/", Get(state, "pod"));
  const absl::Time now = absl::Now();
  {
    absl::MutexLock lock(&mu_);
    auto it = alive_cache_.find(key);
    if (it != alive_cache_.end() && now - it->second.first < options_.liveness_cache) {
      return it->second.second;
    }
  }
  absl::StatusOr<json> pod =
      client_->Get(absl::StrCat(PodsPath(Get(state, "namespace")), "/", Get(state, "pod")));
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

absl::Status KubernetesProvider::Pause(const SandboxSpec& spec, ProviderState& state) {
  absl::Status deleted =
      client_->Delete(absl::StrCat(PodsPath(Get(state, "namespace")), "/", Get(state, "pod")));
  if (!deleted.ok()) return deleted;
  state["paused"] = "1";
  state.erase("pod_ip");
  absl::MutexLock lock(&mu_);
  alive_cache_.erase(absl::StrCat(Get(state, "namespace"), "/", Get(state, "pod")));
  return absl::OkStatus();
}

absl::StatusOr<DaemonEndpoint> KubernetesProvider::Resume(const SandboxSpec& spec,
                                                          ProviderState& state,
                                                          const RecordFn& record, bool* restarted) {
  *restarted = false;
  if (Get(state, "paused").empty() && Alive(state)) return Endpoint(state);
  // The Pod was deleted by Pause() (or is gone): create it again.
  *restarted = true;
  {
    absl::MutexLock lock(&mu_);
    alive_cache_.erase(absl::StrCat(Get(state, "namespace"), "/", Get(state, "pod")));
  }
  (void)client_->Delete(absl::StrCat(PodsPath(Get(state, "namespace")), "/", Get(state, "pod")));
  state.erase("pod_ip");
  return Start(spec, state, record);
}

absl::Status KubernetesProvider::Destroy(const ProviderState& state) {
  const std::string ns = Get(state, "namespace");
  const std::string pod = Get(state, "pod");
  if (ns.empty() || pod.empty()) return absl::OkStatus();
  absl::Status pod_deleted = client_->Delete(absl::StrCat(PodsPath(ns), "/", pod));
  absl::Status policy_deleted = client_->Delete(absl::StrCat(PolicyPath(ns), "/", pod));
  {
    absl::MutexLock lock(&mu_);
    alive_cache_.erase(absl::StrCat(ns, "/", pod));
  }
  if (!pod_deleted.ok()) return pod_deleted;
  return policy_deleted;
}

}  // namespace parley::sandbox
