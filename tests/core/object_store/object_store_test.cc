#include "object_store/object_store.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "gantry/errors.h"
#include "object_store/shm_object.h"

namespace gantry::internal {
namespace {

std::filesystem::path test_dir() {
  return std::filesystem::path("/dev/shm") / ("gantry_store_test_" + std::to_string(::getpid()));
}

TEST(ObjectStore, ReservesWithinCapacityAndRejectsWhenFull) {
  ObjectStore store(test_dir(), 1000);
  ObjectId a = ObjectId::generate(), b = ObjectId::generate(), c = ObjectId::generate();
  auto ra = store.reserve(a, 600);
  ASSERT_TRUE(ra.error.empty()) << ra.error;
  EXPECT_EQ(store.used(), 600u);
  auto rb = store.reserve(b, 500);
  EXPECT_TRUE(rb.path.empty());
  EXPECT_NE(rb.error.find("object store full"), std::string::npos) << rb.error;
  EXPECT_NE(rb.error.find("object_store_memory"), std::string::npos) << "the error says what to do";
  EXPECT_EQ(store.used(), 600u) << "a refused reservation changes nothing";
  auto rc = store.reserve(c, 400);
  EXPECT_TRUE(rc.error.empty()) << rc.error;
  EXPECT_EQ(store.used(), 1000u);
  // A retried task re-creates its result under the same id: it replaces the old one.
  auto again = store.reserve(a, 100);
  EXPECT_TRUE(again.error.empty()) << again.error;
  EXPECT_EQ(store.used(), 500u);
}

TEST(ObjectStore, RemovedFilesAreReusedBySimilarSizesAndEvictedForRoom) {
  ObjectStore store(test_dir(), 10000);
  ObjectId id = ObjectId::generate();
  auto r = store.reserve(id, 4096);
  ASSERT_TRUE(r.error.empty());
  EXPECT_FALSE(r.reused);
  {
    auto file = MappedFile::create(r.path, 4096);
    std::memset(file->data(), 7, 4096);
  }
  store.remove(id);
  EXPECT_FALSE(std::filesystem::exists(r.path));
  EXPECT_EQ(store.num_objects(), 0u);
  EXPECT_EQ(store.pooled(), 4096u) << "the freed file is kept, its pages still in memory";
  EXPECT_EQ(store.used(), 4096u);
  store.remove(id);  // unknown ids are ignored

  // Too small to take the pooled file (it would waste more than half): a fresh file.
  auto tiny = store.reserve(ObjectId::generate(), 100);
  EXPECT_FALSE(tiny.reused);
  // A similar size takes it over, and the creator resizes it.
  ObjectId again = ObjectId::generate();
  auto reused = store.reserve(again, 3000);
  ASSERT_TRUE(reused.error.empty()) << reused.error;
  EXPECT_TRUE(reused.reused);
  EXPECT_EQ(store.pooled(), 0u);
  EXPECT_EQ(store.used(), 3100u);
  {
    auto file = MappedFile::create(reused.path, 3000, /*reuse=*/true);
    EXPECT_EQ(file->size(), 3000u);
  }
  EXPECT_EQ(std::filesystem::file_size(reused.path), 3000u);

  // Pooled files give way when a new object needs the room.
  store.remove(again);
  EXPECT_EQ(store.pooled(), 3000u);
  auto big = store.reserve(ObjectId::generate(), 9000);
  EXPECT_TRUE(big.error.empty()) << big.error;
  EXPECT_EQ(store.pooled(), 0u);
  EXPECT_EQ(store.used(), 9100u);
}

TEST(ObjectStore, SecondaryCopiesAreFoundWhenSealedAndEvictedLeastRecentlyUsedFirst) {
  ObjectStore store(test_dir(), 1000);
  ObjectId a = ObjectId::generate(), b = ObjectId::generate(), c = ObjectId::generate();
  auto ra = store.reserve(a, 400, /*secondary=*/true);
  ASSERT_TRUE(ra.error.empty()) << ra.error;
  std::ofstream(ra.path) << "a";
  EXPECT_EQ(store.find(a), "") << "a copy being written is not there yet";
  store.seal_secondary(a);
  EXPECT_EQ(store.find(a), ra.path);
  auto rb = store.reserve(b, 400, /*secondary=*/true);
  std::ofstream(rb.path) << "b";
  store.seal_secondary(b);
  EXPECT_EQ(store.find(a), ra.path);  // a is now the more recently used
  EXPECT_EQ(store.num_secondary(), 2u);
  // A primary object that needs room evicts b (least recently used), and keeps a.
  auto rc = store.reserve(c, 500);
  ASSERT_TRUE(rc.error.empty()) << rc.error;
  EXPECT_EQ(store.find(b), "");
  EXPECT_FALSE(std::filesystem::exists(rb.path));
  EXPECT_EQ(store.find(a), ra.path);
  EXPECT_EQ(store.used(), 900u);
  // Removing a secondary copy unlinks it rather than keeping the file for reuse.
  store.remove(a);
  EXPECT_FALSE(std::filesystem::exists(ra.path));
  EXPECT_EQ(store.pooled(), 0u);
  EXPECT_EQ(store.used(), 500u);
}

TEST(MappedFile, ReaderSeesWriterBytesAndSurvivesUnlink) {
  ObjectStore store(test_dir(), 1 << 24);
  ObjectId id = ObjectId::generate();
  auto r = store.reserve(id, 1 << 20);
  ASSERT_TRUE(r.error.empty());
  {
    auto w = MappedFile::create(r.path, 1 << 20);
    for (size_t i = 0; i < w->size(); ++i) w->data()[i] = static_cast<uint8_t>(i * 31);
  }
  auto reader = MappedFile::open_read_only(r.path);
  ASSERT_EQ(reader->size(), size_t{1} << 20);
  store.remove(id);  // unlinked, but the mapping stays valid
  for (size_t i = 0; i < reader->size(); i += 4099) EXPECT_EQ(reader->data()[i], static_cast<uint8_t>(i * 31));
  EXPECT_THROW(MappedFile::open_read_only(r.path), ObjectLostError);
}

TEST(MappedFile, CreateRefusesAnExistingPath) {
  ObjectStore store(test_dir(), 1 << 20);
  ObjectId id = ObjectId::generate();
  auto r = store.reserve(id, 64);
  MappedFile::create(r.path, 64);
  EXPECT_THROW(MappedFile::create(r.path, 64), Error);
}

TEST(ObjectStore, DestructionRemovesTheDirectory) {
  std::filesystem::path dir = test_dir() / "nested";
  {
    ObjectStore store(dir, 1 << 20);
    auto r = store.reserve(ObjectId::generate(), 64);
    MappedFile::create(r.path, 64);
  }
  EXPECT_FALSE(std::filesystem::exists(dir));
}

}  // namespace
TEST(ObjectStoreTest, StaleStoreDirectoriesOfDeadAgentsAreRemoved) {
  auto root = std::filesystem::temp_directory_path() / ("gantry_stale_" + std::to_string(::getpid()));
  std::filesystem::create_directories(root);
  // A pid that is not running: a child that has exited and been reaped.
  pid_t dead = ::fork();
  if (dead == 0) std::_Exit(0);
  ::waitpid(dead, nullptr, 0);
  auto stale = root / ("gantry_" + std::to_string(dead) + "_0a0b0c0d");
  auto live = root / ("gantry_" + std::to_string(::getpid()) + "_0a0b0c0d");
  auto other = root / "gantry_notapid_x";
  for (const auto& d : {stale, live, other}) std::filesystem::create_directories(d);
  std::ofstream(stale / "obj") << "bytes";
  EXPECT_EQ(gantry::internal::remove_stale_store_dirs(root), 1u);
  EXPECT_FALSE(std::filesystem::exists(stale));
  EXPECT_TRUE(std::filesystem::exists(live));
  EXPECT_TRUE(std::filesystem::exists(other));
  std::filesystem::remove_all(root);
}

}  // namespace gantry::internal
