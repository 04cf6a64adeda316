#include "gateway/auth/authenticator.h"

#include <openssl/sha.h>

#include <algorithm>
#include <optional>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/status.h"

namespace parley::gateway {
namespace {

// Compares without an early exit, so response time does not reveal how much of a
// guessed secret was right.
bool ConstantTimeEquals(absl::string_view a, absl::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

std::string Sha256(absl::string_view data) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(data.data()), data.size(), digest);
  return std::string(reinterpret_cast<const char*>(digest), sizeof(digest));
}

absl::Status UnknownKey() { return absl::UnauthenticatedError("unknown or revoked api key"); }

}  // namespace

bool IsKnownScope(absl::string_view scope) {
  for (const char* known : {kScopeSessionsRead, kScopeSessionsWrite, kScopeSandboxExec,
                            kScopeSandboxFiles, kScopeApiKeysAdmin, kScopeAll, kScopeAdmin}) {
    if (scope == known) return true;
  }
  return false;
}

absl::Status CheckKnownScopes(const google::protobuf::RepeatedPtrField<std::string>& scopes) {
  for (int i = 0; i < scopes.size(); ++i) {
    if (!IsKnownScope(scopes[i])) {
      return InvalidArgumentError(absl::StrCat("scopes[", i, "]"),
                                  absl::StrCat("unknown scope \"", scopes[i], "\""));
    }
  }
  return absl::OkStatus();
}

bool Principal::Has(absl::string_view scope) const {
  // "*" is every tenant scope; the operator scope is only ever held by name.
  const bool wildcard_covers = scope != kScopeAdmin;
  return std::any_of(scopes.begin(), scopes.end(), [&](const std::string& held) {
    return held == scope || (wildcard_covers && held == kScopeAll);
  });
}

absl::Status Principal::Require(absl::string_view scope) const {
  if (Has(scope)) return absl::OkStatus();
  absl::Status status =
      absl::PermissionDeniedError(absl::StrCat("this api key lacks the scope \"", scope, "\""));
  SetErrorInfo(status, "MISSING_SCOPE", {{"scope", std::string(scope)}});
  return status;
}

absl::StatusOr<std::string> BearerToken(const grpc::ServerContextBase& context) {
  const auto& metadata = context.client_metadata();
  auto it = metadata.find("authorization");
  if (it == metadata.end()) {
    return absl::UnauthenticatedError("missing authorization metadata: send \"Bearer <api key>\"");
  }
  absl::string_view value(it->second.data(), it->second.size());
  constexpr absl::string_view kBearer = "bearer ";
  if (value.size() <= kBearer.size() ||
      !absl::EqualsIgnoreCase(value.substr(0, kBearer.size()), kBearer)) {
    return absl::UnauthenticatedError("authorization metadata must be \"Bearer <api key>\"");
  }
  return std::string(absl::StripAsciiWhitespace(value.substr(kBearer.size())));
}

KeyAuthenticator::KeyAuthenticator(KeyAuthenticatorOptions options,
                                   std::shared_ptr<store::v1::StoreService::StubInterface> store)
    : options_(std::move(options)), store_(std::move(store)) {}

void KeyAuthenticator::Authenticate(const grpc::ServerContextBase& context, AuthenticateDone done) {
  absl::StatusOr<std::string> secret = BearerToken(context);
  if (!secret.ok()) return done(secret.status());
  Resolve(*std::move(secret), std::move(done));
}

void KeyAuthenticator::Resolve(std::string secret, AuthenticateDone done) {
  if (!options_.bootstrap_secret.empty() && ConstantTimeEquals(secret, options_.bootstrap_secret)) {
    return done(Principal{options_.bootstrap_tenant, "bootstrap", {kScopeAll, kScopeAdmin}});
  }
  if (store_ == nullptr || secret.empty() || secret.size() > 1024) return done(UnknownKey());

  std::string digest = Sha256(secret);
  std::optional<absl::StatusOr<Principal>> cached;
  bool start_lookup = false;
  {
    absl::MutexLock lock(&mu_);
    const absl::Time now = absl::Now();
    auto it = entries_.find(digest);
    if (it != entries_.end() && !it->second.pending &&
        now - it->second.answered < options_.cache_ttl) {
      cached = it->second.answer;
    } else {
      if (it == entries_.end()) {
        EvictLocked(now);
        it = entries_.emplace(digest, Entry{}).first;
      }
      it->second.waiters.push_back(std::move(done));
      start_lookup = !it->second.pending;  // Else it joins the lookup in flight.
      it->second.pending = true;
    }
  }
  if (cached.has_value()) return done(*std::move(cached));
  if (start_lookup) Lookup(std::move(digest), std::move(secret));
}

void KeyAuthenticator::Lookup(std::string digest, std::string secret) {
  struct Call {
    grpc::ClientContext context;
    store::v1::ResolveApiKeyRequest request;
    store::v1::ResolveApiKeyResponse response;
  };
  auto call = std::make_shared<Call>();
  call->context.set_deadline(absl::ToChronoTime(absl::Now() + options_.lookup_timeout));
  call->request.set_secret(std::move(secret));
  store_->async()->ResolveApiKey(
      &call->context, &call->request, &call->response,
      [this, call, digest = std::move(digest)](grpc::Status status) {
        if (status.ok()) {
          const v1::ApiKey& key = call->response.api_key();
          const store::v1::Tenant& tenant = call->response.tenant();
          Answer(digest,
                 Principal{.tenant_id = key.tenant_id(),
                           .key_id = key.id(),
                           .scopes = {key.scopes().begin(), key.scopes().end()},
                           .tenant_rate_per_s = tenant.rate_limit_per_s(),
                           .tenant_rate_burst = tenant.rate_limit_burst()},
                 /*cacheable=*/true);
        } else if (status.error_code() == grpc::StatusCode::UNAUTHENTICATED) {
          Answer(digest, UnknownKey(), /*cacheable=*/true);
        } else {
          // Says nothing about the key: not cached, the next call asks again.
          Answer(digest,
                 absl::UnavailableError(
                     absl::StrCat("cannot check the api key now: ", status.error_message())),
                 /*cacheable=*/false);
        }
      });
}

void KeyAuthenticator::Answer(const std::string& digest, absl::StatusOr<Principal> answer,
                              bool cacheable) {
  std::vector<AuthenticateDone> waiters;
  {
    absl::MutexLock lock(&mu_);
    auto it = entries_.find(digest);
    if (it == entries_.end()) return;  // Cannot happen: pending entries are never evicted.
    waiters.swap(it->second.waiters);
    if (cacheable) {
      it->second.pending = false;
      it->second.answered = absl::Now();
      it->second.answer = answer;
    } else {
      entries_.erase(it);
    }
  }
  for (AuthenticateDone& done : waiters) done(answer);
}

void KeyAuthenticator::EvictLocked(absl::Time now) {
  if (entries_.size() < options_.max_cache_entries) return;
  absl::erase_if(entries_, [&](const auto& entry) {
    return !entry.second.pending && now - entry.second.answered >= options_.cache_ttl;
  });
  if (entries_.size() < options_.max_cache_entries) return;
  absl::erase_if(entries_, [](const auto& entry) { return !entry.second.pending; });
}

}  // namespace parley::gateway
