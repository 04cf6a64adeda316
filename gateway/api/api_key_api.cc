#include "gateway/api/api_key_api.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "gateway/api/authorized_call.h"

namespace parley::gateway {
namespace {

namespace store_pb = ::parley::store::v1;

// OK when every scope in `scopes` exists and `who` holds it; else INVALID_ARGUMENT for
// the first unknown one, or PERMISSION_DENIED for the first it lacks.
absl::Status CheckScopesToGive(const Principal& who,
                               const google::protobuf::RepeatedPtrField<std::string>& scopes) {
  if (absl::Status known = CheckKnownScopes(scopes); !known.ok()) return known;
  for (int i = 0; i < scopes.size(); ++i) {
    if (who.Has(scopes[i])) continue;
    absl::Status status = absl::PermissionDeniedError(absl::StrCat(
        "scopes[", i, "]: the calling key does not hold \"", scopes[i], "\" and cannot give it"));
    SetErrorInfo(status, "SCOPE_ESCALATION", {{"scope", scopes[i]}});
    return status;
  }
  return absl::OkStatus();
}

}  // namespace

ApiKeyApi::ApiKeyApi(Authenticator& authenticator,
                     std::shared_ptr<store::v1::StoreService::StubInterface> store,
                     absl::Duration downstream_timeout, IdempotencyStore* idempotency)
    : authenticator_(authenticator),
      store_(std::move(store)),
      downstream_timeout_(downstream_timeout),
      idempotency_(idempotency) {}

grpc::ServerUnaryReactor* ApiKeyApi::CreateApiKey(grpc::CallbackServerContext* context,
                                                  const v1::CreateApiKeyRequest* request,
                                                  v1::CreateApiKeyResponse* response) {
  using Call = AuthorizedCall<store_pb::CreateApiKeyRequest, store_pb::CreateApiKeyResponse>;
  return Call::Start(
      context, authenticator_, downstream_timeout_,
      {.scope = kScopeApiKeysAdmin,
       .idempotency = idempotency_,
       .method = "CreateApiKey",
       .build =
           [request](const Principal& who, store_pb::CreateApiKeyRequest* out) {
             // Scope spellings are checked here and again by store-svc, names by store-svc.
             if (absl::Status allowed = CheckScopesToGive(who, request->scopes()); !allowed.ok()) {
               return allowed;
             }
             out->set_tenant_id(who.tenant_id);
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

grpc::ServerUnaryReactor* ApiKeyApi::ListApiKeys(grpc::CallbackServerContext* context,
                                                 const v1::ListApiKeysRequest* request,
                                                 v1::ListApiKeysResponse* response) {
  using Call = AuthorizedCall<store_pb::ListApiKeysRequest, store_pb::ListApiKeysResponse>;
  return Call::Start(
      context, authenticator_, downstream_timeout_,
      {.scope = kScopeApiKeysAdmin,
       .build =
           [request](const Principal& who, store_pb::ListApiKeysRequest* out) {
             out->set_tenant_id(who.tenant_id);
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

grpc::ServerUnaryReactor* ApiKeyApi::RevokeApiKey(grpc::CallbackServerContext* context,
                                                  const v1::RevokeApiKeyRequest* request,
                                                  v1::RevokeApiKeyResponse* response) {
  using Call = AuthorizedCall<store_pb::RevokeApiKeyRequest, store_pb::RevokeApiKeyResponse>;
  return Call::Start(
      context, authenticator_, downstream_timeout_,
      {.scope = kScopeApiKeysAdmin,
       .idempotency = idempotency_,
       .method = "RevokeApiKey",
       .build =
           [request](const Principal& who, store_pb::RevokeApiKeyRequest* out) {
             if (request->api_key_id().empty()) {
               return InvalidArgumentError("api_key_id", "is required");
             }
             out->set_tenant_id(who.tenant_id);
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
