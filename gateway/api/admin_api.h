// The operator API, parley.admin.v1.AdminService: tenants, and keys for any tenant.
//
// Every rpc needs the scope "admin" (the bootstrap key, or a key created here with that
// scope; "*" does not include it). Tenant ids are checked here, before anything is
// forwarded: 1 to 64 characters of [A-Za-z0-9_-]. Scope spellings are checked here
// (CheckKnownScopes) and again by store-svc, which owns the rows and checks names. Disabling a
// tenant makes every one of its keys fail to resolve, so it takes effect on each gateway within the
// key cache's TTL.
//
// Threading: handlers run on gRPC's callback threads and never block.
#pragma once

#include <memory>

#include "absl/time/time.h"
#include "gateway/api/idempotency.h"
#include "gateway/auth/authenticator.h"
#include "parley/admin/v1/admin.grpc.pb.h"
#include "parley/store/v1/store.grpc.pb.h"

namespace parley::gateway {

class AdminApi final : public admin::v1::AdminService::CallbackService {
 public:
  // `authenticator` and `idempotency` must outlive this object.
  AdminApi(Authenticator& authenticator,
           std::shared_ptr<store::v1::StoreService::StubInterface> store,
           absl::Duration downstream_timeout, IdempotencyStore* idempotency);

  grpc::ServerUnaryReactor* CreateTenant(grpc::CallbackServerContext* context,
                                         const admin::v1::CreateTenantRequest* request,
                                         admin::v1::CreateTenantResponse* response) override;
  grpc::ServerUnaryReactor* GetTenant(grpc::CallbackServerContext* context,
                                      const admin::v1::GetTenantRequest* request,
                                      admin::v1::GetTenantResponse* response) override;
  grpc::ServerUnaryReactor* ListTenants(grpc::CallbackServerContext* context,
                                        const admin::v1::ListTenantsRequest* request,
                                        admin::v1::ListTenantsResponse* response) override;
  grpc::ServerUnaryReactor* DisableTenant(grpc::CallbackServerContext* context,
                                          const admin::v1::DisableTenantRequest* request,
                                          admin::v1::DisableTenantResponse* response) override;
  grpc::ServerUnaryReactor* EnableTenant(grpc::CallbackServerContext* context,
                                         const admin::v1::EnableTenantRequest* request,
                                         admin::v1::EnableTenantResponse* response) override;
  grpc::ServerUnaryReactor* CreateApiKey(grpc::CallbackServerContext* context,
                                         const admin::v1::CreateApiKeyRequest* request,
                                         admin::v1::CreateApiKeyResponse* response) override;
  grpc::ServerUnaryReactor* ListApiKeys(grpc::CallbackServerContext* context,
                                        const admin::v1::ListApiKeysRequest* request,
                                        admin::v1::ListApiKeysResponse* response) override;
  grpc::ServerUnaryReactor* RevokeApiKey(grpc::CallbackServerContext* context,
                                         const admin::v1::RevokeApiKeyRequest* request,
                                         admin::v1::RevokeApiKeyResponse* response) override;

 private:
  // Enables or disables a tenant; the answer goes to `tenant`.
  grpc::ServerUnaryReactor* SetDisabled(grpc::CallbackServerContext* context,
                                        const std::string& tenant_id, bool disabled,
                                        admin::v1::Tenant* tenant);

  Authenticator& authenticator_;
  std::shared_ptr<store::v1::StoreService::StubInterface> store_;
  absl::Duration downstream_timeout_;
  IdempotencyStore* idempotency_;
};

}  // namespace parley::gateway
