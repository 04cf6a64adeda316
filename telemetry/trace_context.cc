#include "telemetry/trace_context.h"

#include "absl/random/random.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace parley::telemetry {
namespace {

// Ids must be random and non-zero; one generator per thread avoids a lock on a path
// taken by every RPC.
template <size_t N>
std::array<uint8_t, N> RandomNonZero() {
  thread_local absl::BitGen bitgen;
  std::array<uint8_t, N> id{};
  bool zero = true;
  while (zero) {
    for (uint8_t& byte : id) {
      byte = absl::Uniform<uint8_t>(bitgen);
      zero = zero && byte == 0;
    }
  }
  return id;
}

bool IsLowerHex(absl::string_view text) {
  for (char c : text) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

template <size_t N>
bool DecodeHex(absl::string_view hex, std::array<uint8_t, N>& out) {
  if (hex.size() != 2 * N || !IsLowerHex(hex)) return false;
  std::string bytes = absl::HexStringToBytes(hex);
  bool all_zero = true;
  for (size_t i = 0; i < N; ++i) {
    out[i] = static_cast<uint8_t>(bytes[i]);
    all_zero = all_zero && out[i] == 0;
  }
  return !all_zero;
}

template <size_t N>
std::string EncodeHex(const std::array<uint8_t, N>& bytes) {
  return absl::BytesToHexString(absl::string_view(reinterpret_cast<const char*>(bytes.data()), N));
}

}  // namespace

TraceContext TraceContext::NewRoot(bool sampled) {
  TraceContext context;
  context.trace_id_ = RandomNonZero<16>();
  context.span_id_ = RandomNonZero<8>();
  context.flags_ = sampled ? 0x01 : 0x00;
  return context;
}

TraceContext TraceContext::WithSampled(bool sampled) const {
  TraceContext context = *this;
  context.flags_ = sampled ? (flags_ | 0x01) : (flags_ & ~0x01);
  return context;
}

std::optional<TraceContext> TraceContext::Parse(absl::string_view traceparent,
                                                absl::string_view tracestate) {
  // version(2) '-' trace-id(32) '-' parent-id(16) '-' flags(2)
  constexpr size_t kLength = 55;
  if (traceparent.size() < kLength) return std::nullopt;
  absl::string_view version = traceparent.substr(0, 2);
  if (!IsLowerHex(version) || version == "ff") return std::nullopt;
  if (traceparent.size() > kLength && (version == "00" || traceparent[kLength] != '-')) {
    return std::nullopt;
  }
  if (traceparent[2] != '-' || traceparent[35] != '-' || traceparent[52] != '-') {
    return std::nullopt;
  }
  TraceContext context;
  if (!DecodeHex(traceparent.substr(3, 32), context.trace_id_)) return std::nullopt;
  if (!DecodeHex(traceparent.substr(36, 16), context.span_id_)) return std::nullopt;
  absl::string_view flags = traceparent.substr(53, 2);
  if (!IsLowerHex(flags)) return std::nullopt;
  context.flags_ = static_cast<uint8_t>(absl::HexStringToBytes(flags)[0]);
  context.tracestate_ = std::string(tracestate);
  return context;
}

TraceContext TraceContext::NewChild() const {
  TraceContext child = *this;
  child.span_id_ = RandomNonZero<8>();
  return child;
}

std::string TraceContext::ToTraceparent() const {
  return absl::StrCat("00-", TraceIdHex(), "-", SpanIdHex(), "-",
                      absl::Hex(flags_, absl::kZeroPad2));
}

std::string TraceContext::TraceIdHex() const { return EncodeHex(trace_id_); }
std::string TraceContext::SpanIdHex() const { return EncodeHex(span_id_); }

}  // namespace parley::telemetry
