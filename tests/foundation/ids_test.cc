#include "common/ids.h"

#include <gtest/gtest.h>

#include <set>
#include <thread>

namespace parley {
namespace {

TEST(Ids, HavePrefixAndValidShape) {
  std::string id = NewId("ses");
  EXPECT_EQ(id.size(), 4u + 26u);
  EXPECT_TRUE(IsValidId(id, "ses"));
  EXPECT_FALSE(IsValidId(id, "turn"));
  EXPECT_FALSE(IsValidId("ses_0000", "ses"));
  EXPECT_FALSE(IsValidId("ses_01ARZ3NDEKTSV4RRFFQ69G5FAU", "ses"));  // 'U' is not Crockford.
}

TEST(Ids, StrictlyIncreaseWithinOneMillisecond) {
  FakeClock clock;  // Time never moves: every id lands in the same millisecond.
  IdGenerator generator(clock);
  std::string previous = generator.Next("x");
  for (int i = 0; i < 10000; ++i) {
    std::string next = generator.Next("x");
    ASSERT_LT(previous, next);
    previous = next;
  }
}

TEST(Ids, SortByCreationTime) {
  FakeClock clock;
  IdGenerator generator(clock);
  std::string earlier = generator.Next("m");
  clock.Advance(absl::Milliseconds(1));
  std::string later = generator.Next("m");
  EXPECT_LT(earlier, later);
  // The first ten characters encode the millisecond timestamp.
  EXPECT_NE(earlier.substr(2, 10), later.substr(2, 10));
}

TEST(Ids, StayMonotonicWhenTheClockStepsBack) {
  FakeClock clock;
  IdGenerator generator(clock);
  std::string before = generator.Next("t");
  clock.Advance(-absl::Seconds(5));
  EXPECT_LT(before, generator.Next("t"));
}

TEST(Ids, UniqueAcrossThreads) {
  std::vector<std::vector<std::string>> per_thread(4);
  std::vector<std::thread> threads;
  for (auto& out : per_thread) {
    threads.emplace_back([&out] {
      for (int i = 0; i < 5000; ++i) out.push_back(NewId("k"));
    });
  }
  for (auto& t : threads) t.join();
  std::set<std::string> all;
  for (const auto& out : per_thread) all.insert(out.begin(), out.end());
  EXPECT_EQ(all.size(), 20000u);
}

}  // namespace
}  // namespace parley
