#include "gateway/api/idempotency.h"

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "common/serialize.h"
#include "common/status.h"

namespace parley::gateway {
namespace {

constexpr size_t kMaxKeyBytes = 256;
constexpr size_t kFingerprintBytes = SHA256_DIGEST_LENGTH;
constexpr size_t kNonceBytes = 12;
constexpr size_t kTagBytes = 16;

// Claims the key when free (a pending marker that expires), else returns what is there.
// KEYS[1]: the record. ARGV: the pending marker, its lifetime in ms.
constexpr char kBeginScript[] = R"lua(
local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
)lua";

// Replaces our pending marker with the outcome (or deletes it when ARGV[2] is empty),
// only while the marker is still ours.
constexpr char kCompleteScript[] = R"lua(
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '' then redis.call('DEL', KEYS[1])
else redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
return 1
)lua";

std::string Sha256(absl::string_view data) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(data.data()), data.size(), digest);
  return std::string(reinterpret_cast<const char*>(digest), sizeof(digest));
}

void PutU32(std::string& out, uint32_t value) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((value >> (8 * i)) & 0xff));
}

bool TakeU32(absl::string_view& in, uint32_t* value) {
  if (in.size() < 4) return false;
  *value = 0;
  for (int i = 0; i < 4; ++i)
    *value |= static_cast<uint32_t>(static_cast<uint8_t>(in[i])) << (8 * i);
  in.remove_prefix(4);
  return true;
}

bool TakeBytes(absl::string_view& in, std::string* out) {
  uint32_t size = 0;
  if (!TakeU32(in, &size) || in.size() < size) return false;
  out->assign(in.data(), size);
  in.remove_prefix(size);
  return true;
}

// An outcome as bytes: code, message, details, then the response (the rest).
std::string EncodeOutcome(const grpc::Status& status, const std::string& response) {
  std::string out;
  PutU32(out, static_cast<uint32_t>(status.error_code()));
  PutU32(out, static_cast<uint32_t>(status.error_message().size()));
  out += status.error_message();
  PutU32(out, static_cast<uint32_t>(status.error_details().size()));
  out += status.error_details();
  out += response;
  return out;
}

bool DecodeOutcome(absl::string_view in, grpc::Status* status, std::string* response) {
  uint32_t code = 0;
  std::string message, details;
  if (!TakeU32(in, &code) || code > 16 || !TakeBytes(in, &message) || !TakeBytes(in, &details)) {
    return false;
  }
  *status = grpc::Status(static_cast<grpc::StatusCode>(code), message, details);
  response->assign(in.data(), in.size());
  return true;
}

// AES-256-GCM: nonce | ciphertext | tag.
std::optional<std::string> Seal(const std::string& key, const std::string& plain) {
  std::string out(kNonceBytes, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(out.data()), kNonceBytes) != 1) {
    return std::nullopt;
  }
  std::unique_ptr<EVP_CIPHER_CTX, decltype(&EVP_CIPHER_CTX_free)> ctx(EVP_CIPHER_CTX_new(),
                                                                      EVP_CIPHER_CTX_free);
  if (ctx == nullptr ||
      EVP_EncryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr,
                         reinterpret_cast<const unsigned char*>(key.data()),
                         reinterpret_cast<const unsigned char*>(out.data())) != 1) {
    return std::nullopt;
  }
  out.resize(kNonceBytes + plain.size() + kTagBytes);
  int written = 0;
  auto* cipher = reinterpret_cast<unsigned char*>(out.data() + kNonceBytes);
  if (EVP_EncryptUpdate(ctx.get(), cipher, &written,
                        reinterpret_cast<const unsigned char*>(plain.data()),
                        static_cast<int>(plain.size())) != 1) {
    return std::nullopt;
  }
  int tail = 0;
  if (EVP_EncryptFinal_ex(ctx.get(), cipher + written, &tail) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, kTagBytes,
                          out.data() + kNonceBytes + plain.size()) != 1) {
    return std::nullopt;
  }
  return out;
}

std::optional<std::string> Open(const std::string& key, absl::string_view sealed) {
  if (sealed.size() < kNonceBytes + kTagBytes) return std::nullopt;
  const size_t size = sealed.size() - kNonceBytes - kTagBytes;
  std::unique_ptr<EVP_CIPHER_CTX, decltype(&EVP_CIPHER_CTX_free)> ctx(EVP_CIPHER_CTX_new(),
                                                                      EVP_CIPHER_CTX_free);
  if (ctx == nullptr ||
      EVP_DecryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr,
                         reinterpret_cast<const unsigned char*>(key.data()),
                         reinterpret_cast<const unsigned char*>(sealed.data())) != 1) {
    return std::nullopt;
  }
  std::string plain(size, '\0');
  int written = 0;
  if (EVP_DecryptUpdate(ctx.get(), reinterpret_cast<unsigned char*>(plain.data()), &written,
                        reinterpret_cast<const unsigned char*>(sealed.data() + kNonceBytes),
                        static_cast<int>(size)) != 1) {
    return std::nullopt;
  }
  std::string tag(sealed.substr(kNonceBytes + size));
  int tail = 0;
  if (EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, kTagBytes, tag.data()) != 1 ||
      EVP_DecryptFinal_ex(ctx.get(), reinterpret_cast<unsigned char*>(plain.data()) + written,
                          &tail) != 1) {
    return std::nullopt;
  }
  return plain;
}

// Whether trying the call again could end differently: such outcomes are not kept.
bool RetryMayChange(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::DEADLINE_EXCEEDED:
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
    case grpc::StatusCode::ABORTED:
    case grpc::StatusCode::CANCELLED:
    case grpc::StatusCode::INTERNAL:
    case grpc::StatusCode::UNKNOWN:
      return true;
    default:
      return false;
  }
}

absl::Status KeyReused() {
  absl::Status status = absl::FailedPreconditionError(
      "this idempotency key was used with a different request; use a new key for a new "
      "request");
  SetErrorInfo(status, "IDEMPOTENCY_KEY_REUSED");
  return status;
}

absl::Status KeyInUse() {
  absl::Status status = absl::AbortedError(
      "a call with this idempotency key is still running; retry to get its outcome");
  SetErrorInfo(status, "IDEMPOTENCY_KEY_IN_USE");
  SetRetryDelay(status, 500);
  return status;
}

absl::Status NoRedis() {
  return absl::UnavailableError(
      "idempotency keys are kept in Redis, which cannot be reached; retry");
}

}  // namespace

absl::StatusOr<std::optional<std::string>> IdempotencyKeyOf(
    const grpc::ServerContextBase& context) {
  const auto& metadata = context.client_metadata();
  auto it = metadata.find(kIdempotencyKeyHeader);
  if (it == metadata.end()) return std::nullopt;
  absl::string_view key(it->second.data(), it->second.size());
  if (key.empty() || key.size() > kMaxKeyBytes) {
    return InvalidArgumentError(kIdempotencyKeyHeader,
                                absl::StrCat("must be 1 to ", kMaxKeyBytes, " bytes"));
  }
  for (char c : key) {
    if (c < 0x21 || c > 0x7e) {
      return InvalidArgumentError(kIdempotencyKeyHeader, "must be printable ASCII without spaces");
    }
  }
  return std::string(key);
}

IdempotencyStore::IdempotencyStore(IdempotencyOptions options)
    : options_(std::move(options)), pool_({.redis = options_.redis, .workers = options_.workers}) {}

void IdempotencyStore::Begin(absl::string_view tenant, absl::string_view method,
                             absl::string_view key, const google::protobuf::Message& request,
                             BeginDone done, std::optional<absl::Duration> in_flight_ttl) {
  // Two digests of the key: one names the record, the other seals it; neither can be
  // had from the other.
  Claim claim;
  claim.redis_key = options_.keys.Idempotency(
      tenant, method, absl::BytesToHexString(Sha256(absl::StrCat("parley idempotency id\n", key))));
  claim.seal_key = Sha256(absl::StrCat("parley idempotency seal\n", tenant, "\n", key));
  claim.fingerprint = Sha256(absl::StrCat(method, "\n", SerializeDeterministic(request)));
  auto state = std::make_shared<std::pair<Claim, BeginDone>>(std::move(claim), std::move(done));
  std::vector<std::string> command = {
      "EVAL",
      kBeginScript,
      "1",
      state->first.redis_key,
      "P" + state->first.fingerprint,
      absl::StrCat(absl::ToInt64Milliseconds(in_flight_ttl.value_or(options_.in_flight_ttl)))};
  const bool queued = pool_.Submit(std::move(command), [state](absl::StatusOr<RedisReply> reply) {
    auto& [claim, done] = *state;
    if (!reply.ok()) return done(NoRedis());
    if ((*reply)->type == REDIS_REPLY_NIL) return done(Started{.claim = std::move(claim)});
    if ((*reply)->type != REDIS_REPLY_STRING) return done(NoRedis());
    absl::string_view found((*reply)->str, (*reply)->len);
    if (found.size() < 1 + kFingerprintBytes ||
        found.substr(1, kFingerprintBytes) != claim.fingerprint) {
      return done(KeyReused());
    }
    if (found[0] == 'P') return done(KeyInUse());
    std::optional<std::string> plain = Open(claim.seal_key, found.substr(1 + kFingerprintBytes));
    Started replay;
    if (!plain || !DecodeOutcome(*plain, &replay.replay_status, &replay.replay_response)) {
      return done(
          absl::InternalError("the recorded outcome of this idempotency key is unreadable"));
    }
    done(std::move(replay));
  });
  if (!queued) state->second(NoRedis());
}

void IdempotencyStore::Complete(Claim claim, const grpc::Status& status,
                                const google::protobuf::Message* response,
                                std::function<void()> done) {
  std::string outcome;  // Empty: release the key.
  if (!RetryMayChange(status.error_code())) {
    std::string bytes;
    if (status.ok() && response != nullptr) bytes = response->SerializeAsString();
    std::optional<std::string> sealed = Seal(claim.seal_key, EncodeOutcome(status, bytes));
    if (sealed) outcome = absl::StrCat("D", claim.fingerprint, *sealed);
  }
  const std::string ttl_ms = absl::StrCat(absl::ToInt64Milliseconds(options_.ttl));
  // Unreachable or refused: the pending marker expires by itself (in_flight_ttl).
  const bool queued = pool_.Submit({"EVAL", kCompleteScript, "1", claim.redis_key,
                                    "P" + claim.fingerprint, std::move(outcome), ttl_ms},
                                   [done](const absl::StatusOr<RedisReply>&) { done(); });
  if (!queued) done();
}

}  // namespace parley::gateway
