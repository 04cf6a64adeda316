#include "gateway/auth/authenticator.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"

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

}  // namespace

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

BootstrapKeyAuthenticator::BootstrapKeyAuthenticator(std::string secret, std::string tenant_id)
    : secret_(std::move(secret)), tenant_id_(std::move(tenant_id)) {}

absl::StatusOr<Principal> BootstrapKeyAuthenticator::Authenticate(
    const grpc::ServerContextBase& context) {
  absl::StatusOr<std::string> token = BearerToken(context);
  if (!token.ok()) return token.status();
  if (secret_.empty() || !ConstantTimeEquals(*token, secret_)) {
    return absl::UnauthenticatedError("unknown or revoked api key");
  }
  return Principal{tenant_id_, "bootstrap", {"*"}};
}

}  // namespace parley::gateway
