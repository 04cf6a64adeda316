#include "gateway/api/admin_api.h"

#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/ids.h"
#include "common/status.h"
#include "gateway/api/authorized_call.h"

namespace parley::gateway {
namespace {

namespace store_pb = ::parley::store::v1;
namespace admin_pb = ::parley::admin::v1;

constexpr size_t kMaxTenantIdBytes = 64;

// 1 to 64 characters of [A-Za-z0-9_-]: ids appear in URLs, logs and Redis keys.
absl::Status CheckTenantId(const std::string& id, const char* field) {
  if (id.empty()) return InvalidArgumentError(field, "is required");
  if (id.size() > kMaxTenantIdBytes) {
    return InvalidArgumentError(field, "is too long", absl::StrCat(kMaxTenantIdBytes, " bytes"));
  }
  for (char c : id) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '-') {
      return InvalidArgumentError(field, "may hold only letters, digits, '_' and '-'");
    }
  }
  return absl::OkStatus();
}

admin_pb::Tenant PublicTenant(store_pb::Tenant& stored) {
  admin_pb::Tenant out;
  out.set_id(std::move(*stored.mutable_id()));
  out.set_name(std::move(*stored.mutable_name()));
  if (stored.has_create_time()) out.mutable_create_time()->Swap(stored.mutable_create_time());
  if (stored.has_disable_time()) out.mutable_disable_time()->Swap(stored.mutable_disable_time());
  out.set_rate_limit_per_s(stored.rate_limit_per_s());
  out.set_rate_limit_burst(stored.rate_limit_burst());
  return out;
}

}  // namespace

AdminApi::AdminApi(Authenticator& authenticator,
                   std::shared_ptr<store::v1::StoreService::StubInterface> store,
                   absl::Duration downstream_timeout, IdempotencyStore* idempotency)
    : authenticator_(authenticator),
      store_(std::move(store)),
      downstream_timeout_(downstream_timeout),
      idempotency_(idempotency) {}

grpc::ServerUnaryReactor* AdminApi::CreateTenant(grpc::CallbackServerContext* context,
                                                 const admin_pb::CreateTenantRequest* request,
                                                 admin_pb::CreateTenantResponse* response) {
  using Call = AuthorizedCall<store_pb::CreateTenantRequest, store_pb::CreateTenantResponse>;
  return Call::Start(
      context, authenticator_, downstream_timeout_,
      {.scope = kScopeAdmin,
       .idempotency = idempotency_,
       .method = "admin.CreateTenant",
       .caller_request = request,  // build makes up the id when none is given.
       .build =
           [request](const Principal&, store_pb::CreateTenantRequest* out) {
             std::string id = request->tenant_id().empty() ? NewId("ten") : request->tenant_id();
             if (absl::Status valid = CheckTenantId(id, "tenant_id"); !valid.ok()) return valid;
             constexpr uint32_t kMaxRate = 1'000'000, kMaxBurst = 10'000'000;
             if (request->rate_limit_per_s() > kMaxRate) {
               return InvalidArgumentError("rate_limit_per_s", "is too large",
                                           absl::StrCat(kMaxRate, " per second"));
             }
             if (request->rate_limit_burst() > kMaxBurst) {
               return InvalidArgumentError("rate_limit_burst", "is too large",
                                           absl::StrCat(kMaxBurst));
             }
             out->set_tenant_id(std::move(id));
             out->set_name(request->name());
             out->set_rate_limit_per_s(request->rate_limit_per_s());
             out->set_rate_limit_burst(request->rate_limit_burst());
             return absl::OkStatus();
           },
       .call = [this](auto* c, auto* req, auto* resp,
                      auto done) { store_->async()->CreateTenant(c, req, resp, std::move(done)); },
       .reply =
           [response](store_pb::CreateTenantResponse& out) {
             *response->mutable_tenant() = PublicTenant(*out.mutable_tenant());
             response->set_created(out.created());
             return absl::OkStatus();
           }});
}

grpc::ServerUnaryReactor* AdminApi::GetTenant(grpc::CallbackServerContext* context,
                                              const admin_pb::GetTenantRequest* request,
                                              admin_pb::GetTenantResponse* response) {
  using Call = AuthorizedCall<store_pb::GetTenantRequest, store_pb::GetTenantResponse>;
  return Call::Start(
      context, authenticator_, downstream_timeout_,
      {.scope = kScopeAdmin,
       .build =
           [request](const Principal&, store_pb::GetTenantRequest* out) {
             if (absl::Status valid = CheckTenantId(request->tenant_id(), "tenant_id");
                 !valid.ok()) {
               return valid;
             }
             out->set_tenant_id(request->tenant_id());
             return absl::OkStatus();
           },
       .call = [this](auto* c, auto* req, auto* resp,
                      auto done) { store_->async()->GetTenant(c, req, resp, std::move(done)); },
       .reply =
           [response](store_pb::GetTenantResponse& out) {
             *response->mutable_tenant() = PublicTenant(*out.mutable_tenant());
             return absl::OkStatus();
           }});
}

grpc::ServerUnaryReactor* AdminApi::ListTenants(grpc::CallbackServerContext* context,
                                                const admin_pb::ListTenantsRequest* request,
                                                admin_pb::ListTenantsResponse* response) {
  using Call = AuthorizedCall<store_pb::ListTenantsRequest, store_pb::ListTenantsResponse>;
  return Call::Start(
      context, authenticator_, downstream_timeout_,
      {.scope = kScopeAdmin,
       .build =
           [request](const Principal&, store_pb::ListTenantsRequest* out) {
             out->set_page_size(request->page_size());
             out->set_page_token(request->page_token());
             out->set_include_disabled(request->include_disabled());
             return absl::OkStatus();
           },
       .call = [this](auto* c, auto* req, auto* resp,
                      auto done) { store_->async()->ListTenants(c, req, resp, std::move(done)); },
       .reply =
           [response](store_pb::ListTenantsResponse& out) {
             for (store_pb::Tenant& tenant : *out.mutable_tenants()) {
               *response->add_tenants() = PublicTenant(tenant);
             }
             response->set_next_page_token(std::move(*out.mutable_next_page_token()));
             return absl::OkStatus();
           }});
}

grpc::ServerUnaryReactor* AdminApi::DisableTenant(grpc::CallbackServerContext* context,
                                                  const admin_pb::DisableTenantRequest* request,
                                                  admin_pb::DisableTenantResponse* response) {
  return SetDisabled(context, request->tenant_id(), true, response->mutable_tenant());
}

grpc::ServerUnaryReactor* AdminApi::EnableTenant(grpc::CallbackServerContext* context,
                                                 const admin_pb::EnableTenantRequest* request,
                                                 admin_pb::EnableTenantResponse* response) {
  return SetDisabled(context, request->tenant_id(), false, response->mutable_tenant());
}

grpc::ServerUnaryReactor* AdminApi::SetDisabled(grpc::CallbackServerContext* context,
                                                const std::string& tenant_id, bool disabled,
                                                admin_pb::Tenant* tenant) {
  using Call =
      AuthorizedCall<store_pb::SetTenantDisabledRequest, store_pb::SetTenantDisabledResponse>;
  return Call::Start(
      context, authenticator_, downstream_timeout_,
      {.scope = kScopeAdmin,
       .idempotency = idempotency_,
       .method = disabled ? "admin.DisableTenant" : "admin.EnableTenant",
       .build =
           [tenant_id, disabled](const Principal&, store_pb::SetTenantDisabledRequest* out) {
             if (absl::Status valid = CheckTenantId(tenant_id, "tenant_id"); !valid.ok()) {
               return valid;
             }
             out->set_tenant_id(tenant_id);
             out->set_disabled(disabled);
             return absl::OkStatus();
           },
       .call =
           [this](auto* c, auto* req, auto* resp, auto done) {
             store_->async()->SetTenantDisabled(c, req, resp, std::move(done));
           },
       .reply =
           [tenant](store_pb::SetTenantDisabledResponse& out) {
             *tenant = PublicTenant(*out.mutable_tenant());
             return absl::OkStatus();
           }});
}

grpc::ServerUnaryReactor* AdminApi::CreateApiKey(grpc::CallbackServerContext* context,
                                                 const admin_pb::CreateApiKeyRequest* request,
                                                 admin_pb::CreateApiKeyResponse* response) {
  using Call = AuthorizedCall<store_pb::CreateApiKeyRequest, store_pb::CreateApiKeyResponse>;
  return Call::Start(
      context, authenticator_, downstream_timeout_,
      {.scope = kScopeAdmin,
       .idempotency = idempotency_,
       .method = "admin.CreateApiKey",
       .build =
           [request](const Principal&, store_pb::CreateApiKeyRequest* out) {
             if (absl::Status valid = CheckTenantId(request->tenant_id(), "tenant_id");
                 !valid.ok()) {
               return valid;
             }
             if (absl::Status known = CheckKnownScopes(request->scopes()); !known.ok()) {
               return known;
             }
             out->set_tenant_id(request->tenant_id());
             out->set_name(request->name());
             *out->mutable_scopes() = request->scopes();
             return absl::OkStatus();
           },
       .call = [this](auto* c, auto* req, auto* resp,
                      auto done) { store_->async()->CreateApiKey(c, req, resp, std::move(done)); },
       .reply =
           [response](store_pb::CreateApiKeyResponse& out) {
             response->mutable_api_key()->Swap(out.mutable_api_key());
             response->set_secret(std::move(*out.mutable_secret()));
             return absl::OkStatus();
           }});
}

grpc::ServerUnaryReactor* AdminApi::ListApiKeys(grpc::CallbackServerContext* context,
                                                const admin_pb::ListApiKeysRequest* request,
                                                admin_pb::ListApiKeysResponse* response) {
  using Call = AuthorizedCall<store_pb::ListApiKeysRequest, store_pb::ListApiKeysResponse>;
  return Call::Start(
      context, authenticator_, downstream_timeout_,
      {.scope = kScopeAdmin,
       .build =
           [request](const Principal&, store_pb::ListApiKeysRequest* out) {
             if (absl::Status valid = CheckTenantId(request->tenant_id(), "tenant_id");
                 !valid.ok()) {
               return valid;
             }
             out->set_tenant_id(request->tenant_id());
             out->set_page_size(request->page_size());
             out->set_page_token(request->page_token());
             out->set_include_revoked(request->include_revoked());
             return absl::OkStatus();
           },
       .call = [this](auto* c, auto* req, auto* resp,
                      auto done) { store_->async()->ListApiKeys(c, req, resp, std::move(done)); },
       .reply =
           [response](store_pb::ListApiKeysResponse& out) {
             response->mutable_api_keys()->Swap(out.mutable_api_keys());
             response->set_next_page_token(std::move(*out.mutable_next_page_token()));
             return absl::OkStatus();
           }});
}

grpc::ServerUnaryReactor* AdminApi::RevokeApiKey(grpc::CallbackServerContext* context,
                                                 const admin_pb::RevokeApiKeyRequest* request,
                                                 admin_pb::RevokeApiKeyResponse* response) {
  using Call = AuthorizedCall<store_pb::RevokeApiKeyRequest, store_pb::RevokeApiKeyResponse>;
  return Call::Start(
      context, authenticator_, downstream_timeout_,
      {.scope = kScopeAdmin,
       .idempotency = idempotency_,
       .method = "admin.RevokeApiKey",
       .build =
           [request](const Principal&, store_pb::RevokeApiKeyRequest* out) {
             if (absl::Status valid = CheckTenantId(request->tenant_id(), "tenant_id");
                 !valid.ok()) {
               return valid;
             }
             if (request->api_key_id().empty()) {
               return InvalidArgumentError("api_key_id", "is required");
             }
             out->set_tenant_id(request->tenant_id());
             out->set_api_key_id(request->api_key_id());
             return absl::OkStatus();
           },
       .call = [this](auto* c, auto* req, auto* resp,
                      auto done) { store_->async()->RevokeApiKey(c, req, resp, std::move(done)); },
       .reply =
           [response](store_pb::RevokeApiKeyResponse& out) {
             response->mutable_api_key()->Swap(out.mutable_api_key());
             return absl::OkStatus();
           }});
}

}  // namespace parley::gateway
