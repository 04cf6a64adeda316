// parley keys | admin: a tenant's own API keys, and the operator's tenants and keys.
#include <iostream>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "cli/commands.h"

namespace parley::cli {
namespace {

Table KeyTable() {
  return Table(
      absl::StrFormat("%-32s %-24s %-40s %-22s %s", "ID", "NAME", "SCOPES", "CREATED", "REVOKED"));
}

void PrintKeyRow(const v1::ApiKey& key, const Options& options, Table& table) {
  if (options.json) return PrintJson(key);
  table.Row(absl::StrFormat("%-32s %-24s %-40s %-22s %s", key.id(), key.name(),
                            absl::StrJoin(key.scopes(), ","), FormatTime(key.create_time()),
                            FormatTime(key.revoke_time())));
}

// A created key: the secret goes to stdout alone (so `K=$(parley keys create …)` works),
// the rest to stderr for the person watching.
template <typename Response>
void PrintCreatedKey(const Response& response, const Options& options) {
  if (options.json) return PrintJson(response);
  std::cout << response.secret() << "\n";
  std::cerr << "created " << response.api_key().id() << " for tenant "
            << response.api_key().tenant_id() << " with scopes "
            << absl::StrJoin(response.api_key().scopes(), ",")
            << "; the secret above is shown only once\n";
}

void AddScopesFlag(Flags& flags, std::string* scopes) {
  flags.String("scopes", scopes,
               "comma-separated scopes: sessions:read sessions:write sandbox:exec sandbox:files "
               "api_keys:admin, or * for all of them");
}

std::vector<std::string> SplitScopes(const std::string& scopes) {
  return absl::StrSplit(scopes, ',', absl::SkipEmpty());
}

int KeysCreate(const Invocation& call) {
  Options options;
  std::string scopes = "*";
  Flags flags(call.program, "Creates an API key of your tenant and prints its secret.");
  AddConnectionFlags(flags, &options);
  AddScopesFlag(flags, &scopes);
  std::vector<std::string> args = ParseArgs(flags, call, 1, 1, "NAME");
  v1::CreateApiKeyRequest request;
  request.set_name(args[0]);
  for (std::string& scope : SplitScopes(scopes)) request.add_scopes(std::move(scope));
  Connection connection(options);
  v1::CreateApiKeyResponse response;
  grpc::Status status =
      connection.keys().CreateApiKey(connection.Context().get(), request, &response);
  if (!status.ok()) return ReportError(status, options);
  PrintCreatedKey(response, options);
  return kExitOk;
}

int KeysList(const Invocation& call) {
  Options options;
  bool revoked = false;
  Flags flags(call.program, "Lists your tenant's API keys, newest first.");
  AddConnectionFlags(flags, &options);
  flags.Bool("revoked", &revoked, "include revoked keys");
  ParseArgs(flags, call, 0, 0, "no arguments");
  Connection connection(options);
  v1::ListApiKeysRequest request;
  request.set_include_revoked(revoked);
  Table table = KeyTable();
  grpc::Status status =
      ForEachPage(connection, connection.keys(), &v1::ApiKeyService::Stub::ListApiKeys, request,
                  [&](const v1::ListApiKeysResponse& page) {
                    for (const v1::ApiKey& key : page.api_keys()) PrintKeyRow(key, options, table);
                  });
  return status.ok() ? kExitOk : ReportError(status, options);
}

int KeysRevoke(const Invocation& call) {
  Options options;
  Flags flags(call.program, "Revokes an API key of your tenant.");
  AddConnectionFlags(flags, &options);
  std::vector<std::string> args = ParseArgs(flags, call, 1, 1, "KEY_ID");
  Connection connection(options);
  v1::RevokeApiKeyRequest request;
  request.set_api_key_id(args[0]);
  v1::RevokeApiKeyResponse response;
  grpc::Status status =
      connection.keys().RevokeApiKey(connection.Context().get(), request, &response);
  if (!status.ok()) return ReportError(status, options);
  if (options.json) {
    PrintJson(response.api_key());
  } else {
    std::cout << response.api_key().id() << " revoked\n";
  }
  return kExitOk;
}

// ---- admin ----

using AdminStub = admin::v1::AdminService::Stub;

Table TenantTable() {
  return Table(absl::StrFormat("%-32s %-30s %-22s %s", "ID", "NAME", "CREATED", "DISABLED"));
}

void PrintTenantRow(const admin::v1::Tenant& tenant, const Options& options, Table& table) {
  if (options.json) return PrintJson(tenant);
  table.Row(absl::StrFormat("%-32s %-30s %-22s %s", tenant.id(), tenant.name(),
                            FormatTime(tenant.create_time()), FormatTime(tenant.disable_time())));
}

int TenantsCreate(const Invocation& call) {
  Options options;
  std::string name;
  int64_t rate_limit = 0, rate_burst = 0;
  Flags flags(call.program, "Creates a tenant (or returns the existing one with this id).");
  AddConnectionFlags(flags, &options);
  flags.String("name", &name, "display name");
  flags.Int("rate_limit", &rate_limit, "requests per second (0: the gateway's default)", 0,
            1'000'000);
  flags.Int("rate_burst", &rate_burst, "requests at once (0: the rate)", 0, 10'000'000);
  std::vector<std::string> args = ParseArgs(flags, call, 0, 1, "[TENANT_ID]");
  Connection connection(options);
  admin::v1::CreateTenantRequest request;
  if (!args.empty()) request.set_tenant_id(args[0]);
  request.set_name(name);
  request.set_rate_limit_per_s(static_cast<uint32_t>(rate_limit));
  request.set_rate_limit_burst(static_cast<uint32_t>(rate_burst));
  admin::v1::CreateTenantResponse response;
  grpc::Status status =
      connection.admin().CreateTenant(connection.Context().get(), request, &response);
  if (!status.ok()) return ReportError(status, options);
  if (options.json) {
    PrintJson(response);
  } else {
    std::cout << response.tenant().id() << "\n";
    if (!response.created()) std::cerr << "(it existed already)\n";
  }
  return kExitOk;
}

int TenantsList(const Invocation& call) {
  Options options;
  bool disabled = false;
  Flags flags(call.program, "Lists tenants in id order.");
  AddConnectionFlags(flags, &options);
  flags.Bool("disabled", &disabled, "include disabled tenants");
  ParseArgs(flags, call, 0, 0, "no arguments");
  Connection connection(options);
  admin::v1::ListTenantsRequest request;
  request.set_include_disabled(disabled);
  Table table = TenantTable();
  grpc::Status status = ForEachPage(connection, connection.admin(), &AdminStub::ListTenants,
                                    request, [&](const admin::v1::ListTenantsResponse& page) {
                                      for (const admin::v1::Tenant& tenant : page.tenants()) {
                                        PrintTenantRow(tenant, options, table);
                                      }
                                    });
  return status.ok() ? kExitOk : ReportError(status, options);
}

// get, disable and enable: one tenant id in, the tenant out.
template <typename Request, typename Response>
int OneTenant(const Invocation& call, const char* summary,
              grpc::Status (AdminStub::*method)(grpc::ClientContext*, const Request&, Response*)) {
  Options options;
  Flags flags(call.program, summary);
  AddConnectionFlags(flags, &options);
  std::vector<std::string> args = ParseArgs(flags, call, 1, 1, "TENANT_ID");
  Connection connection(options);
  Request request;
  request.set_tenant_id(args[0]);
  Response response;
  grpc::Status status =
      (connection.admin().*method)(connection.Context().get(), request, &response);
  if (!status.ok()) return ReportError(status, options);
  Table table = TenantTable();
  PrintTenantRow(response.tenant(), options, table);
  return kExitOk;
}

int AdminTenants(const Invocation& call) {
  const std::string sub = SubcommandOf(call);
  if (sub == "create") return TenantsCreate(Subcommand(call));
  if (sub == "list") return TenantsList(Subcommand(call));
  if (sub == "get") return OneTenant(Subcommand(call), "Shows a tenant.", &AdminStub::GetTenant);
  if (sub == "disable") {
    return OneTenant(Subcommand(call),
                     "Disables a tenant: its keys stop working within seconds; nothing is "
                     "deleted.",
                     &AdminStub::DisableTenant);
  }
  if (sub == "enable") {
    return OneTenant(Subcommand(call), "Enables a disabled tenant again.",
                     &AdminStub::EnableTenant);
  }
  std::cerr << "usage: parley admin tenants <create|list|get|disable|enable> [flags]\n";
  return kExitUsage;
}

int AdminKeys(const Invocation& call) {
  const std::string sub = SubcommandOf(call);
  const Invocation sub_call = Subcommand(call);
  Options options;
  std::string tenant, scopes = "*", name;
  bool revoked = false;
  Flags flags(sub_call.program, "Manages the API keys of any tenant (operator key needed).");
  AddConnectionFlags(flags, &options);
  flags.String("tenant", &tenant, "the tenant (required)");
  if (sub == "create") {
    AddScopesFlag(flags, &scopes);
  } else if (sub == "list") {
    flags.Bool("revoked", &revoked, "include revoked keys");
  } else if (sub != "revoke") {
    std::cerr << "usage: parley admin keys <create NAME|list|revoke KEY_ID> --tenant T [flags]\n";
    return kExitUsage;
  }
  std::vector<std::string> args =
      sub == "list" ? ParseArgs(flags, sub_call, 0, 0, "no arguments")
                    : ParseArgs(flags, sub_call, 1, 1, sub == "create" ? "NAME" : "KEY_ID");
  if (tenant.empty()) return ReportUsage(sub_call.program, "--tenant is required");
  Connection connection(options);
  if (sub == "create") {
    admin::v1::CreateApiKeyRequest request;
    request.set_tenant_id(tenant);
    request.set_name(args[0]);
    for (std::string& scope : SplitScopes(scopes)) request.add_scopes(std::move(scope));
    admin::v1::CreateApiKeyResponse response;
    grpc::Status status =
        connection.admin().CreateApiKey(connection.Context().get(), request, &response);
    if (!status.ok()) return ReportError(status, options);
    PrintCreatedKey(response, options);
    return kExitOk;
  }
  if (sub == "list") {
    admin::v1::ListApiKeysRequest request;
    request.set_tenant_id(tenant);
    request.set_include_revoked(revoked);
    Table table = KeyTable();
    grpc::Status status = ForEachPage(connection, connection.admin(), &AdminStub::ListApiKeys,
                                      request, [&](const admin::v1::ListApiKeysResponse& page) {
                                        for (const v1::ApiKey& key : page.api_keys()) {
                                          PrintKeyRow(key, options, table);
                                        }
                                      });
    return status.ok() ? kExitOk : ReportError(status, options);
  }
  admin::v1::RevokeApiKeyRequest request;
  request.set_tenant_id(tenant);
  request.set_api_key_id(args[0]);
  admin::v1::RevokeApiKeyResponse response;
  grpc::Status status =
      connection.admin().RevokeApiKey(connection.Context().get(), request, &response);
  if (!status.ok()) return ReportError(status, options);
  if (options.json) {
    PrintJson(response.api_key());
  } else {
    std::cout << response.api_key().id() << " revoked\n";
  }
  return kExitOk;
}

}  // namespace

int KeysCommand(const Invocation& call) {
  const std::string sub = SubcommandOf(call);
  if (sub == "create") return KeysCreate(Subcommand(call));
  if (sub == "list") return KeysList(Subcommand(call));
  if (sub == "revoke") return KeysRevoke(Subcommand(call));
  std::cerr << "usage: parley keys <create NAME|list|revoke KEY_ID> [flags]\n";
  return kExitUsage;
}

int AdminCommand(const Invocation& call) {
  const std::string sub = SubcommandOf(call);
  if (sub == "tenants") return AdminTenants(Subcommand(call));
  if (sub == "keys") return AdminKeys(Subcommand(call));
  std::cerr << "usage: parley admin <tenants|keys> ... (needs an operator key)\n";
  return kExitUsage;
}

}  // namespace parley::cli
