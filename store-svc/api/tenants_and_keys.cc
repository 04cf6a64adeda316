// Tenants and API keys. A key's secret is "pk_<prefix>_<secret>": the prefix (public,
// unique) finds the row, and the row stores only SHA-256 of the whole secret, computed
// by Postgres (`sha256()`), so the plaintext exists only in the CreateApiKey response.
#include <sys/random.h>

#include "absl/strings/str_cat.h"
#include "common/ids.h"
#include "common/proto_time.h"
#include "common/status.h"
#include "store-svc/api/rows.h"
#include "store-svc/api/store_service.h"

namespace parley::store {

using grpc::ServerContext;
using grpc::Status;
namespace {

constexpr char kAlphabet[] = "abcdefghijkmnopqrstuvwxyz23456789";  // No look-alikes.

// Cryptographically random text: getrandom(2), never a userspace PRNG.
std::string RandomToken(size_t length) {
  std::string bytes(length, '\0');
  size_t filled = 0;
  while (filled < length) {
    ssize_t n = getrandom(bytes.data() + filled, length - filled, 0);
    if (n > 0) filled += static_cast<size_t>(n);
  }
  std::string out(length, 'a');
  for (size_t i = 0; i < length; ++i) {
    out[i] = kAlphabet[static_cast<unsigned char>(bytes[i]) % (sizeof(kAlphabet) - 1)];
  }
  return out;
}

absl::Status CheckScopes(const google::protobuf::RepeatedPtrField<std::string>& scopes) {
  static const char* kKnown[] = {
      "*",    "sessions:read", "sessions:write", "sandbox:exec", "sandbox:files", "api_keys:admin",
      "admin"};
  for (int i = 0; i < scopes.size(); ++i) {
    bool known = false;
    for (const char* k : kKnown) known = known || scopes[i] == k;
    if (!known) {
      return InvalidArgumentError(absl::StrCat("scopes[", i, "]"),
                                  absl::StrCat("unknown scope \"", scopes[i], "\""));
    }
  }
  return absl::OkStatus();
}

store_pb::Tenant TenantFromRow(const pqxx::row& row) {
  store_pb::Tenant tenant;
  tenant.set_id(row[0].as<std::string>());
  tenant.set_name(row[1].as<std::string>());
  *tenant.mutable_create_time() = ToTimestamp(absl::FromUnixMicros(row[2].as<int64_t>()));
  tenant.set_rate_limit_per_s(row[3].as<uint32_t>());
  tenant.set_rate_limit_burst(row[4].as<uint32_t>());
  if (!row[5].is_null()) {
    *tenant.mutable_disable_time() = ToTimestamp(absl::FromUnixMicros(row[5].as<int64_t>()));
  }
  return tenant;
}

constexpr char kTenantColumns[] =
    "id, name, (extract(epoch from create_time) * 1000000)::bigint, rate_limit_per_s, "
    "rate_limit_burst, (extract(epoch from disable_time) * 1000000)::bigint";

}  // namespace

StoreServiceImpl::StoreServiceImpl(PgPool& pool, StoreLimits limits)
    : pool_(pool), limits_(limits) {}

Status StoreServiceImpl::CreateTenant(ServerContext*, const store_pb::CreateTenantRequest* request,
                                      store_pb::CreateTenantResponse* response) {
  if (absl::Status s = CheckId(request->tenant_id(), "tenant_id", limits_); !s.ok()) {
    return ToGrpcStatus(s);
  }
  if (static_cast<int64_t>(request->name().size()) > limits_.max_title_bytes) {
    return ToGrpcStatus(InvalidArgumentError("name", "is too long",
                                             absl::StrCat(limits_.max_title_bytes, " bytes")));
  }
  auto result = pool_.Transact<store_pb::CreateTenantResponse>(
      [&](pqxx::work& tx) -> absl::StatusOr<store_pb::CreateTenantResponse> {
        pqxx::result inserted =
            Exec(tx,
                 absl::StrCat("INSERT INTO tenants (id, name, rate_limit_per_s, rate_limit_burst) "
                              "VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING RETURNING ",
                              kTenantColumns),
                 request->tenant_id(), request->name(), request->rate_limit_per_s(),
                 request->rate_limit_burst());
        store_pb::CreateTenantResponse out;
        out.set_created(!inserted.empty());
        pqxx::result row =
            inserted.empty()
                ? Exec(tx, absl::StrCat("SELECT ", kTenantColumns, " FROM tenants WHERE id = $1"),
                       request->tenant_id())
                : inserted;
        *out.mutable_tenant() = TenantFromRow(row[0]);
        return out;
      });
  if (!result.ok()) return ToGrpcStatus(result.status());
  *response = *std::move(result);
  return Status::OK;
}

Status StoreServiceImpl::GetTenant(ServerContext*, const store_pb::GetTenantRequest* request,
                                   store_pb::GetTenantResponse* response) {
  if (absl::Status s = CheckId(request->tenant_id(), "tenant_id", limits_); !s.ok()) {
    return ToGrpcStatus(s);
  }
  auto result =
      pool_.Transact<store_pb::Tenant>([&](pqxx::work& tx) -> absl::StatusOr<store_pb::Tenant> {
        pqxx::result row =
            Exec(tx, absl::StrCat("SELECT ", kTenantColumns, " FROM tenants WHERE id = $1"),
                 request->tenant_id());
        if (row.empty()) return absl::NotFoundError("tenant not found");
        return TenantFromRow(row[0]);
      });
  if (!result.ok()) return ToGrpcStatus(result.status());
  *response->mutable_tenant() = *std::move(result);
  return Status::OK;
}

Status StoreServiceImpl::ListTenants(ServerContext*, const store_pb::ListTenantsRequest* request,
                                     store_pb::ListTenantsResponse* response) {
  absl::Status valid = CheckPageSize(request->page_size(), "page_size", limits_.max_page_size);
  store_pb::ListTenantsRequest query = *request;
  query.clear_page_token();
  query.clear_page_size();
  std::string after;
  if (valid.ok() && !request->page_token().empty()) {
    valid = DecodePageToken(request->page_token(), Fingerprint(query), "page_token", &after);
  }
  if (!valid.ok()) return ToGrpcStatus(valid);
  const int64_t page_size =
      request->page_size() == 0 ? limits_.default_page_size : request->page_size();
  auto result = pool_.Transact<store_pb::ListTenantsResponse>(
      [&](pqxx::work& tx) -> absl::StatusOr<store_pb::ListTenantsResponse> {
        pqxx::result rows =
            Exec(tx,
                 absl::StrCat("SELECT ", kTenantColumns,
                              " FROM tenants WHERE id > $1 "
                              "AND ($2 OR disable_time IS NULL) ORDER BY id LIMIT $3"),
                 after, request->include_disabled(), page_size + 1);
        store_pb::ListTenantsResponse out;
        for (int64_t i = 0; i < std::min<int64_t>(page_size, rows.size()); ++i) {
          *out.add_tenants() = TenantFromRow(rows[i]);
        }
        if (static_cast<int64_t>(rows.size()) > page_size) {
          out.set_next_page_token(
              EncodePageToken(out.tenants().rbegin()->id(), Fingerprint(query)));
        }
        return out;
      });
  if (!result.ok()) return ToGrpcStatus(result.status());
  *response = *std::move(result);
  return Status::OK;
}

Status StoreServiceImpl::SetTenantDisabled(ServerContext*,
                                           const store_pb::SetTenantDisabledRequest* request,
                                           store_pb::SetTenantDisabledResponse* response) {
  if (absl::Status s = CheckId(request->tenant_id(), "tenant_id", limits_); !s.ok()) {
    return ToGrpcStatus(s);
  }
  auto result =
      pool_.Transact<store_pb::Tenant>([&](pqxx::work& tx) -> absl::StatusOr<store_pb::Tenant> {
        // Disabling twice keeps the first time; enabling clears it.
        pqxx::result row =
            Exec(tx,
                 absl::StrCat("UPDATE tenants SET disable_time = CASE WHEN $2 THEN "
                              "coalesce(disable_time, now()) END WHERE id = $1 RETURNING ",
                              kTenantColumns),
                 request->tenant_id(), request->disabled());
        if (row.empty()) return absl::NotFoundError("tenant not found");
        return TenantFromRow(row[0]);
      });
  if (!result.ok()) return ToGrpcStatus(result.status());
  *response->mutable_tenant() = *std::move(result);
  return Status::OK;
}

Status StoreServiceImpl::CreateApiKey(ServerContext*, const store_pb::CreateApiKeyRequest* request,
                                      store_pb::CreateApiKeyResponse* response) {
  absl::Status valid = CheckId(request->tenant_id(), "tenant_id", limits_);
  constexpr size_t kMaxKeyNameBytes = 128;  // parley.v1.ApiKey.name
  if (valid.ok() && request->name().empty()) valid = InvalidArgumentError("name", "is required");
  if (valid.ok() && request->name().size() > kMaxKeyNameBytes) {
    valid = InvalidArgumentError("name", "is too long", absl::StrCat(kMaxKeyNameBytes, " bytes"));
  }
  if (valid.ok() && request->scopes().empty()) {
    valid = InvalidArgumentError("scopes", "needs at least one scope");
  }
  if (valid.ok()) valid = CheckScopes(request->scopes());
  if (!valid.ok()) return ToGrpcStatus(valid);

  const std::string id = NewId("key");
  const std::string prefix = RandomToken(12);
  const std::string secret = absl::StrCat("pk_", prefix, "_", RandomToken(40));
  auto result = pool_.Transact<::parley::v1::ApiKey>([&](pqxx::work& tx)
                                                         -> absl::StatusOr<::parley::v1::ApiKey> {
    pqxx::result tenant = Exec(tx, "SELECT 1 FROM tenants WHERE id = $1", request->tenant_id());
    if (tenant.empty()) return absl::NotFoundError("tenant not found");
    pqxx::result row = Exec(
        tx,
        absl::StrCat("INSERT INTO api_keys (id, tenant_id, name, prefix, secret_sha256, scopes) "
                     "VALUES ($1, $2, $3, $4, sha256(convert_to($5, 'UTF8')), "
                     "ARRAY(SELECT jsonb_array_elements_text($6::jsonb))) "
                     "ON CONFLICT (id) DO UPDATE SET id = EXCLUDED.id RETURNING ",
                     kApiKeyColumns),
        id, request->tenant_id(), request->name(), prefix, secret, JsonArray(request->scopes()));
    return ApiKeyFromRow(row[0]);
  });
  if (!result.ok()) return ToGrpcStatus(result.status());
  *response->mutable_api_key() = *std::move(result);
  response->set_secret(secret);
  return Status::OK;
}

Status StoreServiceImpl::RevokeApiKey(ServerContext*, const store_pb::RevokeApiKeyRequest* request,
                                      store_pb::RevokeApiKeyResponse* response) {
  absl::Status valid = CheckId(request->tenant_id(), "tenant_id", limits_);
  if (valid.ok()) valid = CheckId(request->api_key_id(), "api_key_id", limits_);
  if (!valid.ok()) return ToGrpcStatus(valid);
  auto result = pool_.Transact<::parley::v1::ApiKey>(
      [&](pqxx::work& tx) -> absl::StatusOr<::parley::v1::ApiKey> {
        // Revoking twice keeps the first revocation time.
        pqxx::result row =
            Exec(tx,
                 absl::StrCat("UPDATE api_keys SET revoke_time = coalesce(revoke_time, now()) "
                              "WHERE tenant_id = $1 AND id = $2 RETURNING ",
                              kApiKeyColumns),
                 request->tenant_id(), request->api_key_id());
        if (row.empty()) return absl::NotFoundError("api key not found");
        return ApiKeyFromRow(row[0]);
      });
  if (!result.ok()) return ToGrpcStatus(result.status());
  *response->mutable_api_key() = *std::move(result);
  return Status::OK;
}

Status StoreServiceImpl::ResolveApiKey(ServerContext*,
                                       const store_pb::ResolveApiKeyRequest* request,
                                       store_pb::ResolveApiKeyResponse* response) {
  // "pk_<12>_<40>"; anything else cannot be a key and is refused without a query.
  const std::string& secret = request->secret();
  if (secret.size() != 3 + 12 + 1 + 40 || secret.compare(0, 3, "pk_") != 0 || secret[15] != '_') {
    return ToGrpcStatus(absl::UnauthenticatedError("unknown or revoked api key"));
  }
  const std::string prefix = secret.substr(3, 12);
  auto result = pool_.Transact<store_pb::ResolveApiKeyResponse>(
      [&](pqxx::work& tx) -> absl::StatusOr<store_pb::ResolveApiKeyResponse> {
        pqxx::result row =
            Exec(tx,
                 absl::StrCat("SELECT ", kApiKeyColumns,
                              " FROM api_keys WHERE prefix = $1 AND revoke_time IS NULL "
                              "AND secret_sha256 = sha256(convert_to($2, 'UTF8'))"),
                 prefix, secret);
        if (row.empty()) return absl::UnauthenticatedError("unknown or revoked api key");
        store_pb::ResolveApiKeyResponse out;
        *out.mutable_api_key() = ApiKeyFromRow(row[0]);
        pqxx::result tenant =
            Exec(tx, absl::StrCat("SELECT ", kTenantColumns, " FROM tenants WHERE id = $1"),
                 out.api_key().tenant_id());
        *out.mutable_tenant() = TenantFromRow(tenant[0]);
        if (out.tenant().has_disable_time()) {
          return absl::UnauthenticatedError("unknown or revoked api key");
        }
        // A cosmetic write: at most once a minute per key, so hot keys do not churn rows.
        Exec(tx,
             "UPDATE api_keys SET last_used_time = now() WHERE prefix = $1 AND "
             "(last_used_time IS NULL OR last_used_time < now() - interval '1 minute')",
             prefix);
        return out;
      });
  if (!result.ok()) return ToGrpcStatus(result.status());
  *response = *std::move(result);
  return Status::OK;
}

Status StoreServiceImpl::ListApiKeys(ServerContext*, const store_pb::ListApiKeysRequest* request,
                                     store_pb::ListApiKeysResponse* response) {
  absl::Status valid = CheckId(request->tenant_id(), "tenant_id", limits_);
  if (valid.ok()) valid = CheckPageSize(request->page_size(), "page_size", limits_.max_page_size);
  store_pb::ListApiKeysRequest query = *request;
  query.clear_page_token();
  query.clear_page_size();
  std::string after;
  if (valid.ok() && !request->page_token().empty()) {
    valid = DecodePageToken(request->page_token(), Fingerprint(query), "page_token", &after);
  }
  if (!valid.ok()) return ToGrpcStatus(valid);
  const int64_t page_size =
      request->page_size() == 0 ? limits_.default_page_size : request->page_size();
  auto result = pool_.Transact<store_pb::ListApiKeysResponse>(
      [&](pqxx::work& tx) -> absl::StatusOr<store_pb::ListApiKeysResponse> {
        pqxx::result rows =
            Exec(tx,
                 absl::StrCat("SELECT ", kApiKeyColumns,
                              " FROM api_keys WHERE tenant_id = $1 AND ($2 = '' OR id < $2) "
                              "AND ($3 OR revoke_time IS NULL) ORDER BY id DESC LIMIT $4"),
                 request->tenant_id(), after, request->include_revoked(), page_size + 1);
        store_pb::ListApiKeysResponse out;
        for (int64_t i = 0; i < std::min<int64_t>(page_size, rows.size()); ++i) {
          *out.add_api_keys() = ApiKeyFromRow(rows[i]);
        }
        if (static_cast<int64_t>(rows.size()) > page_size) {
          out.set_next_page_token(
              EncodePageToken(out.api_keys().rbegin()->id(), Fingerprint(query)));
        }
        return out;
      });
  if (!result.ok()) return ToGrpcStatus(result.status());
  *response = *std::move(result);
  return Status::OK;
}

}  // namespace parley::store
