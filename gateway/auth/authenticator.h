// Who is calling: resolves a request's credentials to a tenant and its scopes.
//
// Every public RPC starts with Authenticate(); the principal's tenant id then scopes
// everything the call touches, and Require() checks the scope the RPC names.
// KeyAuthenticator accepts the bootstrap key from configuration (an operator key: "*"
// and "admin") and keys stored by store-svc, resolved through ResolveApiKey behind a
// short-lived cache: a revoked key stops working on every gateway within the cache's
// TTL, without any invalidation between gateways.
//
//   authenticator.Authenticate(*context, [=](absl::StatusOr<Principal> who) {
//     if (!who.ok()) return Reject(who.status());            // UNAUTHENTICATED
//     if (absl::Status s = who->Require(kScopeSessionsRead); !s.ok()) return Reject(s);
//     ...
//   });
#pragma once

#include <grpcpp/server_context.h>

#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "parley/store/v1/store.grpc.pb.h"

namespace parley::gateway {

// The scopes of parley.v1 (ApiKey.scopes); "*" holds every one of them. kScopeAdmin is
// the operator's (parley.admin.v1): "*" does not include it.
inline constexpr char kScopeSessionsRead[] = "sessions:read";
inline constexpr char kScopeSessionsWrite[] = "sessions:write";
inline constexpr char kScopeSandboxExec[] = "sandbox:exec";
inline constexpr char kScopeSandboxFiles[] = "sandbox:files";
inline constexpr char kScopeApiKeysAdmin[] = "api_keys:admin";
inline constexpr char kScopeAll[] = "*";
inline constexpr char kScopeAdmin[] = "admin";

// Whether `scope` is one of the above.
bool IsKnownScope(absl::string_view scope);
// OK, or INVALID_ARGUMENT naming the first unknown one ("scopes[i]").
absl::Status CheckKnownScopes(const google::protobuf::RepeatedPtrField<std::string>& scopes);

struct Principal {
  std::string tenant_id;
  std::string key_id;
  std::vector<std::string> scopes;
  // The tenant's own rate limit (store-svc's Tenant); 0 means the gateway's default.
  uint32_t tenant_rate_per_s = 0;
  uint32_t tenant_rate_burst = 0;

  // Whether the key may do what `scope` allows ("*" allows all but kScopeAdmin).
  bool Has(absl::string_view scope) const;
  // OK, or PERMISSION_DENIED with ErrorInfo{reason "MISSING_SCOPE", {"scope": scope}}.
  absl::Status Require(absl::string_view scope) const;
};

// Runs exactly once per Authenticate call, on the calling thread (answer known at once)
// or on a gRPC callback thread (after a store-svc lookup).
using AuthenticateDone = std::function<void(absl::StatusOr<Principal>)>;

class Authenticator {
 public:
  virtual ~Authenticator() = default;
  // UNAUTHENTICATED when credentials are missing, malformed, unknown or revoked (the
  // message never echoes the presented secret); UNAVAILABLE when the key cannot be
  // checked right now. Thread-safe; never blocks.
  virtual void Authenticate(const grpc::ServerContextBase& context, AuthenticateDone done) = 0;
};

// The secret from an "authorization: Bearer <secret>" metadata entry.
absl::StatusOr<std::string> BearerToken(const grpc::ServerContextBase& context);

struct KeyAuthenticatorOptions {
  // Accepted for `bootstrap_tenant` with every scope; empty accepts no bootstrap key.
  std::string bootstrap_secret;
  std::string bootstrap_tenant;
  // How long a lookup's answer (the key, or its refusal) is reused: the longest a
  // revoked key keeps working on this gateway.
  absl::Duration cache_ttl = absl::Seconds(2);
  // Bound of the cache; when full, expired answers go first, then all of them.
  size_t max_cache_entries = 100'000;
  // Deadline of one ResolveApiKey call.
  absl::Duration lookup_timeout = absl::Seconds(5);
};

class KeyAuthenticator final : public Authenticator {
 public:
  // `store` may be null: then only the bootstrap key is accepted (tests of the hub).
  KeyAuthenticator(KeyAuthenticatorOptions options,
                   std::shared_ptr<store::v1::StoreService::StubInterface> store);
  // In-flight lookups must have finished (the server is shut down first).
  ~KeyAuthenticator() override = default;

  void Authenticate(const grpc::ServerContextBase& context, AuthenticateDone done) override;
  // Authenticate for a secret already taken from its call (StreamRevalidator checks the
  // keys of open streams this way); the same cache and answers.
  void Resolve(std::string secret, AuthenticateDone done);

 private:
  struct Entry {
    bool pending = false;  // a lookup is in flight
    absl::Time answered = absl::InfinitePast();
    absl::StatusOr<Principal> answer = absl::UnauthenticatedError("");
    std::vector<AuthenticateDone> waiters;  // while pending
  };

  // Starts ResolveApiKey for `secret`, whose cache key is `digest`.
  void Lookup(std::string digest, std::string secret);
  // Records the answer (unless it says nothing about the key) and runs the waiters.
  void Answer(const std::string& digest, absl::StatusOr<Principal> answer, bool cacheable);
  // Makes room for one more entry.
  void EvictLocked(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const KeyAuthenticatorOptions options_;
  const std::shared_ptr<store::v1::StoreService::StubInterface> store_;

  absl::Mutex mu_;
  // SHA-256 of a presented secret (never the secret) -> what it resolved to.
  absl::flat_hash_map<std::string, Entry> entries_ ABSL_GUARDED_BY(mu_);
};

}  // namespace parley::gateway
