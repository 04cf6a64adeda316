#include "telemetry/json_writer.h"

#include <charconv>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace parley::telemetry {
namespace {

constexpr char kHexDigits[] = "0123456789abcdef";
constexpr absl::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD in UTF-8.

// The length of the well-formed UTF-8 sequence starting `s[i]` (a byte >= 0x80), or 0
// when it is not one (a stray continuation byte, an overlong form, a surrogate, a code
// point past U+10FFFF, or a sequence cut short). Follows the Unicode standard's table
// of well-formed byte sequences.
size_t Utf8SequenceLength(absl::string_view s, size_t i) {
  const auto byte = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const auto continuation = [&](size_t k, unsigned char lo = 0x80, unsigned char hi = 0xBF) {
    return k < s.size() && byte(k) >= lo && byte(k) <= hi;
  };
  const unsigned char lead = byte(i);
  if (lead >= 0xC2 && lead <= 0xDF) return continuation(i + 1) ? 2 : 0;
  if (lead >= 0xE0 && lead <= 0xEF) {
    const unsigned char lo = lead == 0xE0 ? 0xA0 : 0x80;  // No overlong forms.
    const unsigned char hi = lead == 0xED ? 0x9F : 0xBF;  // No surrogates.
    return continuation(i + 1, lo, hi) && continuation(i + 2) ? 3 : 0;
  }
  if (lead >= 0xF0 && lead <= 0xF4) {
    const unsigned char lo = lead == 0xF0 ? 0x90 : 0x80;  // No overlong forms.
    const unsigned char hi = lead == 0xF4 ? 0x8F : 0xBF;  // Nothing past U+10FFFF.
    return continuation(i + 1, lo, hi) && continuation(i + 2) && continuation(i + 3) ? 4 : 0;
  }
  return 0;
}

}  // namespace

void AppendJsonString(std::string& out, absl::string_view value) {
  out.push_back('"');
  size_t i = 0;
  while (i < value.size()) {
    // Copy the longest run that needs no escaping in one append.
    size_t run = i;
    while (run < value.size()) {
      const auto c = static_cast<unsigned char>(value[run]);
      if (c < 0x20 || c == '"' || c == '\\' || c >= 0x80) break;
      ++run;
    }
    out.append(value.data() + i, run - i);
    i = run;
    if (i == value.size()) break;
    const auto c = static_cast<unsigned char>(value[i]);
    if (c >= 0x80) {
      const size_t length = Utf8SequenceLength(value, i);
      if (length == 0) {
        out.append(kReplacement.data(), kReplacement.size());
        ++i;
      } else {
        out.append(value.data() + i, length);
        i += length;
      }
      continue;
    }
    switch (c) {
      case '"':
        out.append("\\\"");
        break;
      case '\\':
        out.append("\\\\");
        break;
      case '\n':
        out.append("\\n");
        break;
      case '\r':
        out.append("\\r");
        break;
      case '\t':
        out.append("\\t");
        break;
      default:
        out.append("\\u00");
        out.push_back(kHexDigits[c >> 4]);
        out.push_back(kHexDigits[c & 0xF]);
    }
    ++i;
  }
  out.push_back('"');
}

void JsonWriter::BeforeValue() {
  if (need_comma_) out_.push_back(',');
  need_comma_ = true;
}

void JsonWriter::Open(char bracket) {
  BeforeValue();
  out_.push_back(bracket);
  need_comma_ = false;
}

void JsonWriter::Close(char bracket) {
  out_.push_back(bracket);
  need_comma_ = true;
}

void JsonWriter::Key(absl::string_view key) {
  BeforeValue();
  AppendJsonString(out_, key);
  out_.push_back(':');
  need_comma_ = false;  // The member's value follows with no comma.
}

void JsonWriter::String(absl::string_view value) {
  BeforeValue();
  AppendJsonString(out_, value);
}

void JsonWriter::Int(int64_t value) {
  BeforeValue();
  absl::StrAppend(&out_, value);
}

void JsonWriter::QuotedInt(int64_t value) {
  BeforeValue();
  out_.push_back('"');
  absl::StrAppend(&out_, value);
  out_.push_back('"');
}

void JsonWriter::Bool(bool value) {
  BeforeValue();
  out_.append(value ? "true" : "false");
}

void JsonWriter::Double(double value) {
  BeforeValue();
  if (std::isnan(value)) {
    out_.append("\"NaN\"");
  } else if (std::isinf(value)) {
    out_.append(value > 0 ? "\"Infinity\"" : "\"-Infinity\"");
  } else {
    char buffer[32];
    const auto result = std::to_chars(buffer, buffer + sizeof(buffer), value);
    out_.append(buffer, result.ptr);
  }
}

void JsonWriter::HexString(absl::string_view bytes) {
  BeforeValue();
  out_.push_back('"');
  for (char b : bytes) {
    const auto c = static_cast<unsigned char>(b);
    out_.push_back(kHexDigits[c >> 4]);
    out_.push_back(kHexDigits[c & 0xF]);
  }
  out_.push_back('"');
}

}  // namespace parley::telemetry
