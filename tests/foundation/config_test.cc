#include "common/config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace parley {
namespace {

using ::testing::HasSubstr;

struct Parsed {
  std::string addr = "127.0.0.1:1";
  std::string name = "default";
  int64_t count = 5;
  bool verbose = false;
  absl::Duration timeout = absl::Seconds(1);
  std::string level = "info";
};

absl::StatusOr<std::vector<std::string>> ParseInto(Parsed& p, std::vector<const char*> argv,
                                                   Environment env = {}) {
  Flags flags("prog", "test");
  flags.HostPort("addr", &p.addr, "address");
  flags.String("name", &p.name, "name", ValidateNonEmpty);
  flags.Int("count", &p.count, "count", 1, 10);
  flags.Bool("verbose", &p.verbose, "verbose");
  flags.Duration("timeout", &p.timeout, "timeout");
  flags.Choice("level", &p.level, "level", {"debug", "info"});
  argv.insert(argv.begin(), "prog");
  return flags.Parse(static_cast<int>(argv.size()), argv.data(), env);
}

TEST(Config, DefaultsHoldWithoutFlagsOrEnvironment) {
  Parsed p;
  ASSERT_TRUE(ParseInto(p, {}).ok());
  EXPECT_EQ(p.addr, "127.0.0.1:1");
  EXPECT_EQ(p.count, 5);
  EXPECT_FALSE(p.verbose);
}

TEST(Config, FlagsOverrideEnvironmentWhichOverridesDefaults) {
  Parsed p;
  ASSERT_TRUE(
      ParseInto(p, {"--count=7"}, {{"PARLEY_COUNT", "3"}, {"PARLEY_NAME", "from-env"}}).ok());
  EXPECT_EQ(p.count, 7);
  EXPECT_EQ(p.name, "from-env");
}

TEST(Config, AcceptsSpaceSeparatedValuesBoolsAndDurations) {
  Parsed p;
  ASSERT_TRUE(
      ParseInto(p, {"--addr", "[::1]:8080", "--verbose", "--timeout=1m30s", "-level=debug"}).ok());
  EXPECT_EQ(p.addr, "[::1]:8080");
  EXPECT_TRUE(p.verbose);
  EXPECT_EQ(p.timeout, absl::Seconds(90));
  EXPECT_EQ(p.level, "debug");
  ASSERT_TRUE(ParseInto(p, {"--noverbose"}).ok());
  EXPECT_FALSE(p.verbose);
}

TEST(Config, DashesInAFlagNameStandForUnderscores) {
  Flags flags("prog", "test");
  bool from_latest = false;
  int64_t after_seq = 0;
  flags.Bool("from_latest", &from_latest, "newest only");
  flags.Int("after_seq", &after_seq, "start after", 0, 100);
  const char* argv[] = {"prog", "--from-latest", "--after-seq=7"};
  ASSERT_TRUE(flags.Parse(3, argv, {}).ok());
  EXPECT_TRUE(from_latest);
  EXPECT_EQ(after_seq, 7);
  const char* negated[] = {"prog", "--nofrom-latest"};
  ASSERT_TRUE(flags.Parse(2, negated, {}).ok());
  EXPECT_FALSE(from_latest);
}

TEST(Config, ReturnsPositionalArgumentsInOrder) {
  Parsed p;
  auto args = ParseInto(p, {"migrate", "--count=2", "--", "--not-a-flag"});
  ASSERT_TRUE(args.ok());
  EXPECT_THAT(*args, ::testing::ElementsAre("migrate", "--not-a-flag"));
}

TEST(Config, UnknownFlagIsAnErrorNamingIt) {
  Parsed p;
  auto result = ParseInto(p, {"--bogus=1"});
  ASSERT_FALSE(result.ok());
  EXPECT_THAT(result.status().message(), HasSubstr("unknown flag --bogus"));
}

TEST(Config, BadValuesNameTheFlagAndWhatWasExpected) {
  struct Case {
    const char* arg;
    const char* expected;
  } cases[] = {
      {"--count=11", "between 1 and 10"},    {"--count=x", "expected an integer"},
      {"--addr=nohost", "host:port"},        {"--addr=h:99999", "0..65535"},
      {"--verbose=maybe", "true or false"},  {"--timeout=soon", "duration"},
      {"--level=loud", "one of debug|info"}, {"--name=", "must not be empty"},
  };
  for (const Case& c : cases) {
    Parsed p;
    auto result = ParseInto(p, {c.arg});
    ASSERT_FALSE(result.ok()) << c.arg;
    EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(result.status().message(), HasSubstr(c.expected)) << c.arg;
    EXPECT_THAT(result.status().message(), HasSubstr("--")) << c.arg;
  }
}

TEST(Config, BadEnvironmentValueNamesTheVariable) {
  Parsed p;
  auto result = ParseInto(p, {}, {{"PARLEY_COUNT", "lots"}});
  ASSERT_FALSE(result.ok());
  EXPECT_THAT(result.status().message(), HasSubstr("PARLEY_COUNT"));
}

TEST(Config, MissingValueIsAnError) {
  Parsed p;
  auto result = ParseInto(p, {"--name"});
  ASSERT_FALSE(result.ok());
  EXPECT_THAT(result.status().message(), HasSubstr("needs a value"));
}

TEST(Config, HelpListsEveryFlagWithItsVariableAndDefault) {
  Parsed p;
  Flags flags("prog", "summary line");
  flags.Int("count", &p.count, "how many", 1, 10);
  const char* argv[] = {"prog", "--help"};
  ASSERT_TRUE(flags.Parse(2, argv, {}).ok());
  EXPECT_TRUE(flags.help_requested());
  EXPECT_THAT(flags.Usage(), HasSubstr("--count (env PARLEY_COUNT)"));
  EXPECT_THAT(flags.Usage(), HasSubstr("default: \"5\""));
  EXPECT_THAT(flags.Usage(), HasSubstr("summary line"));
}

}  // namespace
}  // namespace parley
