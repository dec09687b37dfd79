#include "runtime/memory_store.h"

#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "gantry/errors.h"

namespace gantry::internal {
namespace {

using namespace std::chrono_literals;

ValuePtr inline_value(const std::string& bytes) {
  auto v = std::make_shared<proto::ObjectValue>();
  v->set_inline_data(bytes);
  return v;
}

// A value's bytes, or "<none>" for no value.
std::string bytes_of(const ValuePtr& v) { return v ? v->inline_data() : "<none>"; }

// spin_for(id) while another thread puts `bytes` for it after `delay`.
ValuePtr spin_while_put_later(MemoryStore& store, const ObjectId& id, std::chrono::microseconds delay,
                              const std::string& bytes) {
  std::thread maker([&] {
    std::this_thread::sleep_for(delay);
    store.put(id, inline_value(bytes));
  });
  ValuePtr v = store.spin_for(id);
  maker.join();
  return v;
}

TEST(MemoryStore, WaitReturnsAValueThatArrivesLater) {
  MemoryStore store;
  ObjectId id = ObjectId::generate();
  store.add_pending(id);
  EXPECT_EQ(store.get_if_ready(id), nullptr);
  std::thread maker([&] {
    std::this_thread::sleep_for(20ms);
    store.put(id, inline_value("x"));
  });
  ValuePtr v = store.wait(id, std::nullopt);
  maker.join();
  EXPECT_EQ(bytes_of(v), "x");
}

TEST(MemoryStore, WaitTimesOutAndThrowsForUnknownIds) {
  MemoryStore store;
  ObjectId id = ObjectId::generate();
  store.add_pending(id);
  EXPECT_EQ(store.wait(id, std::chrono::steady_clock::now() + 10ms), nullptr);
  EXPECT_THROW(store.wait(ObjectId::generate(), std::nullopt), ObjectLostError);
}

TEST(MemoryStore, SpinForCatchesALoneCallThatAnswersWithinTheBudget) {
  MemoryStore store(std::chrono::microseconds(200000));  // generous: a loaded machine may be slow to start the thread
  ObjectId id = ObjectId::generate();
  store.add_pending(id);
  EXPECT_EQ(bytes_of(spin_while_put_later(store, id, 2ms, "answer")), "answer");
}

TEST(MemoryStore, SpinForReturnsAReadyValueAtOnce) {
  MemoryStore store(std::chrono::microseconds(0));  // spinning off still returns what is there
  ObjectId id = ObjectId::generate();
  store.put_new(id, inline_value("here"));
  // Only a pending object is waited for; a ready one needs no spin and no budget.
  MemoryStore spinning;
  spinning.put_new(id, inline_value("here"));
  EXPECT_EQ(bytes_of(spinning.spin_for(id)), "here");
  EXPECT_EQ(store.spin_for(id), nullptr);  // budget zero: never spins, leaves it to get_if_ready/wait
}

TEST(MemoryStore, SpinForDoesNotSpinWhileOtherWorkIsOutstanding) {
  MemoryStore store(std::chrono::seconds(5));
  ObjectId a = ObjectId::generate(), b = ObjectId::generate();
  store.add_pending(a);
  store.add_pending(b);
  auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(store.spin_for(a), nullptr);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 1s);  // returned without using the 5 s budget
  // Once b is done, a is the only pending object and a spin waits for it.
  store.put(b, inline_value("b"));
  EXPECT_EQ(bytes_of(spin_while_put_later(store, a, 5ms, "a")), "a");
}

TEST(MemoryStore, SpinForBacksOffAfterRunningOut) {
  MemoryStore store(std::chrono::microseconds(300));
  ObjectId id = ObjectId::generate();
  store.add_pending(id);
  EXPECT_EQ(store.spin_for(id), nullptr);  // ran out: nothing arrived in 300 µs
  // The thread now skips its next spin (returning null even for a ready value, which
  // wait() then returns at once); the one after spins again.
  ObjectId ready = ObjectId::generate();
  store.put_new(ready, inline_value("r"));
  EXPECT_EQ(store.spin_for(ready), nullptr);
  EXPECT_EQ(bytes_of(store.spin_for(ready)), "r");
  // Running out twice in a row doubles the skip.
  EXPECT_EQ(store.spin_for(id), nullptr);
  EXPECT_EQ(store.spin_for(id), nullptr);  // skipped
  EXPECT_EQ(store.spin_for(id), nullptr);  // ran out again: two skips now
  EXPECT_EQ(store.spin_for(ready), nullptr);
  EXPECT_EQ(store.spin_for(ready), nullptr);
  EXPECT_NE(store.spin_for(ready), nullptr);  // a success resets the backoff
  EXPECT_NE(store.spin_for(ready), nullptr);
}

TEST(MemoryStore, PendingCountFollowsErasesAndRebuilds) {
  MemoryStore store(std::chrono::seconds(5));
  ObjectId a = ObjectId::generate(), b = ObjectId::generate();
  store.add_pending(a);
  store.add_pending(b);
  store.erase(b);  // freed while pending: a is now alone
  EXPECT_NE(spin_while_put_later(store, a, 2ms, "a"), nullptr);
  // A rebuilt object is pending again, and alone.
  ASSERT_TRUE(store.reset_pending(a));
  EXPECT_EQ(bytes_of(spin_while_put_later(store, a, 2ms, "a2")), "a2");
}

TEST(MemoryStore, CloseEndsASpin) {
  MemoryStore store(std::chrono::seconds(30));
  ObjectId id = ObjectId::generate();
  store.add_pending(id);
  std::thread closer([&] {
    std::this_thread::sleep_for(5ms);
    store.close();
  });
  auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(store.spin_for(id), nullptr);
  closer.join();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 10s);
  EXPECT_THROW(store.wait(id, std::nullopt), Error);
}

}  // namespace
}  // namespace gantry::internal
