// The public parley.v1.ApiKeyService: a tenant manages its own keys.
//
// Every rpc needs the scope api_keys:admin and acts on the caller's tenant only (keys are
// stored by store-svc). A key can hand out only scopes it holds itself: asking for more
// is PERMISSION_DENIED with ErrorInfo.reason "SCOPE_ESCALATION". A revoked key stops
// working on every gateway within the key cache's TTL (gateway/auth/authenticator.h).
//
// Threading: handlers run on gRPC's callback threads and never block.
#pragma once

#include <memory>

#include "absl/time/time.h"
#include "gateway/api/idempotency.h"
#include "gateway/auth/authenticator.h"
#include "parley/store/v1/store.grpc.pb.h"
#include "parley/v1/parley.grpc.pb.h"

namespace parley::gateway {

class ApiKeyApi final : public v1::ApiKeyService::CallbackService {
 public:
  // `authenticator` and `idempotency` must outlive this object.
  ApiKeyApi(Authenticator& authenticator,
            std::shared_ptr<store::v1::StoreService::StubInterface> store,
            absl::Duration downstream_timeout, IdempotencyStore* idempotency);

  grpc::ServerUnaryReactor* CreateApiKey(grpc::CallbackServerContext* context,
                                         const v1::CreateApiKeyRequest* request,
                                         v1::CreateApiKeyResponse* response) override;
  grpc::ServerUnaryReactor* ListApiKeys(grpc::CallbackServerContext* context,
                                        const v1::ListApiKeysRequest* request,
                                        v1::ListApiKeysResponse* response) override;
  grpc::ServerUnaryReactor* RevokeApiKey(grpc::CallbackServerContext* context,
                                         const v1::RevokeApiKeyRequest* request,
                                         v1::RevokeApiKeyResponse* response) override;

 private:
  Authenticator& authenticator_;
  std::shared_ptr<store::v1::StoreService::StubInterface> store_;
  absl::Duration downstream_timeout_;
  IdempotencyStore* idempotency_;
};

}  // namespace parley::gateway
