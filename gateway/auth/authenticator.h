// Who is calling: resolves a request's credentials to a tenant.
//
// Every public RPC starts with Authenticate(); the principal's tenant id then scopes
// everything the call touches. Implementations: BootstrapKeyAuthenticator (one key from
// configuration, for bringing up a deployment and for tests) and, with the API-key
// store, a resolver backed by store-svc.
//
//   absl::StatusOr<Principal> who = authenticator.Authenticate(*server_context);
//   if (!who.ok()) return Reject(who.status());   // UNAUTHENTICATED
#pragma once

#include <grpcpp/server_context.h>

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace parley::gateway {

struct Principal {
  std::string tenant_id;
  std::string key_id;
  std::vector<std::string> scopes;
};

class Authenticator {
 public:
  virtual ~Authenticator() = default;
  // UNAUTHENTICATED when credentials are missing, malformed, unknown or revoked; the
  // message never echoes the presented secret. Thread-safe.
  virtual absl::StatusOr<Principal> Authenticate(const grpc::ServerContextBase& context) = 0;
};

// The secret from an "authorization: Bearer <secret>" metadata entry.
absl::StatusOr<std::string> BearerToken(const grpc::ServerContextBase& context);

// Accepts exactly one configured secret, mapped to one tenant with every scope. With an
// empty secret it accepts nothing.
class BootstrapKeyAuthenticator final : public Authenticator {
 public:
  BootstrapKeyAuthenticator(std::string secret, std::string tenant_id);
  absl::StatusOr<Principal> Authenticate(const grpc::ServerContextBase& context) override;

 private:
  const std::string secret_;
  const std::string tenant_id_;
};

}  // namespace parley::gateway
