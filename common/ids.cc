#include "common/ids.h"

#include "absl/strings/str_cat.h"

namespace parley {
namespace {

constexpr char kCrockford[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

// 128 bits (6 bytes time + 10 bytes random) as 26 base32 digits, most significant
// first; the first digit carries only 3 bits.
std::string EncodeUlid(int64_t ms, const std::array<uint8_t, 10>& random) {
  std::array<uint8_t, 16> bytes{};
  for (int i = 0; i < 6; ++i) bytes[i] = static_cast<uint8_t>(ms >> (8 * (5 - i)));
  for (int i = 0; i < 10; ++i) bytes[6 + i] = random[i];
  std::string out(26, '0');
  for (int digit = 25, bit = 0; digit >= 0; --digit, bit += 5) {
    // Extract 5 bits starting at `bit` counted from the least significant end.
    int value = 0;
    for (int b = 0; b < 5 && bit + b < 128; ++b) {
      int pos = bit + b;
      int byte = 15 - pos / 8;
      value |= ((bytes[byte] >> (pos % 8)) & 1) << b;
    }
    out[digit] = kCrockford[value];
  }
  return out;
}

bool Increment(std::array<uint8_t, 10>& random) {
  for (int i = 9; i >= 0; --i) {
    if (++random[i] != 0) return true;
  }
  return false;  // Overflowed 80 bits within one millisecond.
}

}  // namespace

IdGenerator::IdGenerator(Clock& clock) : clock_(clock) {}

std::string IdGenerator::Next(absl::string_view prefix) {
  int64_t ms = absl::ToUnixMillis(clock_.Now());
  absl::MutexLock lock(&mu_);
  if (ms <= last_ms_) {
    // Same (or an earlier, if the wall clock stepped back) millisecond: stay monotonic.
    ms = last_ms_;
    if (!Increment(last_random_)) ms = ++last_ms_;
  } else {
    last_ms_ = ms;
    for (uint8_t& byte : last_random_) byte = absl::Uniform<uint8_t>(bitgen_);
    last_random_[0] &= 0x7f;  // Leave headroom so increments rarely overflow.
  }
  return absl::StrCat(prefix, "_", EncodeUlid(ms, last_random_));
}

std::string NewId(absl::string_view prefix) {
  static IdGenerator* generator = new IdGenerator(RealClock::Get());
  return generator->Next(prefix);
}

bool IsValidId(absl::string_view id, absl::string_view prefix) {
  if (id.size() != prefix.size() + 1 + 26) return false;
  if (id.substr(0, prefix.size()) != prefix || id[prefix.size()] != '_') return false;
  absl::string_view body = id.substr(prefix.size() + 1);
  if (body[0] > '7') return false;
  for (char c : body) {
    if (absl::string_view(kCrockford).find(c) == absl::string_view::npos) return false;
  }
  return true;
}

}  // namespace parley
