// JsonWriter: appends JSON text to a string as it is written, with no document tree in
// between. For hot encoders (the OTLP exporter encodes every span it sends) where
// building an nlohmann::json value per field costs an allocation each.
//
//   std::string out;
//   JsonWriter json(out);
//   json.BeginObject();
//   json.Key("name");
//   json.String("chat gpt-4o");
//   json.Key("ids");
//   json.BeginArray();
//   json.Int(1);
//   json.Int(2);
//   json.EndArray();
//   json.EndObject();  // out == R"({"name":"chat gpt-4o","ids":[1,2]})"
//
// The writer places the commas and colons; the caller keeps the structure well formed
// (a Key before each member's value, every Begin closed by its End). Strings are
// escaped as RFC 8259 requires, and bytes that are not valid UTF-8 become U+FFFD, so
// the text is always valid JSON in UTF-8 whatever bytes a span attribute holds.
#pragma once

#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"

namespace parley::telemetry {

class JsonWriter {
 public:
  explicit JsonWriter(std::string& out) : out_(out) {}

  void BeginObject() { Open('{'); }
  void EndObject() { Close('}'); }
  void BeginArray() { Open('['); }
  void EndArray() { Close(']'); }

  // The name of the next member of the open object.
  void Key(absl::string_view key);

  void String(absl::string_view value);
  void Int(int64_t value);
  // As a JSON string of its decimal digits: how the protobuf JSON mapping writes 64-bit
  // integers, which a reader that parses numbers as doubles would round.
  void QuotedInt(int64_t value);
  void Bool(bool value);
  // Finite values as the shortest text that reads back to the same double; NaN and the
  // infinities, which JSON cannot write as numbers, as the strings "NaN", "Infinity" and
  // "-Infinity" (the protobuf JSON mapping's spelling).
  void Double(double value);
  // Lower-case hex of `bytes`, as a JSON string.
  void HexString(absl::string_view bytes);

 private:
  void BeforeValue();
  void Open(char bracket);
  void Close(char bracket);

  std::string& out_;
  bool need_comma_ = false;  // A value was written at this level since its Begin.
};

// Appends `value` to `out` as a quoted JSON string (see JsonWriter::String).
void AppendJsonString(std::string& out, absl::string_view value);

}  // namespace parley::telemetry
