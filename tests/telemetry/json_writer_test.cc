#include "telemetry/json_writer.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "absl/strings/escaping.h"
#include "nlohmann/json.hpp"

namespace parley::telemetry {
namespace {

std::string Quoted(absl::string_view value) {
  std::string out;
  AppendJsonString(out, value);
  return out;
}

// What a strict JSON parser reads back from `text`.
nlohmann::json Parse(const std::string& text) {
  return nlohmann::json::parse(text, /*cb=*/nullptr, /*allow_exceptions=*/true);
}

TEST(JsonWriterTest, PlacesCommasAndColonsInNestedObjectsAndArrays) {
  std::string out;
  JsonWriter json(out);
  json.BeginObject();
  json.Key("a");
  json.Int(1);
  json.Key("b");
  json.BeginArray();
  json.BeginObject();
  json.EndObject();
  json.BeginArray();
  json.EndArray();
  json.String("x");
  json.Bool(false);
  json.EndArray();
  json.Key("c");
  json.BeginObject();
  json.Key("d");
  json.QuotedInt(-9007199254740993);
  json.EndObject();
  json.EndObject();
  EXPECT_EQ(out, R"({"a":1,"b":[{},[],"x",false],"c":{"d":"-9007199254740993"}})");
}

TEST(JsonWriterTest, EscapesQuotesBackslashesAndControlCharacters) {
  EXPECT_EQ(Quoted("say \"hi\"\\now"), R"("say \"hi\"\\now")");
  EXPECT_EQ(Quoted("a\nb\rc\td"), R"("a\nb\rc\td")");
  EXPECT_EQ(Quoted(std::string("\x01\x1f\0z", 4)), R"("\u0001\u001f\u0000z")");
  EXPECT_EQ(Parse(Quoted(std::string("\x01\x1f\0z", 4))), std::string("\x01\x1f\0z", 4));
}

TEST(JsonWriterTest, KeepsWellFormedUtf8AsItIs) {
  for (const std::string& text :
       {std::string("caf\xC3\xA9"), std::string("\xE2\x82\xAC 5"), std::string("\xF0\x9F\x98\x80"),
        std::string("\xEF\xBF\xBF"), std::string("\xF4\x8F\xBF\xBF")}) {
    EXPECT_EQ(Quoted(text), "\"" + text + "\"");
    EXPECT_EQ(Parse(Quoted(text)), text);
  }
}

TEST(JsonWriterTest, ReplacesEachByteThatIsNotUtf8WithTheReplacementCharacter) {
  const std::string r = "\xEF\xBF\xBD";  // U+FFFD.
  struct Case {
    std::string in, out;
  };
  for (const Case& c : {
           Case{std::string("a\xFF") + "b", "a" + r + "b"},  // Never valid.
           Case{"\x80", r},                                  // A stray continuation byte.
           Case{"\xC3", r},                                  // Cut short at the end.
           Case{"\xC3z", r + "z"},                           // Cut short by an ASCII byte.
           Case{"\xC0\x80", r + r},                          // Overlong NUL.
           Case{"\xE0\x80\x80", r + r + r},                  // Overlong three-byte form.
           Case{"\xED\xA0\x80", r + r + r},                  // A UTF-16 surrogate.
           Case{"\xF4\x90\x80\x80", r + r + r + r},          // Past U+10FFFF.
           Case{"\xE2\x82", r + r},                          // Three-byte sequence cut short.
       }) {
    EXPECT_EQ(Quoted(c.in), "\"" + c.out + "\"") << absl::CEscape(c.in);
    EXPECT_EQ(Parse(Quoted(c.in)), c.out) << absl::CEscape(c.in);
  }
}

TEST(JsonWriterTest, WritesDoublesThatReadBackExactlyAndNamesTheOnesJsonCannotHold) {
  for (double value : {0.5, 0.1, -2.0, 1e300, 5e-324, 123456.789}) {
    std::string out;
    JsonWriter(out).Double(value);
    EXPECT_EQ(Parse(out).get<double>(), value) << out;
  }
  auto text = [](double value) {
    std::string out;
    JsonWriter(out).Double(value);
    return out;
  };
  EXPECT_EQ(text(std::numeric_limits<double>::quiet_NaN()), "\"NaN\"");
  EXPECT_EQ(text(std::numeric_limits<double>::infinity()), "\"Infinity\"");
  EXPECT_EQ(text(-std::numeric_limits<double>::infinity()), "\"-Infinity\"");
}

TEST(JsonWriterTest, WritesBytesAsLowerCaseHex) {
  std::string out;
  JsonWriter(out).HexString(std::string("\x00\x0f\xab\xff", 4));
  EXPECT_EQ(out, R"("000fabff")");
}

}  // namespace
}  // namespace parley::telemetry
