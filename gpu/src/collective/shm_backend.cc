// The shared-memory backend: ranks on one node meet in one /dev/shm segment.
//
// Rendezvous. Rank 0 creates the segment under a random name and publishes the name in the
// group's store; the others map it, validate it and record their pid and process start
// time in it. Once all ranks have mapped it, it is unlinked, so nothing leaks when
// processes die.
//
// Synchronisation. Collective ops run as a sequence of *steps*, the same on every rank.
// Each rank counts the steps it completed in its `progress` word; "wait until every peer
// reached step s" is the only collective synchronisation. Waiting spins briefly, then
// sleeps on the awaited rank's `bell` futex (bumped on each publish, and by failures),
// at most kLivenessPoll at a time: after each sleep the waiter checks the op deadline,
// whether the group failed, and whether the awaited peer still lives (kill(pid, 0) and
// /proc/PID/stat: not a zombie, same start time, so a reused pid does not count).
// The first failure a rank sees (a peer dead or gone, a timeout, abort()) is posted in the
// segment with its reason, and every waiter of every rank wakes and throws it: a broken
// group fails everywhere within about kLivenessPoll.
//
// Data. Bytes go through fixed-size staging slots, three per rank (the segment stays a
// few MiB per rank whatever the buffer size), in chunks small enough to stay in cache. A
// collective is a pipeline of stages over chunks; step t runs stage d of chunk t - d, and
// every step begins once all peers finished the previous one: one synchronisation per
// chunk, while copy-in, reduction and copy-out of neighbouring chunks overlap in cache.
// allreduce is a pipelined reduce-scatter + allgather: per chunk, each rank copies the
// slices its peers reduce into its slot (stage 0), reduces its own slice from its buffer
// and the peers' slots into its slot (stage 1), and copies every reduced slice out
// (stage 2). Inputs are combined in rank order (half types: float32 accumulation, one
// rounding), so every rank gets bit-identical results. send/recv use a
// two-slot channel per ordered pair of ranks, faulted in only when used.
//
// Measured on a 2-vCPU KVM guest and not used: reading peers' buffers directly with
// process_vm_readv (one copy instead of two) was slower (pinning the pages costs ~4x a
// memcpy); non-temporal stores for the copy-out of large buffers gained nothing (the
// destination lines are still in L3 from stage 0); splitting a rank's reduction with
// tbb::parallel_for cannot help when ranks already occupy every core, as here.

#include "collective/shm_backend.h"

#include <fcntl.h>
#include <linux/futex.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <new>
#include <random>
#include <string>
#include <vector>

#include "collective/reduce_kernels.h"

namespace gantry::collective::detail {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr uint64_t kMagic = 0x316c6f63746e6167;  // "gantcol1"
constexpr uint32_t kVersion = 1;
constexpr size_t kLine = 128;  // two cache lines: the adjacent-line prefetcher shares pairs
constexpr size_t kPage = 4096;
constexpr size_t kReasonBytes = 512;
constexpr int kMaxWorld = 256;
constexpr int kSlots = 3;      // staging slots per rank: one per pipeline stage
constexpr int kPairSlots = 2;  // slots per send/recv channel
constexpr size_t kDefaultSlotBytes = 512 << 10;
constexpr size_t kPairBufferBytes = 4 << 20;  // all channels' payloads together (more past 16 ranks)
// A futex wake-up costs tens of µs on a KVM guest; a peer one pipeline step behind
// arrives within about that. Measured (2 ranks, 2 vCPUs): a 5 µs spin slept ~10x as often
// and made 7.2 MB and 64 MiB allreduces 20-50% slower than 20 µs; 50 µs gained nothing.
constexpr auto kSpin = std::chrono::microseconds(20);
constexpr milliseconds kLivenessPoll(100);
constexpr char kSegmentPrefix[] = "/gantry-col-";
constexpr uint32_t kWorldSizeMismatch = 0xffffffff;  // SegmentHeader::failed without a rank

static_assert(std::atomic<uint32_t>::is_always_lock_free && sizeof(std::atomic<uint32_t>) == 4);
static_assert(std::atomic<uint64_t>::is_always_lock_free && sizeof(std::atomic<uint64_t>) == 8);

// ---- The segment ---------------------------------------------------------------------

struct SegmentHeader {
  std::atomic<uint64_t> magic;  // stored last (release) by the creator
  uint32_t version;
  uint32_t world_size;
  uint64_t segment_bytes;
  uint64_t slot_bytes;                          // one staging slot
  uint64_t pair_payload;                        // one send/recv slot's payload
  alignas(kLine) std::atomic<uint32_t> joined;  // futex: ranks that mapped the segment
  alignas(kLine) std::atomic<uint32_t> failed;  // 0, or 1 + the rank that posted the failure
};

// One rank's words. Only the rank itself writes them, except `bell` (anyone may ring it).
struct RankBlock {
  alignas(kLine) std::atomic<uint64_t> progress;  // collective steps completed
  alignas(kLine) std::atomic<uint32_t> bell;      // futex: bumped when `progress` or a
                                                  // channel counter moves, and on failure
  std::atomic<uint32_t> waiters;                  // ranks about to sleep on `bell`
  alignas(kLine) std::atomic<int32_t> pid;
  std::atomic<uint32_t> left;        // the backend was destroyed
  std::atomic<uint64_t> start_time;  // /proc/PID/stat field 22
  char failure[kReasonBytes];        // written once, before `SegmentHeader::failed` names this rank
};

// The channel from one rank to another.
struct PairBlock {
  alignas(kLine) std::atomic<uint64_t> sent;      // chunks written by the sender
  alignas(kLine) std::atomic<uint64_t> consumed;  // chunks copied out by the receiver
};

// Precedes each send/recv slot's payload.
struct PairSlotHeader {
  uint64_t message_bytes;
  uint64_t chunk_index;
};

size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }
size_t round_down(size_t n, size_t to) { return n / to * to; }

// Where everything lives in the segment; a function of (world size, slot bytes, pair
// payload), which the header records so that joiners can recompute and check it.
struct Layout {
  size_t slot_bytes = 0;   // world * slice_bytes
  size_t slice_bytes = 0;  // one rank's share of a staging slot, whole cache lines
  size_t pair_payload = 0;
  size_t pair_stride = 0;
  size_t rank_offset = 0, pair_block_offset = 0, staging_offset = 0, pair_offset = 0, total = 0;
};

Layout make_layout(int world, size_t slot_bytes, size_t pair_payload) {
  Layout l;
  l.slice_bytes = std::max<size_t>(64, round_down(slot_bytes / world, 64));
  l.slot_bytes = l.slice_bytes * world;
  l.pair_payload = std::max<size_t>(64, round_down(pair_payload, 64));
  l.pair_stride = kLine + l.pair_payload;
  size_t w = world;
  l.rank_offset = round_up(sizeof(SegmentHeader), kPage);
  l.pair_block_offset = l.rank_offset + w * round_up(sizeof(RankBlock), kLine);
  l.staging_offset = round_up(l.pair_block_offset + w * (w - 1) * sizeof(PairBlock), kPage);
  l.pair_offset = l.staging_offset + w * kSlots * l.slot_bytes;
  l.total = round_up(l.pair_offset + w * (w - 1) * kPairSlots * l.pair_stride, kPage);
  return l;
}

size_t default_pair_payload(int world, size_t slot_bytes_option) {
  size_t pairs = static_cast<size_t>(world) * (world - 1);
  size_t bytes = std::clamp<size_t>(round_down(kPairBufferBytes / (pairs * kPairSlots), kPage), 4 << 10, 256 << 10);
  return slot_bytes_option ? std::min(bytes, slot_bytes_option) : bytes;
}

// ---- Futexes and processes --------------------------------------------------------------

long futex(std::atomic<uint32_t>* word, int op, uint32_t value, const timespec* timeout) {
  // Not FUTEX_PRIVATE: the words live in memory shared between processes.
  return syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), op, value, timeout, nullptr, 0);
}

void futex_wait(std::atomic<uint32_t>& word, uint32_t seen, Clock::duration timeout) {
  auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(timeout).count();
  if (ns <= 0) return;
  timespec ts{static_cast<time_t>(ns / 1000000000), static_cast<long>(ns % 1000000000)};
  futex(&word, FUTEX_WAIT, seen, &ts);  // EAGAIN, EINTR, ETIMEDOUT: the caller re-checks
}

void futex_wake_all(std::atomic<uint32_t>& word) { futex(&word, FUTEX_WAKE, INT_MAX, nullptr); }

void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

struct ProcStat {
  char state = '?';
  uint64_t start_time = 0;
};

// Fields 3 (state) and 22 (starttime) of /proc/PID/stat; false when unreadable.
bool read_proc_stat(pid_t pid, ProcStat* out) {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/stat", static_cast<int>(pid));
  int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  char buf[1024];
  ssize_t n = ::read(fd, buf, sizeof buf - 1);
  ::close(fd);
  if (n <= 0) return false;
  buf[n] = '\0';
  const char* p = std::strrchr(buf, ')');  // the command name may hold spaces and ')'
  if (p == nullptr || p[1] != ' ') return false;
  p += 2;
  out->state = *p;
  for (int field = 3; field < 22 && *p; ++p)
    if (*p == ' ') ++field;
  out->start_time = std::strtoull(p, nullptr, 10);
  return true;
}

uint64_t own_start_time() {
  ProcStat stat;
  return read_proc_stat(::getpid(), &stat) ? stat.start_time : 0;
}

// Whether the process that recorded (pid, start_time) still runs.
bool process_alive(pid_t pid, uint64_t start_time) {
  if (pid <= 0) return false;
  if (::kill(pid, 0) != 0 && errno != EPERM) return false;
  ProcStat stat;
  if (!read_proc_stat(pid, &stat)) return errno != ENOENT;   // no /proc: trust kill()
  if (stat.state == 'Z' || stat.state == 'X') return false;  // exited, not yet reaped
  return start_time == 0 || stat.start_time == start_time;
}

std::string random_segment_name() {
  std::random_device rd;
  uint64_t bits = (static_cast<uint64_t>(rd()) << 32) ^ rd();
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(bits));
  return std::string(kSegmentPrefix) + hex;
}

bool valid_segment_name(const std::string& name) {
  size_t prefix = sizeof(kSegmentPrefix) - 1;
  if (name.size() != prefix + 16 || name.compare(0, prefix, kSegmentPrefix) != 0) return false;
  return std::all_of(name.begin() + prefix, name.end(),
                     [](char c) { return std::isxdigit(static_cast<unsigned char>(c)); });
}

std::string errno_text(int err) { return std::strerror(err); }

// An mmap'ed segment; unmaps on destruction.
class Mapping {
 public:
  Mapping() = default;
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() { reset(); }
  void reset(std::byte* base = nullptr, size_t bytes = 0) {
    if (base_ != nullptr) ::munmap(base_, bytes_);
    base_ = base;
    bytes_ = bytes;
  }
  std::byte* base() const { return base_; }

 private:
  std::byte* base_ = nullptr;
  size_t bytes_ = 0;
};

// ---- The backend -------------------------------------------------------------------------

// Ops run on one thread at a time (the communicator's op thread); abort() may run on any
// thread concurrently. State below `// Op state` is touched only by the op thread.
class ShmBackend final : public Backend {
 public:
  ShmBackend(const BackendContext& context, const ShmBackendOptions& options);
  ~ShmBackend() override;

  BackendKind kind() const override { return BackendKind::kSharedMemory; }
  void allreduce(void* data, size_t count, DataType type, ReduceOp op) override;
  void broadcast(void* data, size_t count, DataType type, int root) override;
  void allgather(const void* send, void* recv, size_t count, DataType type) override;
  void reduce_scatter(const void* send, void* recv, size_t count, DataType type, ReduceOp op) override;
  void reduce(void* data, size_t count, DataType type, ReduceOp op, int root) override;
  void barrier() override;
  void send(const void* data, size_t count, DataType type, int to) override;
  void recv(void* data, size_t count, DataType type, int from) override;
  void abort(const std::string& why) override;

 private:
  // Rendezvous.
  void create_segment();
  void open_segment();
  void join_segment();
  void prefault();
  template <typename Done>
  void wait_join_word(std::atomic<uint32_t>& word, Done done, const char* what);

  // Segment access.
  SegmentHeader& header() const { return *reinterpret_cast<SegmentHeader*>(mapping_.base()); }
  RankBlock& rank_block(int r) const {
    return *reinterpret_cast<RankBlock*>(mapping_.base() + layout_.rank_offset +
                                         r * round_up(sizeof(RankBlock), kLine));
  }
  size_t pair_index(int from, int to) const {
    return static_cast<size_t>(from) * (world_ - 1) + (to < from ? to : to - 1);
  }
  PairBlock& pair_block(int from, int to) const {
    return reinterpret_cast<PairBlock*>(mapping_.base() + layout_.pair_block_offset)[pair_index(from, to)];
  }
  std::byte* slot(int r, int k) const {
    return mapping_.base() + layout_.staging_offset + (static_cast<size_t>(r) * kSlots + k) * layout_.slot_bytes;
  }
  std::byte* pair_slot(int from, int to, uint64_t chunk) const {
    return mapping_.base() + layout_.pair_offset +
           (pair_index(from, to) * kPairSlots + chunk % kPairSlots) * layout_.pair_stride;
  }

  // Steps and waiting.
  void begin_op(const char* name);
  void publish();
  void ring(int r);
  void wait_all(uint64_t step);
  template <typename Ready>
  void wait_until(int peer, Ready ready);
  bool check_due(int peer) const;
  template <typename Ready>
  void check_peer(int peer, Ready ready);
  void check_aborted() const;
  [[noreturn]] void fail(const std::string& reason);
  void post_failure(const std::string& reason);
  std::string posted_failure() const;
  std::string rank_text(int r) const;

  // Data paths.
  template <typename Stage>
  void pipeline(size_t chunks, int depth, Stage stage);
  void staged_reduce(std::byte* data, size_t count, DataType type, ReduceOp op, int root);
  void reduce_inputs(void* dst, size_t count, DataType type, ReduceOp op);
  void validate_rank(int r, const char* what) const;

  const std::string group_;
  const int rank_;
  const int world_;
  const std::shared_ptr<Store> store_;
  const milliseconds op_timeout_;
  const ShmBackendOptions options_;

  Mapping mapping_;
  Layout layout_;
  std::string segment_name_;
  std::vector<pid_t> pids_;
  std::vector<uint64_t> start_times_;

  // abort() state, any thread.
  std::atomic<bool> aborted_{false};
  std::mutex failure_mu_;
  std::string abort_why_;        // written once under failure_mu_ before aborted_ is set
  bool failure_posted_ = false;  // guarded by failure_mu_

  // Op state.
  const char* op_name_ = "join";
  Clock::time_point op_start_;
  Clock::time_point deadline_;
  Clock::time_point next_liveness_check_;
  uint64_t step_ = 0;
  uint64_t chunks_started_ = 0;                    // by pipeline(), over all ops: picks slots
  std::array<uint64_t, kSlots> slot_free_step_{};  // all peers past it: my slot k is free
  std::vector<uint64_t> sent_to_;                  // per peer: chunks sent on my channel to it
  std::vector<uint64_t> received_from_;            // per peer: chunks received on its channel to me
  std::vector<const void*> inputs_;                // reduce_many's inputs, rank order
};

ShmBackend::ShmBackend(const BackendContext& context, const ShmBackendOptions& options)
    : group_(context.group),
      rank_(context.rank),
      world_(context.world_size),
      store_(context.store),
      op_timeout_(context.op_timeout),
      options_(options) {
  if (world_ < 1 || world_ > kMaxWorld)
    throw CollectiveError("shm backend of group '" + group_ + "': world size " + std::to_string(world_) +
                          " is not in 1.." + std::to_string(kMaxWorld));
  if (rank_ < 0 || rank_ >= world_)
    throw CollectiveError("shm backend of group '" + group_ + "': rank " + std::to_string(rank_) + " is not in 0.." +
                          std::to_string(world_ - 1));
  if (world_ == 1) return;  // every op is local
  if (!store_) throw CollectiveError("shm backend of group '" + group_ + "': no store to meet in");
  op_start_ = Clock::now();
  deadline_ = op_start_ + op_timeout_;
  if (rank_ == 0)
    create_segment();
  else
    open_segment();
  join_segment();
  sent_to_.assign(world_, 0);
  received_from_.assign(world_, 0);
  inputs_.assign(world_, nullptr);
}

ShmBackend::~ShmBackend() {
  if (mapping_.base() == nullptr) return;
  rank_block(rank_).left.store(1, std::memory_order_release);
  ring(rank_);
}

std::string ShmBackend::rank_text(int r) const {
  std::string text = "rank " + std::to_string(r);
  if (r >= 0 && r < static_cast<int>(pids_.size()) && pids_[r] > 0) text += " (pid " + std::to_string(pids_[r]) + ")";
  return text;
}

void ShmBackend::create_segment() {
  Layout layout = make_layout(world_, options_.slot_bytes ? options_.slot_bytes : kDefaultSlotBytes,
                              default_pair_payload(world_, options_.slot_bytes));
  int fd = -1;
  for (int attempt = 0; attempt < 8 && fd < 0; ++attempt) {
    segment_name_ = random_segment_name();
    fd = ::shm_open(segment_name_.c_str(), O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
    if (fd < 0 && errno != EEXIST)
      throw CollectiveError("rank 0 of group '" + group_ + "': cannot create shared memory segment " + segment_name_ +
                            ": " + errno_text(errno));
  }
  if (fd < 0) throw CollectiveError("rank 0 of group '" + group_ + "': no free shared memory segment name");
  if (::ftruncate(fd, static_cast<off_t>(layout.total)) != 0) {
    int err = errno;
    ::close(fd);
    ::shm_unlink(segment_name_.c_str());
    throw CollectiveError("rank 0 of group '" + group_ + "': cannot size shared memory segment " + segment_name_ +
                          " to " + std::to_string(layout.total) + " bytes: " + errno_text(err));
  }
  void* base = ::mmap(nullptr, layout.total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  int err = errno;
  ::close(fd);
  if (base == MAP_FAILED) {
    ::shm_unlink(segment_name_.c_str());
    throw CollectiveError("rank 0 of group '" + group_ + "': cannot map shared memory segment " + segment_name_ + ": " +
                          errno_text(err));
  }
  mapping_.reset(static_cast<std::byte*>(base), layout.total);
  layout_ = layout;
  prefault();
  // The file is zero-filled; construct the shared words in place before anyone sees them.
  auto* h = new (mapping_.base()) SegmentHeader{};
  for (int r = 0; r < world_; ++r) new (&rank_block(r)) RankBlock{};
  for (int from = 0; from < world_; ++from)
    for (int to = 0; to < world_; ++to)
      if (from != to) new (&pair_block(from, to)) PairBlock{};
  h->version = kVersion;
  h->world_size = static_cast<uint32_t>(world_);
  h->segment_bytes = layout.total;
  h->slot_bytes = layout.slot_bytes;
  h->pair_payload = layout.pair_payload;
  h->magic.store(kMagic, std::memory_order_release);
  try {
    store_->set(kShmSegmentKey, segment_name_);
  } catch (const std::exception& e) {
    ::shm_unlink(segment_name_.c_str());
    throw CollectiveError("rank 0 of group '" + group_ + "': cannot publish the segment name: " + e.what());
  }
}

void ShmBackend::open_segment() {
  std::string who = "rank " + std::to_string(rank_) + " of group '" + group_ + "'";
  try {
    auto left = std::chrono::duration_cast<milliseconds>(deadline_ - Clock::now());
    segment_name_ = store_->get(kShmSegmentKey, std::max(left, milliseconds(1)));
  } catch (const std::exception& e) {
    throw CollectiveError(who + ": rank 0 published no shared memory segment within " +
                          std::to_string(op_timeout_.count()) + " ms: " + e.what());
  }
  if (!valid_segment_name(segment_name_))
    throw CollectiveError(who + ": the store names '" + segment_name_ +
                          "' as the segment, which is not a gantry segment name");
  int fd = ::shm_open(segment_name_.c_str(), O_RDWR | O_CLOEXEC, 0);
  if (fd < 0)
    throw CollectiveError(who + ": cannot open shared memory segment " + segment_name_ + ": " + errno_text(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || static_cast<size_t>(st.st_size) < sizeof(SegmentHeader)) {
    ::close(fd);
    throw CollectiveError(who + ": shared memory segment " + segment_name_ + " is too small (" +
                          std::to_string(st.st_size) + " bytes) to be a gantry segment");
  }
  size_t size = static_cast<size_t>(st.st_size);
  void* base = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  int err = errno;
  ::close(fd);
  if (base == MAP_FAILED)
    throw CollectiveError(who + ": cannot map shared memory segment " + segment_name_ + ": " + errno_text(err));
  mapping_.reset(static_cast<std::byte*>(base), size);
  const SegmentHeader& h = header();
  if (h.magic.load(std::memory_order_acquire) != kMagic || h.version != kVersion)
    throw CollectiveError(who + ": shared memory segment " + segment_name_ + " is not a version " +
                          std::to_string(kVersion) + " gantry collective segment");
  if (h.world_size != static_cast<uint32_t>(world_)) {
    // The ranks already waiting in join cannot tell which side is wrong: fail them all.
    uint32_t none = 0;
    header().failed.compare_exchange_strong(none, kWorldSizeMismatch, std::memory_order_acq_rel);
    futex_wake_all(header().joined);
    throw CollectiveError(who + " has world size " + std::to_string(world_) + " but rank 0 created the group with " +
                          std::to_string(h.world_size));
  }
  Layout layout = make_layout(world_, h.slot_bytes, h.pair_payload);
  if (layout.slot_bytes != h.slot_bytes || layout.pair_payload != h.pair_payload || layout.total != h.segment_bytes ||
      layout.total != size)
    throw CollectiveError(who + ": shared memory segment " + segment_name_ + " is " + std::to_string(size) +
                          " bytes, which does not match its header (expected " + std::to_string(layout.total) + ")");
  layout_ = layout;
  prefault();
}

// Faults in the control words and staging slots now rather than inside the first op; the
// send/recv channels (w * (w - 1) of them) fault in when first used.
void ShmBackend::prefault() {
#ifdef MADV_POPULATE_WRITE
  ::madvise(mapping_.base(), layout_.pair_offset, MADV_POPULATE_WRITE);  // best effort (Linux >= 5.14)
#endif
}

template <typename Done>
void ShmBackend::wait_join_word(std::atomic<uint32_t>& word, Done done, const char* what) {
  for (;;) {
    uint32_t seen = word.load(std::memory_order_acquire);
    if (done(seen)) return;
    std::string failure = posted_failure();
    if (!failure.empty())
      throw CollectiveError("rank " + std::to_string(rank_) + " of group '" + group_ + "' cannot join: " + failure);
    for (int r = 0; r < world_; ++r) {
      RankBlock& b = rank_block(r);
      pid_t pid = b.pid.load(std::memory_order_acquire);
      if (r == rank_ || pid == 0) continue;
      if (b.left.load(std::memory_order_acquire) != 0 ||
          !process_alive(pid, b.start_time.load(std::memory_order_acquire)))
        fail("rank " + std::to_string(r) + " (pid " + std::to_string(pid) + ") of group '" + group_ +
             "' exited during join (seen by rank " + std::to_string(rank_) + ")");
    }
    auto now = Clock::now();
    if (now >= deadline_) {
      std::string missing;
      for (int r = 0; r < world_; ++r)
        if (rank_block(r).pid.load(std::memory_order_acquire) == 0)
          missing += (missing.empty() ? "" : ", ") + std::to_string(r);
      fail("group '" + group_ + "': join timed out after " + std::to_string(op_timeout_.count()) + " ms on rank " +
           std::to_string(rank_) + " waiting for " + what +
           (missing.empty() ? "" : " (missing ranks: " + missing + ")"));
    }
    futex_wait(word, seen, std::min<Clock::duration>(kLivenessPoll, deadline_ - now));
  }
}

void ShmBackend::join_segment() {
  RankBlock& me = rank_block(rank_);
  int32_t no_pid = 0;
  if (!me.pid.compare_exchange_strong(no_pid, static_cast<int32_t>(::getpid()), std::memory_order_acq_rel)) {
    mapping_.reset();
    throw CollectiveError("rank " + std::to_string(rank_) + " of group '" + group_ +
                          "' joined twice (the first is pid " + std::to_string(no_pid) + ")");
  }
  me.start_time.store(own_start_time(), std::memory_order_release);
  SegmentHeader& h = header();
  h.joined.fetch_add(1, std::memory_order_acq_rel);
  futex_wake_all(h.joined);
  try {
    wait_join_word(
        h.joined, [&](uint32_t n) { return n >= static_cast<uint32_t>(world_); }, "every rank to map the segment");
  } catch (...) {
    if (rank_ == 0) ::shm_unlink(segment_name_.c_str());
    throw;
  }
  // Everyone has it mapped: the name is no longer needed (several ranks may race here).
  ::shm_unlink(segment_name_.c_str());
  pids_.resize(world_);
  start_times_.resize(world_);
  for (int r = 0; r < world_; ++r) {
    pids_[r] = rank_block(r).pid.load(std::memory_order_acquire);
    start_times_[r] = rank_block(r).start_time.load(std::memory_order_acquire);
  }
}

// ---- Failures --------------------------------------------------------------------------

std::string ShmBackend::posted_failure() const {
  uint32_t by = header().failed.load(std::memory_order_acquire);
  if (by == 0) return {};
  if (by == kWorldSizeMismatch) return "a rank joined group '" + group_ + "' with another world size";
  if (by > static_cast<uint32_t>(world_)) return "group '" + group_ + "' failed (no reason recorded)";
  const char* text = rank_block(static_cast<int>(by) - 1).failure;
  return std::string(text, strnlen(text, kReasonBytes));
}

void ShmBackend::post_failure(const std::string& reason) {
  if (mapping_.base() == nullptr) return;
  std::lock_guard<std::mutex> lock(failure_mu_);
  if (failure_posted_) return;
  failure_posted_ = true;
  RankBlock& me = rank_block(rank_);
  size_t n = std::min(reason.size(), kReasonBytes - 1);
  std::memcpy(me.failure, reason.data(), n);
  me.failure[n] = '\0';
  uint32_t none = 0;
  header().failed.compare_exchange_strong(none, static_cast<uint32_t>(rank_ + 1), std::memory_order_acq_rel);
  for (int r = 0; r < world_; ++r) {
    rank_block(r).bell.fetch_add(1, std::memory_order_seq_cst);
    futex_wake_all(rank_block(r).bell);
  }
}

void ShmBackend::fail(const std::string& reason) {
  post_failure(reason);
  throw CollectiveError(reason);
}

void ShmBackend::abort(const std::string& why) {
  {
    std::lock_guard<std::mutex> lock(failure_mu_);
    if (aborted_.load(std::memory_order_relaxed)) return;
    abort_why_ = why;
    aborted_.store(true, std::memory_order_release);
  }
  post_failure("rank " + std::to_string(rank_) + " of group '" + group_ + "' aborted: " + why);
}

void ShmBackend::check_aborted() const {
  if (aborted_.load(std::memory_order_acquire))
    throw CollectiveError(std::string(op_name_) + " on rank " + std::to_string(rank_) + " of group '" + group_ +
                          "' aborted: " + abort_why_);
  if (mapping_.base() == nullptr) return;
  std::string failure = posted_failure();
  if (!failure.empty())
    throw CollectiveError(std::string(op_name_) + " on rank " + std::to_string(rank_) + " of group '" + group_ +
                          "' failed: " + failure);
}

// Whether something other than the awaited peer's progress needs a look: a failure, the
// peer gone, the deadline or the next liveness check due.
bool ShmBackend::check_due(int peer) const {
  return aborted_.load(std::memory_order_acquire) || header().failed.load(std::memory_order_acquire) != 0 ||
         rank_block(peer).left.load(std::memory_order_acquire) != 0 ||
         Clock::now() >= std::min(deadline_, next_liveness_check_);
}

// Throws if the group failed, `peer` is gone (and `ready` still false) or the op is past
// its deadline; otherwise schedules the next liveness check.
template <typename Ready>
void ShmBackend::check_peer(int peer, Ready ready) {
  check_aborted();
  std::string during = std::string(" during ") + op_name_ + " (seen by rank " + std::to_string(rank_) + ")";
  if (rank_block(peer).left.load(std::memory_order_acquire) != 0 && !ready())
    fail(rank_text(peer) + " of group '" + group_ + "' left the group (its communicator was destroyed)" + during);
  auto now = Clock::now();
  if (now >= next_liveness_check_) {
    if (!process_alive(pids_[peer], start_times_[peer]) && !ready())
      fail(rank_text(peer) + " of group '" + group_ + "' exited" + during);
    next_liveness_check_ = now + kLivenessPoll;
  }
  if (now >= deadline_ && !ready())
    fail(std::string(op_name_) + " on rank " + std::to_string(rank_) + " of group '" + group_ + "' timed out after " +
         std::to_string(op_timeout_.count()) + " ms waiting for " + rank_text(peer));
}

template <typename Ready>
void ShmBackend::wait_until(int peer, Ready ready) {
  if (ready()) return;
  // Ranks usually arrive within microseconds of each other: a short spin saves the
  // futex round trip (and the wake-up latency of a sleeping vCPU).
  auto spin_end = Clock::now() + kSpin;
  for (unsigned i = 1;; ++i) {
    cpu_relax();
    if (ready()) return;
    if (i % 16 == 0 && Clock::now() >= spin_end) break;
  }
  RankBlock& b = rank_block(peer);
  for (;;) {
    // Announce the sleep before reading the bell; a publisher rings after moving its
    // counter and wakes only if it sees waiters (both seq_cst: no lost wake-up).
    b.waiters.fetch_add(1, std::memory_order_seq_cst);
    uint32_t seen = b.bell.load(std::memory_order_seq_cst);
    bool done = ready();
    bool due = !done && check_due(peer);
    if (!done && !due) futex_wait(b.bell, seen, std::min(deadline_, next_liveness_check_) - Clock::now());
    b.waiters.fetch_sub(1, std::memory_order_seq_cst);
    if (done || ready()) return;
    if (due || check_due(peer)) check_peer(peer, ready);
  }
}

void ShmBackend::begin_op(const char* name) {
  op_name_ = name;
  check_aborted();
  op_start_ = Clock::now();
  deadline_ = op_start_ + op_timeout_;
  next_liveness_check_ = op_start_ + kLivenessPoll;
}

void ShmBackend::ring(int r) {
  RankBlock& b = rank_block(r);
  b.bell.fetch_add(1, std::memory_order_seq_cst);
  if (b.waiters.load(std::memory_order_seq_cst) != 0) futex_wake_all(b.bell);
}

void ShmBackend::publish() {
  ++step_;
  rank_block(rank_).progress.store(step_, std::memory_order_release);
  ring(rank_);
}

void ShmBackend::wait_all(uint64_t step) {
  for (int p = 0; p < world_; ++p) {
    if (p == rank_) continue;
    RankBlock& b = rank_block(p);
    wait_until(p, [&] { return b.progress.load(std::memory_order_acquire) >= step; });
  }
}

void ShmBackend::validate_rank(int r, const char* what) const {
  if (r < 0 || r >= world_)
    throw CollectiveError(std::string(op_name_) + " on rank " + std::to_string(rank_) + " of group '" + group_ +
                          "': " + what + " " + std::to_string(r) + " is not a rank of the group (world size " +
                          std::to_string(world_) + ")");
}

// ---- Pipeline ----------------------------------------------------------------------------

// Runs `chunks` chunks through `depth` stages, one step per iteration: step t runs stage d
// of chunk t - d for every d. Before each step, every peer has finished the previous
// one, so a stage may read anything the peers wrote in earlier stages of the same chunk:
// one synchronisation per chunk. Chunk c of the op uses my staging slot (first + c) %
// kSlots; a slot is free again once every peer has finished the step that ran its last
// stage, which kSlots >= depth guarantees for the slot a step fills.
template <typename Stage>
void ShmBackend::pipeline(size_t chunks, int depth, Stage stage) {
  const uint64_t first = chunks_started_;
  for (size_t t = 0; t + 1 < chunks + depth; ++t) {
    uint64_t need = t == 0 ? 0 : step_;
    if (t < chunks) need = std::max(need, slot_free_step_[(first + t) % kSlots]);
    wait_all(need);
    check_aborted();
    for (int d = depth - 1; d >= 0; --d)
      if (t >= static_cast<size_t>(d) && t - d < chunks) stage(d, t - d, static_cast<int>((first + t - d) % kSlots));
    publish();
    if (t + 1 >= static_cast<size_t>(depth)) slot_free_step_[(first + t + 1 - depth) % kSlots] = step_;
  }
  chunks_started_ += chunks;
}

// allreduce (root < 0) or reduce to `root`. Chunks hold world * slice elements (the last
// fewer), split evenly among the ranks; rank r owns slice r. Stage 0: copy the slices the
// peers own into my slot. Stage 1: reduce my slice (my buffer and the peers' slots, rank
// order) into my slot's own slice. Stage 2: copy every reduced slice out (allreduce: every
// rank; reduce: the root).
void ShmBackend::staged_reduce(std::byte* data, size_t count, DataType type, ReduceOp op, int root) {
  const size_t es = element_size(type);
  const size_t slice = layout_.slice_bytes;
  const size_t chunk = slice / es * world_;
  pipeline((count + chunk - 1) / chunk, 3, [&](int stage, size_t c, int k) {
    const size_t base = c * chunk;
    const size_t n = std::min(chunk, count - base);
    auto lo = [&](int p) { return base + n * p / world_; };
    auto len = [&](int p) { return lo(p + 1) - lo(p); };
    if (stage == 0) {
      for (int p = 0; p < world_; ++p)
        if (p != rank_) std::memcpy(slot(rank_, k) + p * slice, data + lo(p) * es, len(p) * es);
    } else if (stage == 1) {
      for (int p = 0; p < world_; ++p)
        inputs_[p] = p == rank_ ? static_cast<const void*>(data + lo(rank_) * es) : slot(p, k) + rank_ * slice;
      reduce_inputs(slot(rank_, k) + rank_ * slice, len(rank_), type, op);
    } else if (root < 0 || root == rank_) {
      for (int p = 0; p < world_; ++p) std::memcpy(data + lo(p) * es, slot(p, k) + p * slice, len(p) * es);
    }
  });
}

// dst = the reduction of inputs_ (rank order). Two inputs of a non-half type take
// reduce_pair's single vectorised pass, which gives the same results and measured ~1.5x
// faster in cache than reduce_many's blocked accumulator (7.2 MB allreduce of 2 ranks:
// 0.6 vs 0.75 ms); everything else goes through reduce_many.
void ShmBackend::reduce_inputs(void* dst, size_t count, DataType type, ReduceOp op) {
  if (world_ == 2 && type != DataType::kFloat16 && type != DataType::kBFloat16) {
    reduce_pair(dst, inputs_[0], inputs_[1], count, type, op);
    if (op == ReduceOp::kAvg) divide(dst, count, type, world_);
    return;
  }
  reduce_many(dst, inputs_.data(), world_, count, type, op, world_);
}

// ---- Collective ops ----------------------------------------------------------------------

void ShmBackend::allreduce(void* data, size_t count, DataType type, ReduceOp op) {
  begin_op("allreduce");
  if (world_ == 1 || count == 0) return;  // a world of one: the reduction of one buffer
  staged_reduce(static_cast<std::byte*>(data), count, type, op, -1);
}

void ShmBackend::reduce(void* data, size_t count, DataType type, ReduceOp op, int root) {
  begin_op("reduce");
  validate_rank(root, "root");
  if (world_ == 1 || count == 0) return;
  staged_reduce(static_cast<std::byte*>(data), count, type, op, root);
}

// Stage 0: the root copies a chunk into its slot. Stage 1: the others copy it out.
void ShmBackend::broadcast(void* data, size_t count, DataType type, int root) {
  begin_op("broadcast");
  validate_rank(root, "root");
  const size_t total = count * element_size(type);
  if (world_ == 1 || total == 0) return;
  auto* bytes = static_cast<std::byte*>(data);
  const size_t chunk = layout_.slot_bytes;
  pipeline((total + chunk - 1) / chunk, 2, [&](int stage, size_t c, int k) {
    const size_t off = c * chunk, n = std::min(chunk, total - off);
    if (stage == 0 && rank_ == root) std::memcpy(slot(root, k), bytes + off, n);
    if (stage == 1 && rank_ != root) std::memcpy(bytes + off, slot(root, k), n);
  });
}

// Stage 0: copy a chunk of my block into my slot. Stage 1: copy the peers' out.
void ShmBackend::allgather(const void* send, void* recv, size_t count, DataType type) {
  begin_op("allgather");
  const size_t total = count * element_size(type);
  auto* out = static_cast<std::byte*>(recv);
  const auto* in = static_cast<const std::byte*>(send);
  if (total == 0) return;
  std::byte* own = out + rank_ * total;
  if (own != in) std::memmove(own, in, total);  // `send` may be my block of `recv`
  if (world_ == 1) return;
  const size_t chunk = layout_.slot_bytes;
  pipeline((total + chunk - 1) / chunk, 2, [&](int stage, size_t c, int k) {
    const size_t off = c * chunk, n = std::min(chunk, total - off);
    if (stage == 0) {
      std::memcpy(slot(rank_, k), own + off, n);
    } else {
      for (int p = 0; p < world_; ++p)
        if (p != rank_) std::memcpy(out + p * total + off, slot(p, k), n);
    }
  });
}

// Chunks of slice elements of each block. Stage 0: copy the chunk of each peer's block
// into my slot's slice for that peer. Stage 1: reduce my block's chunk (my `send` and the
// peers' slots, rank order) into `recv`.
void ShmBackend::reduce_scatter(const void* send, void* recv, size_t count, DataType type, ReduceOp op) {
  begin_op("reduce_scatter");
  const size_t es = element_size(type);
  const auto* in = static_cast<const std::byte*>(send);
  auto* out = static_cast<std::byte*>(recv);
  if (count == 0) return;
  if (world_ == 1) {
    if (out != in) std::memmove(out, in, count * es);
    return;
  }
  const size_t slice = layout_.slice_bytes;
  const size_t chunk = slice / es;
  auto block = [&](int p, size_t base) { return in + (static_cast<size_t>(p) * count + base) * es; };
  pipeline((count + chunk - 1) / chunk, 2, [&](int stage, size_t c, int k) {
    const size_t base = c * chunk, n = std::min(chunk, count - base);
    if (stage == 0) {
      for (int p = 0; p < world_; ++p)
        if (p != rank_) std::memcpy(slot(rank_, k) + p * slice, block(p, base), n * es);
    } else {
      for (int p = 0; p < world_; ++p)
        inputs_[p] = p == rank_ ? static_cast<const void*>(block(rank_, base)) : slot(p, k) + rank_ * slice;
      reduce_inputs(out + base * es, n, type, op);
    }
  });
}

void ShmBackend::barrier() {
  begin_op("barrier");
  if (world_ == 1) return;
  publish();
  wait_all(step_);
}

void ShmBackend::send(const void* data, size_t count, DataType type, int to) {
  begin_op("send");
  validate_rank(to, "destination");
  if (to == rank_)
    throw CollectiveError("send on rank " + std::to_string(rank_) + " of group '" + group_ +
                          "': cannot send to itself");
  const size_t total = count * element_size(type);
  const auto* in = static_cast<const std::byte*>(data);
  PairBlock& channel = pair_block(rank_, to);
  const size_t payload = layout_.pair_payload;
  const size_t chunks = std::max<size_t>(1, (total + payload - 1) / payload);  // an empty message is one chunk
  for (size_t i = 0; i < chunks; ++i) {
    const uint64_t index = sent_to_[to];
    wait_until(to, [&] { return channel.consumed.load(std::memory_order_acquire) + kPairSlots > index; });
    std::byte* s = pair_slot(rank_, to, index);
    auto* h = reinterpret_cast<PairSlotHeader*>(s);
    h->message_bytes = total;
    h->chunk_index = i;
    const size_t off = i * payload;
    if (off < total) std::memcpy(s + kLine, in + off, std::min(payload, total - off));
    sent_to_[to] = index + 1;
    channel.sent.store(index + 1, std::memory_order_release);
    ring(rank_);
  }
}

void ShmBackend::recv(void* data, size_t count, DataType type, int from) {
  begin_op("recv");
  validate_rank(from, "source");
  if (from == rank_)
    throw CollectiveError("recv on rank " + std::to_string(rank_) + " of group '" + group_ +
                          "': cannot receive from itself");
  const size_t total = count * element_size(type);
  auto* out = static_cast<std::byte*>(data);
  PairBlock& channel = pair_block(from, rank_);
  const size_t payload = layout_.pair_payload;
  const size_t chunks = std::max<size_t>(1, (total + payload - 1) / payload);
  for (size_t i = 0; i < chunks; ++i) {
    const uint64_t index = received_from_[from];
    wait_until(from, [&] { return channel.sent.load(std::memory_order_acquire) > index; });
    const std::byte* s = pair_slot(from, rank_, index);
    const auto* h = reinterpret_cast<const PairSlotHeader*>(s);
    if (h->message_bytes != total || h->chunk_index != i)
      fail("recv on rank " + std::to_string(rank_) + " of group '" + group_ + "' expected " + std::to_string(total) +
           " bytes from rank " + std::to_string(from) + ", which sent a message of " +
           std::to_string(h->message_bytes) + " bytes");
    const size_t off = i * payload;
    if (off < total) std::memcpy(out + off, s + kLine, std::min(payload, total - off));
    received_from_[from] = index + 1;
    channel.consumed.store(index + 1, std::memory_order_release);
    ring(rank_);
  }
}

}  // namespace

std::unique_ptr<Backend> make_shm_backend(const BackendContext& context, const ShmBackendOptions& options) {
  return std::make_unique<ShmBackend>(context, options);
}

std::unique_ptr<Backend> make_shm_backend(const BackendContext& context) {
  return make_shm_backend(context, ShmBackendOptions{});
}

}  // namespace gantry::collective::detail
