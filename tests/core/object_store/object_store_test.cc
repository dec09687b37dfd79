#include "object_store/object_store.h"

#include <gtest/gtest.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <vector>

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

// A file's size and link count as seen through a kept mapping's path-independent identity.
struct stat stat_of(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return st;
}

TEST(WarmMappings, TheStoreHandingBackAKeptFileReusesItsMapping) {
  constexpr size_t kSize = size_t{2} << 20;
  ObjectStore store(test_dir(), 64 << 20);
  WarmMappings warm;
  ObjectId first = ObjectId::generate();
  auto r1 = store.reserve(first, kSize);
  auto file = warm.create(r1.path, kSize, r1.reused);
  const uint8_t* mapping = file->data();
  std::memset(file->data(), 1, kSize);
  warm.keep(std::move(file));
  EXPECT_EQ(warm.num_kept(), 1u);
  store.remove(first);  // pooled: renamed, pages kept
  warm.drop_unlinked();
  EXPECT_EQ(warm.num_kept(), 1u) << "a pooled file is still linked";

  // The next object of a similar size gets the pooled file under its own name; this
  // process writes it through the mapping it kept, at the new (smaller) size.
  ObjectId second = ObjectId::generate();
  auto r2 = store.reserve(second, kSize - 4096);
  ASSERT_TRUE(r2.reused);
  auto again = warm.create(r2.path, kSize - 4096, r2.reused);
  EXPECT_EQ(again->data(), mapping) << "the kept mapping was used";
  EXPECT_EQ(again->path(), r2.path);
  EXPECT_EQ(again->size(), kSize - 4096);
  EXPECT_EQ(warm.num_kept(), 0u);
  std::memset(again->data(), 2, again->size());
  warm.keep(std::move(again));
  auto reader = MappedFile::open_read_only(r2.path);
  ASSERT_EQ(reader->size(), kSize - 4096) << "the file was resized to the new object";
  EXPECT_EQ(reader->data()[0], 2);
  EXPECT_EQ(reader->data()[reader->size() - 1], 2);

  // The store never hands a file to an object larger than the file, but a kept mapping
  // shorter than the object asked for is not used.
  std::string grown_path = (test_dir() / "grown").string();
  warm.keep(MappedFile::create(grown_path, kSize));
  const uint8_t* short_mapping = nullptr;
  {
    auto probe = warm.create(grown_path, kSize / 2, /*reuse=*/true);
    short_mapping = probe->data();
    warm.keep(std::move(probe));
  }
  auto grown = warm.create(grown_path, 2 * kSize, /*reuse=*/true);
  EXPECT_NE(grown->data(), short_mapping);
  std::memset(grown->data(), 3, 2 * kSize);
  EXPECT_EQ(MappedFile::open_read_only(grown_path)->data()[2 * kSize - 1], 3);
}

TEST(WarmMappings, KeepsFewLargeMappingsAndDropsThoseOfGoneFiles) {
  WarmMappings warm(/*max_kept=*/2, /*min_bytes=*/8192);
  std::filesystem::create_directories(test_dir());
  auto path = [](int i) { return (test_dir() / ("warm-" + std::to_string(i))).string(); };
  warm.keep(MappedFile::create(path(0), 4096));  // under min_bytes: unmapped at once
  EXPECT_EQ(warm.num_kept(), 0u);
  for (int i = 1; i <= 3; ++i) warm.keep(MappedFile::create(path(i), 16384));
  EXPECT_EQ(warm.num_kept(), 2u) << "the oldest beyond max_kept is dropped";
  ::unlink(path(3).c_str());
  warm.drop_unlinked();
  EXPECT_EQ(warm.num_kept(), 1u);
  warm.keep(MappedFile::open_read_only(path(2)));  // not made by create: nothing to keep
  EXPECT_EQ(warm.num_kept(), 1u);
  std::filesystem::remove_all(test_dir());
}

TEST(WarmMappings, PooledFilesTheStoreDropsAreTruncatedUnderKeptMappings) {
  // Nine freed objects: the store keeps eight pooled files and drops the oldest. A kept
  // mapping of that file must not hold its memory: the store empties the file first.
  ObjectStore store(test_dir(), 64 << 20);
  WarmMappings warm(/*max_kept=*/1, /*min_bytes=*/4096);
  std::vector<ObjectId> ids;
  for (int i = 0; i < 9; ++i) ids.push_back(ObjectId::generate());
  auto r0 = store.reserve(ids[0], 1 << 20);
  auto file = warm.create(r0.path, 1 << 20, false);
  std::memset(file->data(), 9, 1 << 20);
  int watch = ::open(r0.path.c_str(), O_RDONLY | O_CLOEXEC);  // follows the file through renames
  ASSERT_GE(watch, 0);
  warm.keep(std::move(file));
  store.remove(ids[0]);
  for (int i = 1; i < 9; ++i) {
    // Far smaller than the pooled 1 MiB file, so no reserve takes it.
    auto r = store.reserve(ids[i], 4096 * i);
    ASSERT_FALSE(r.reused);
    MappedFile::create(r.path, 4096 * i);
  }
  for (int i = 1; i < 9; ++i) store.remove(ids[i]);
  struct stat st {};
  ASSERT_EQ(::fstat(watch, &st), 0);
  EXPECT_EQ(st.st_nlink, 0u) << "the oldest pooled file was dropped";
  EXPECT_EQ(st.st_size, 0) << "and emptied, though a mapping of it was kept";
  ::close(watch);
  warm.drop_unlinked();
  EXPECT_EQ(warm.num_kept(), 0u);
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
