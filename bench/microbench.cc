// Microbenchmarks of gantry's task, actor and object paths, named as the figures of Ray's
// `ray microbenchmark`, printed next to the machine's own floors (a Unix-socket round trip
// between two processes and memcpy bandwidth) measured in the same run.
//
//     gantry_microbench                        # every figure, ~1.5 s each
//     gantry_microbench --quick                # ~0.3 s each (the smoke test)
//     gantry_microbench --only single_client_tasks_sync,single_client_put_calls
//     gantry_microbench --dashboard-load       # each figure in alternating 200 ms slices
//                                              # without and with the embedded dashboard
//                                              # polled every 100 ms (64 pairs per --seconds)
//
// Output: one `name value unit` line per figure; lines starting with '#' are comments
// (header, targets, reference numbers). Speed never fails the run: the exit status is
// non-zero only when a figure throws (1) or the command line is wrong (2).

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iomanip>
#include <iostream>
#include <iterator>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "dashboard_poller.h"
#include "gantry/gantry.h"

extern char** environ;

namespace {

// ---------------------------------------------------------------------------------------
// Remote functions and the actor. Every process (driver, workers, the cold-start child)
// registers them during static initialisation.

/// The smallest task. Returns 1 so a caller can check that every task it counted ran.
int no_op() { return 1; }

/// A client for multi_client_tasks_async: runs inside a worker, submits `n` no-op tasks
/// (nested submission) and returns how many of them ran.
int64_t client_batch(int n) {
  std::vector<gantry::ObjectRef<int>> refs;
  refs.reserve(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) refs.push_back(gantry::task(no_op).remote());
  int64_t ran = 0;
  for (const auto& ref : refs) ran += ref.get();
  return ran;
}

/// An actor that counts the calls it has served.
struct Sink {
  static Sink* create() { return new Sink(); }
  /// Returns 1 so a caller can check that every call it counted ran.
  int call() {
    ++calls_;
    return 1;
  }
  /// Calls served so far.
  int value() const { return calls_; }

 private:
  int calls_ = 0;
};

/// A client for n_n_actor_calls_async: runs inside a worker, makes `n` calls on `actor`
/// and returns how many of them ran.
int64_t call_actor(gantry::ActorHandle<Sink> actor, int n) {
  std::vector<gantry::ObjectRef<int>> refs;
  refs.reserve(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) refs.push_back(actor.task(&Sink::call).remote());
  int64_t ran = 0;
  for (const auto& ref : refs) ran += ref.get();
  return ran;
}

GANTRY_REMOTE(no_op, client_batch, call_actor);
GANTRY_REMOTE(Sink::create, &Sink::call, &Sink::value);

// ---------------------------------------------------------------------------------------
// Settings and the command line.

constexpr double kDefaultSeconds = 1.5;
constexpr double kQuickSeconds = 0.3;
constexpr int kColdStartRuns = 3;

/// Tasks per batch in single_client_tasks_async and per client in multi_client_tasks_async.
/// Ray uses 1,000 for the former; a smaller batch keeps --quick short on a slow runtime.
constexpr int kTaskBatch = 1000;
/// Actor calls per batch (1_1 and 1_n) and per client task (n_n).
constexpr int kCallBatch = 1000;
/// Operations between two clock reads in the cheap figures, so reading the clock stays
/// out of the figure.
constexpr int kOpsPerStep = 64;
/// Bytes per put in single_client_put_gigabytes and per copy in memcpy_gigabytes_per_s.
constexpr size_t kBigBytes = size_t{256} << 20;
/// kBigBytes for people, e.g. "256 MiB".
std::string big_size() { return std::to_string(kBigBytes >> 20) + " MiB"; }
/// Bytes each way in one unix_socket_round_trips_per_s round trip.
constexpr size_t kMessageBytes = 64;
/// How long a cold-start child may take before it is killed and the figure fails.
constexpr std::chrono::seconds kColdStartTimeout{120};

constexpr std::string_view kColdStartChildFlag = "--cold-start-child";
constexpr std::string_view kRayReference =
    "# Ray publishes 952, 7,691, 1,950, 7,956, 5,238 and 10,394 per second for the first six "
    "figures on a 64-core machine";

/// A command line this program cannot run; main prints it with the usage and exits 2.
class UsageError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

struct Interleaving;

struct Settings {
  /// Measured wall time of each figure, after its warm-up.
  double seconds = kDefaultSeconds;
  /// Children started for cold_start_ms; the median is reported.
  int cold_start_runs = kColdStartRuns;
  /// Figures to run; empty runs them all.
  std::vector<std::string> only;
  bool help = false;
  /// Internal: this process is the child that cold_start_ms starts.
  bool cold_start_child = false;
  /// Measure each gantry figure in alternating slices without and with the embedded
  /// dashboard polled every 100 ms, and print both.
  bool dashboard_load = false;
  /// Set while a figure is measured under --dashboard-load: its timed part runs as
  /// interleaved slices instead (see run_for).
  Interleaving* interleaving = nullptr;
};

constexpr std::string_view kDashboardLoadFlag = "--dashboard-load";
constexpr auto kDashboardPollPeriod = std::chrono::milliseconds(100);
/// Under --dashboard-load a figure's timed part runs as pairs of slices this long, one
/// polled and one not. This machine's sync figures swing by a factor of two or three
/// over a few hundred milliseconds with nothing else running; short slices, each paired
/// with its neighbour, cancel most of that. (From a 2-minute trace of 1_1_actor_calls_sync
/// with no polling: the median of 36 s worth of pairs varied by 7.5% with 1.5 s slices,
/// 2.8% with 0.25 s slices.) A polled slice still gets a request every kDashboardPollPeriod,
/// and the dashboard's gathering, kept for 1-2 s, falls in the polled slices only.
constexpr double kDashboardSlice = 0.2;
/// Pairs per second of --seconds: 96 for the default 1.5 s, about 40 s per figure.
constexpr double kDashboardPairsPerSecond = 64;
constexpr int kDashboardMinPairs = 8;
/// The figure --dashboard-load measures once more with only the login page polled.
constexpr std::string_view kHttpBaselineFigure = "single_client_tasks_sync";

double parse_seconds(std::string_view text) {
  std::string s(text);
  char* end = nullptr;
  errno = 0;
  double v = std::strtod(s.c_str(), &end);
  if (s.empty() || end != s.c_str() + s.size() || errno != 0 || !std::isfinite(v) || v <= 0 ||
      v > 3600)
    throw UsageError("--seconds wants a number of seconds in (0, 3600], not '" + s + "'");
  return v;
}

std::vector<std::string> split_names(std::string_view list) {
  std::vector<std::string> names;
  while (!list.empty()) {
    size_t comma = list.find(',');
    std::string_view name = list.substr(0, comma);
    if (!name.empty()) names.emplace_back(name);
    list = comma == std::string_view::npos ? std::string_view() : list.substr(comma + 1);
  }
  if (names.empty()) throw UsageError("--only wants one or more figure names, comma-separated");
  return names;
}

/// Reads the flags. Call after gantry::init: worker processes run main too and never get
/// past init, so only the driver parses them.
Settings parse_flags(int argc, char** argv) {
  Settings settings;
  std::optional<double> seconds;
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    std::string_view name = arg;
    std::optional<std::string_view> inline_value;
    if (size_t eq = arg.find('='); arg.starts_with("--") && eq != std::string_view::npos) {
      name = arg.substr(0, eq);
      inline_value = arg.substr(eq + 1);
    }
    auto take_value = [&]() -> std::string_view {
      if (inline_value) return *inline_value;
      if (i + 1 >= argc) throw UsageError(std::string(name) + " needs a value");
      return argv[++i];
    };
    if (name == "--seconds") {
      seconds = parse_seconds(take_value());
    } else if (name == "--only") {
      settings.only = split_names(take_value());
    } else if (arg == "--quick") {
      quick = true;
    } else if (arg == "--help" || arg == "-h") {
      settings.help = true;
    } else if (arg == kColdStartChildFlag) {
      settings.cold_start_child = true;
    } else if (arg == kDashboardLoadFlag) {
      settings.dashboard_load = true;
    } else {
      throw UsageError("unknown argument '" + std::string(arg) + "'");
    }
  }
  // An explicit --seconds wins over --quick, whatever their order.
  settings.seconds = seconds.value_or(quick ? kQuickSeconds : kDefaultSeconds);
  if (quick) settings.cold_start_runs = 1;
  return settings;
}

int machine_cores() {
  unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
}

// ---------------------------------------------------------------------------------------
// Timing.

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

/// Operations done over wall-clock seconds.
struct Measurement {
  double operations = 0;
  double seconds = 0;
  double rate() const { return operations / seconds; }
};

/// For --dashboard-load: a figure's timed part split into `pairs` pairs of back-to-back
/// slices of `slice_seconds`, one with the dashboard polled and one without (which comes
/// first alternates), each slice's rate kept. Splitting one measurement, rather than
/// measuring the figure twice over, keeps its set-up (the worker its tasks land on, its
/// actors' processes) the same on both sides of every pair.
struct Interleaving {
  DashboardPoller* poller = nullptr;
  int pairs = 0;
  double slice_seconds = 0;
  std::vector<double> plain, polled;  // operations per second, one per slice, pair by pair
  Measurement total;                  // over every slice
};

/// Runs `step` until `seconds` have passed and it has run at least `min_steps` times.
Measurement run_timed(double seconds, int min_steps, const std::function<double()>& step) {
  Measurement m;
  int steps = 0;
  Clock::time_point start = Clock::now();
  do {
    m.operations += step();
    ++steps;
    m.seconds = seconds_since(start);
  } while (m.seconds < seconds || steps < min_steps);
  return m;
}

/// Runs `step`, which does some operations and returns how many: first to warm up (at
/// least once, and for a fifth of `settings.seconds`), then, timed, until that many
/// seconds have passed and it has run at least `min_steps` times. Under
/// `settings.interleaving`, the timed part is that interleaving's slices instead.
Measurement run_for(const Settings& settings, int min_steps, const std::function<double()>& step) {
  Clock::time_point warm_up_start = Clock::now();
  do {
    step();
  } while (seconds_since(warm_up_start) < settings.seconds / 5);
  if (!settings.interleaving) return run_timed(settings.seconds, min_steps, step);

  Interleaving& slices = *settings.interleaving;
  for (int pair = 0; pair < slices.pairs; ++pair) {
    for (int half = 0; half < 2; ++half) {
      bool polled = (half == 0) == (pair % 2 == 1);
      slices.poller->set_polling(polled);
      Measurement slice = run_timed(slices.slice_seconds, min_steps, step);
      (polled ? slices.polled : slices.plain).push_back(slice.rate());
      slices.total.operations += slice.operations;
      slices.total.seconds += slice.seconds;
    }
  }
  slices.poller->set_polling(false);
  return slices.total;
}

/// Keeps the compiler from dropping stores to `p` that this program never reads back.
void keep_memory(void* p) { asm volatile("" : : "r"(p) : "memory"); }

[[noreturn]] void throw_errno(const std::string& what) {
  throw std::system_error(errno, std::generic_category(), what);
}

/// Owns a file descriptor and closes it.
class FileDescriptor {
 public:
  explicit FileDescriptor(int fd = -1) : fd_(fd) {}
  ~FileDescriptor() { reset(); }
  FileDescriptor(const FileDescriptor&) = delete;
  FileDescriptor& operator=(const FileDescriptor&) = delete;

  int get() const { return fd_; }
  void reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_;
};

/// Waits for child `pid`, retrying when a signal interrupts; returns its wait status.
int wait_for_child(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) throw_errno("waitpid");
  }
  return status;
}

std::string describe_wait_status(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return "was killed by signal " + std::to_string(WTERMSIG(status));
  return "ended with wait status " + std::to_string(status);
}

// ---------------------------------------------------------------------------------------
// Figures.

/// A figure's value, in its unit, and comment lines printed under it.
struct Result {
  double value = 0;
  std::vector<std::string> notes;
};

/// What a figure should reach: a fixed bound, or a fraction of a floor measured in the
/// same run.
struct Target {
  enum class Bound { kAtLeast, kAtMost };
  Bound bound = Bound::kAtLeast;
  double value = 0;
  /// When set, the bound is `fraction` times this floor figure's value instead of `value`.
  std::string floor;
  double fraction = 0;
  /// How the fraction reads, e.g. "half of".
  std::string fraction_words;
};

struct Figure {
  std::string name;
  std::string unit;
  bool is_floor = false;
  std::optional<Target> target;
  std::function<Result(const Settings&)> measure;
};

// Machine floors. Both children of this process below only make system calls: it is
// multi-threaded once gantry::init has run, and after fork only async-signal-safe calls
// are allowed.

/// Sends or receives exactly kMessageBytes; false when the peer is gone or on an error.
bool send_message(int fd, const char* data) {
  size_t done = 0;
  while (done < kMessageBytes) {
    ssize_t n = ::send(fd, data + done, kMessageBytes - done, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}
bool receive_message(int fd, char* data) {
  size_t done = 0;
  while (done < kMessageBytes) {
    ssize_t n = ::recv(fd, data + done, kMessageBytes - done, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

/// The forked echo process: returns every message until the parent closes its end.
[[noreturn]] void echo_until_closed(int fd) {
  char message[kMessageBytes];
  while (receive_message(fd, message) && send_message(fd, message)) {
  }
  ::_exit(0);
}

Result measure_unix_socket_round_trips(const Settings& settings) {
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) throw_errno("socketpair");
  FileDescriptor parent_end(fds[0]);
  FileDescriptor child_end(fds[1]);
  pid_t pid = ::fork();
  if (pid < 0) throw_errno("fork");
  if (pid == 0) {
    ::close(fds[0]);
    echo_until_closed(fds[1]);
  }
  child_end.reset();

  char message[kMessageBytes];
  std::memset(message, 'g', sizeof message);
  Measurement m;
  try {
    m = run_for(settings, 1, [&] {
      for (int i = 0; i < kOpsPerStep; ++i) {
        if (!send_message(parent_end.get(), message) || !receive_message(parent_end.get(), message))
          throw std::runtime_error("the echo process stopped answering");
      }
      return double{kOpsPerStep};
    });
  } catch (...) {
    parent_end.reset();  // the echo process exits when it sees the end of the stream
    wait_for_child(pid);
    throw;
  }
  parent_end.reset();
  int status = wait_for_child(pid);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    throw std::runtime_error("the echo process " + describe_wait_status(status));
  return {m.rate(),
          {"64-byte messages over socketpair(AF_UNIX, SOCK_STREAM) to a forked echo process"}};
}

Result measure_memcpy(const Settings& settings) {
  auto source = std::make_unique_for_overwrite<uint8_t[]>(kBigBytes);
  auto destination = std::make_unique_for_overwrite<uint8_t[]>(kBigBytes);
  // Touch every page of both first, so the figure is copying, not page faults.
  std::memset(source.get(), 0x5a, kBigBytes);
  std::memset(destination.get(), 0xa5, kBigBytes);
  Measurement m = run_for(settings, 3, [&] {
    std::memcpy(destination.get(), source.get(), kBigBytes);
    keep_memory(destination.get());
    return static_cast<double>(kBigBytes);
  });
  return {m.rate() / 1e9,
          {big_size() + " copies between two buffers whose pages are already touched"}};
}

// Tasks.

/// Client tasks block in get() while their nested tasks run. They ask for no CPU, as
/// Ray's client actors hold none, so that on a small machine they cannot take every CPU
/// and starve the tasks they wait for.
gantry::TaskOptions client_task_options() {
  gantry::TaskOptions options;
  options.num_cpus = 0;
  return options;
}

void expect_count(const char* what, int64_t got, int64_t expected) {
  if (got != expected)
    throw std::runtime_error(std::string(what) + " reported " + std::to_string(got) +
                             " completed calls, expected " + std::to_string(expected));
}

Result measure_tasks_sync(const Settings& settings) {
  Measurement m = run_for(settings, 1, [] {
    expect_count("no_op", gantry::task(no_op).remote().get(), 1);
    return 1.0;
  });
  return {m.rate(), {"one no-op task submitted and got at a time"}};
}

Result measure_tasks_async(const Settings& settings) {
  Measurement m = run_for(settings, 1, [] {
    std::vector<gantry::ObjectRef<int>> refs;
    refs.reserve(kTaskBatch);
    for (int i = 0; i < kTaskBatch; ++i) refs.push_back(gantry::task(no_op).remote());
    int64_t ran = 0;
    for (const auto& ref : refs) ran += ref.get();
    expect_count("a batch of no_op tasks", ran, kTaskBatch);
    return double{kTaskBatch};
  });
  return {
      m.rate(),
      {"batches of " + std::to_string(kTaskBatch) + " no-op tasks, all submitted, then all got"}};
}

Result measure_multi_client_tasks(const Settings& settings) {
  const int clients = std::clamp(machine_cores(), 2, 4);
  Measurement m = run_for(settings, 1, [clients] {
    std::vector<gantry::ObjectRef<int64_t>> refs;
    refs.reserve(static_cast<size_t>(clients));
    for (int i = 0; i < clients; ++i)
      refs.push_back(gantry::task(client_batch).options(client_task_options()).remote(kTaskBatch));
    for (const auto& ref : refs) expect_count("client_batch", ref.get(), kTaskBatch);
    return static_cast<double>(clients) * kTaskBatch;
  });
  return {m.rate(),
          {std::to_string(clients) + " client tasks at once, each submitting " +
           std::to_string(kTaskBatch) + " no-op tasks from its worker and getting them"}};
}

// Actors.

/// Sink actors started for one figure, with the calls each has been sent, so the figure
/// can check every call arrived. Kills the actors when destroyed. Not thread-safe.
class SinkGroup {
 public:
  /// Starts `n` sinks and waits until each has answered a call.
  explicit SinkGroup(int n) {
    for (int i = 0; i < n; ++i) actors_.push_back(gantry::actor(Sink::create).remote());
    sent_.assign(actors_.size(), 0);
    verify_calls();
  }
  ~SinkGroup() {
    for (const auto& actor : actors_) {
      try {
        gantry::kill(actor);
      } catch (const std::exception& e) {
        std::cerr << "gantry_microbench: could not kill a Sink actor: " << e.what() << "\n";
      }
    }
  }
  SinkGroup(const SinkGroup&) = delete;
  SinkGroup& operator=(const SinkGroup&) = delete;

  size_t size() const { return actors_.size(); }
  const gantry::ActorHandle<Sink>& operator[](size_t i) const { return actors_[i]; }
  /// Notes that `calls` more calls were sent to actor `i`.
  void record_calls(size_t i, int64_t calls) { sent_[i] += calls; }

  /// Asks every actor how many calls it served and throws unless it is what was sent.
  void verify_calls() const {
    std::vector<gantry::ObjectRef<int>> served;
    served.reserve(actors_.size());
    for (const auto& actor : actors_) served.push_back(actor.task(&Sink::value).remote());
    for (size_t i = 0; i < actors_.size(); ++i)
      expect_count("a Sink actor", served[i].get(), sent_[i]);
  }

 private:
  std::vector<gantry::ActorHandle<Sink>> actors_;
  std::vector<int64_t> sent_;  // calls sent to actors_[i]
};

/// Sends a batch of `kCallBatch` calls spread round-robin over `sinks`, then gets them all.
double call_batch_round_robin(SinkGroup& sinks) {
  std::vector<gantry::ObjectRef<int>> refs;
  refs.reserve(kCallBatch);
  for (int i = 0; i < kCallBatch; ++i) {
    size_t which = static_cast<size_t>(i) % sinks.size();
    refs.push_back(sinks[which].task(&Sink::call).remote());
    sinks.record_calls(which, 1);
  }
  int64_t ran = 0;
  for (const auto& ref : refs) ran += ref.get();
  expect_count("a batch of Sink::call", ran, kCallBatch);
  return double{kCallBatch};
}

Result measure_actor_calls_sync(const Settings& settings) {
  SinkGroup sinks(1);
  Measurement m = run_for(settings, 1, [&] {
    expect_count("Sink::call", sinks[0].task(&Sink::call).remote().get(), 1);
    sinks.record_calls(0, 1);
    return 1.0;
  });
  sinks.verify_calls();
  return {m.rate(), {"one call to one actor submitted and got at a time"}};
}

Result measure_actor_calls_async(const Settings& settings) {
  SinkGroup sinks(1);
  Measurement m = run_for(settings, 1, [&] { return call_batch_round_robin(sinks); });
  sinks.verify_calls();
  return {
      m.rate(),
      {"batches of " + std::to_string(kCallBatch) + " calls to one actor, all sent, then all got"}};
}

int actors_for_n() { return std::max(2, machine_cores() / 2); }

Result measure_1_n_actor_calls(const Settings& settings) {
  SinkGroup sinks(actors_for_n());
  Measurement m = run_for(settings, 1, [&] { return call_batch_round_robin(sinks); });
  sinks.verify_calls();
  return {m.rate(),
          {"the driver sends batches of " + std::to_string(kCallBatch) + " calls round-robin to " +
           std::to_string(sinks.size()) + " actors"}};
}

Result measure_n_n_actor_calls(const Settings& settings) {
  SinkGroup sinks(actors_for_n());
  Measurement m = run_for(settings, 1, [&] {
    std::vector<gantry::ObjectRef<int64_t>> refs;
    refs.reserve(sinks.size());
    for (size_t i = 0; i < sinks.size(); ++i) {
      refs.push_back(
          gantry::task(call_actor).options(client_task_options()).remote(sinks[i], kCallBatch));
      sinks.record_calls(i, kCallBatch);
    }
    for (const auto& ref : refs) expect_count("call_actor", ref.get(), kCallBatch);
    return static_cast<double>(sinks.size()) * kCallBatch;
  });
  sinks.verify_calls();
  return {m.rate(),
          {std::to_string(sinks.size()) +
           " client tasks at once, each given its own actor's handle, making " +
           std::to_string(kCallBatch) + " calls on it"}};
}

Result measure_actor_creations(const Settings& settings) {
  const int per_round = std::max(4, machine_cores() / 2);
  Measurement m = run_for(settings, 1, [per_round] {
    std::vector<gantry::ActorHandle<Sink>> actors;
    actors.reserve(static_cast<size_t>(per_round));
    for (int i = 0; i < per_round; ++i) actors.push_back(gantry::actor(Sink::create).remote());
    std::vector<gantry::ObjectRef<int>> up;
    up.reserve(actors.size());
    for (const auto& actor : actors) up.push_back(actor.task(&Sink::value).remote());
    for (const auto& ref : up) expect_count("a new Sink actor", ref.get(), 0);
    for (const auto& actor : actors) gantry::kill(actor);
    return static_cast<double>(per_round);
  });
  return {m.rate(),
          {"rounds of " + std::to_string(per_round) +
           " actors: created, one call each answered, then killed"}};
}

// Objects.

Result measure_put_calls(const Settings& settings) {
  Measurement m = run_for(settings, 1, [] {
    for (int i = 0; i < kOpsPerStep; ++i) gantry::put(i);  // the reference is dropped at once
    return double{kOpsPerStep};
  });
  return {m.rate(), {"put of a small int, its reference dropped straight away"}};
}

Result measure_get_calls(const Settings& settings) {
  gantry::ObjectRef<int> ref = gantry::put(1);
  Measurement m = run_for(settings, 1, [&ref] {
    int64_t sum = 0;
    for (int i = 0; i < kOpsPerStep; ++i) sum += ref.get();
    expect_count("get of a put 1", sum, kOpsPerStep);
    return double{kOpsPerStep};
  });
  return {m.rate(), {"get of the same small put object"}};
}

Result measure_put_gigabytes(const Settings& settings) {
  std::vector<uint8_t> big(kBigBytes);
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<uint8_t>(i * 131 + (i >> 20));
  {
    // Check once that the value round-trips, so the figure measures real puts.
    gantry::ObjectRef<std::vector<uint8_t>> ref = gantry::put(big);
    if (ref.get() != big) throw std::runtime_error("a " + big_size() + " put came back different");
  }
  Measurement m = run_for(settings, 3, [&big] {
    // The reference goes at the end of the step, before the next put, so the store
    // never holds more than one of these.
    gantry::ObjectRef<std::vector<uint8_t>> ref = gantry::put(big);
    return static_cast<double>(big.size());
  });
  return {m.rate() / 1e9,
          {"puts of a " + big_size() + " std::vector<uint8_t>, each dropped before the next"}};
}

// Cold start: this executable started again as a fresh driver.

/// One run of a cold-start child, as seen from the parent.
struct ColdStartRun {
  /// What the child measured: from the top of its main, through init, to one task's result.
  double reported_ms = 0;
  /// From posix_spawn to the child's exit, shutdown included.
  double whole_process_ms = 0;
  /// Something the child started still held its stdout open a while after it exited.
  bool output_outlived_child = false;
};

/// Runs in the cold-start child, after gantry::init returned: one trivial task, then
/// the elapsed time since the top of main on stdout.
int run_as_cold_start_child(Clock::time_point process_start) {
  expect_count("no_op", gantry::task(no_op).remote().get(), 1);
  double ms = seconds_since(process_start) * 1e3;
  std::cout << "cold_start_ms " << std::fixed << std::setprecision(3) << ms << std::endl;
  gantry::shutdown();
  return 0;
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  size_t n = values.size();
  return n % 2 == 1 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

/// `message`, followed by what the child printed when it printed anything.
std::string with_child_output(std::string message, std::string output) {
  while (!output.empty() && output.back() == '\n') output.pop_back();
  if (!output.empty()) message += "; it printed:\n" + output;
  return message;
}

/// Starts /proc/self/exe with kColdStartChildFlag, collects its stdout and waits for it.
/// Other lines the child prints go to stderr.
ColdStartRun run_cold_start_child(const char* argv0) {
  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) != 0) throw_errno("pipe2");
  FileDescriptor read_end(pipe_fds[0]);
  FileDescriptor write_end(pipe_fds[1]);

  posix_spawn_file_actions_t actions;
  if (int rc = ::posix_spawn_file_actions_init(&actions); rc != 0)
    throw std::system_error(rc, std::generic_category(), "posix_spawn_file_actions_init");
  ::posix_spawn_file_actions_adddup2(&actions, write_end.get(), STDOUT_FILENO);
  std::string arg0 = argv0;
  std::string arg1(kColdStartChildFlag);
  char* child_argv[] = {arg0.data(), arg1.data(), nullptr};
  pid_t pid = 0;
  Clock::time_point start = Clock::now();
  int rc = ::posix_spawn(&pid, "/proc/self/exe", &actions, nullptr, child_argv, environ);
  ::posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) throw std::system_error(rc, std::generic_category(), "posix_spawn /proc/self/exe");
  write_end.reset();

  // Read until the child exits. Its workers or daemons may hold the pipe a little
  // longer; wait for end-of-file only for a grace period after that.
  constexpr double kGraceSeconds = 2.0;
  std::string output;
  bool end_of_output = false;
  std::optional<Clock::time_point> exited_at;
  int status = 0;
  while (true) {
    pollfd p{end_of_output ? -1 : read_end.get(), POLLIN, 0};
    int ready = ::poll(&p, 1, 20);
    if (ready < 0 && errno != EINTR) throw_errno("poll");
    if (ready > 0) {
      char buffer[4096];
      ssize_t n = ::read(read_end.get(), buffer, sizeof buffer);
      if (n > 0) {
        output.append(buffer, static_cast<size_t>(n));
      } else if (n == 0 || errno != EINTR) {
        end_of_output = true;
      }
    }
    if (!exited_at) {
      pid_t done = ::waitpid(pid, &status, WNOHANG);
      if (done < 0 && errno != EINTR) throw_errno("waitpid");
      if (done == pid) exited_at = Clock::now();
    }
    if (exited_at && (end_of_output || seconds_since(*exited_at) > kGraceSeconds)) break;
    if (!exited_at && seconds_since(start) > kColdStartTimeout.count()) {
      ::kill(pid, SIGKILL);
      wait_for_child(pid);
      std::string what = "the cold-start child did not finish within " +
                         std::to_string(kColdStartTimeout.count()) + " s";
      throw std::runtime_error(with_child_output(std::move(what), output));
    }
  }

  ColdStartRun run;
  run.whole_process_ms = std::chrono::duration<double, std::milli>(*exited_at - start).count();
  run.output_outlived_child = !end_of_output;
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    throw std::runtime_error(
        with_child_output("the cold-start child " + describe_wait_status(status), output));

  std::optional<double> reported;
  std::istringstream lines(output);
  for (std::string line; std::getline(lines, line);) {
    constexpr std::string_view kMarker = "cold_start_ms ";
    if (line.starts_with(kMarker)) {
      std::string number = line.substr(kMarker.size());
      char* end = nullptr;
      double v = std::strtod(number.c_str(), &end);
      if (end != number.c_str() && std::isfinite(v)) reported = v;
    } else {
      std::cerr << "[cold-start child] " << line << "\n";
    }
  }
  if (!reported)
    throw std::runtime_error(
        with_child_output("the cold-start child printed no cold_start_ms line", output));
  run.reported_ms = *reported;
  return run;
}

Result measure_cold_start(const Settings& settings, const char* argv0) {
  std::vector<double> reported;
  std::vector<double> whole;
  bool outlived = false;
  for (int i = 0; i < settings.cold_start_runs; ++i) {
    ColdStartRun run = run_cold_start_child(argv0);
    reported.push_back(run.reported_ms);
    whole.push_back(run.whole_process_ms);
    outlived = outlived || run.output_outlived_child;
  }
  std::ostringstream whole_note;
  whole_note << std::fixed << std::setprecision(1) << "median of " << settings.cold_start_runs
             << (settings.cold_start_runs == 1 ? " fresh driver" : " fresh drivers")
             << ", top of main to one task's result; spawn to exit, shutdown included: "
             << median(whole) << " ms";
  Result result{median(reported), {whole_note.str()}};
  if (outlived)
    result.notes.push_back(
        "note: a process the child started kept its stdout open more than 2 s after "
        "the child exited (a worker outliving gantry::shutdown?)");
  return result;
}

// ---------------------------------------------------------------------------------------
// The table, selection and report.

constexpr std::string_view kSocketFloor = "unix_socket_round_trips_per_s";
constexpr std::string_view kMemcpyFloor = "memcpy_gigabytes_per_s";

Target at_least(double value) { return {Target::Bound::kAtLeast, value, "", 0, ""}; }
Target at_most(double value) { return {Target::Bound::kAtMost, value, "", 0, ""}; }
Target half_of(std::string_view floor) {
  return {Target::Bound::kAtLeast, 0, std::string(floor), 0.5, "half of"};
}

/// Every figure, floors first, in the order they are printed.
std::vector<Figure> all_figures(const char* argv0) {
  const std::string rate = "per_s";
  return {
      {std::string(kSocketFloor), rate, true, std::nullopt, measure_unix_socket_round_trips},
      {std::string(kMemcpyFloor), "GB_per_s", true, std::nullopt, measure_memcpy},
      {"single_client_tasks_sync", rate, false, half_of(kSocketFloor), measure_tasks_sync},
      {"single_client_tasks_async", rate, false, at_least(50'000), measure_tasks_async},
      {"multi_client_tasks_async", rate, false, at_least(50'000), measure_multi_client_tasks},
      {"1_1_actor_calls_sync", rate, false, half_of(kSocketFloor), measure_actor_calls_sync},
      {"1_1_actor_calls_async", rate, false, at_least(100'000), measure_actor_calls_async},
      {"1_n_actor_calls_async", rate, false, at_least(100'000), measure_1_n_actor_calls},
      {"n_n_actor_calls_async", rate, false, at_least(100'000), measure_n_n_actor_calls},
      {"single_client_put_calls", rate, false, at_least(100'000), measure_put_calls},
      {"single_client_get_calls", rate, false, at_least(100'000), measure_get_calls},
      {"single_client_put_gigabytes", "GB_per_s", false, half_of(kMemcpyFloor),
       measure_put_gigabytes},
      {"actor_creations_per_s", rate, false, std::nullopt, measure_actor_creations},
      {"cold_start_ms", "ms", false, at_most(200),
       [argv0](const Settings& s) { return measure_cold_start(s, argv0); }},
  };
}

/// The figures `only` names (all when empty), plus the floors their targets refer to.
std::vector<Figure> select_figures(std::vector<Figure> figures,
                                   const std::vector<std::string>& only) {
  if (only.empty()) return figures;
  std::vector<std::string> wanted = only;
  for (const std::string& name : only) {
    auto it = std::find_if(figures.begin(), figures.end(),
                           [&](const Figure& f) { return f.name == name; });
    if (it == figures.end()) {
      throw UsageError("--only names an unknown figure '" + name +
                       "' (the figures are listed below)");
    }
    if (it->target && !it->target->floor.empty()) wanted.push_back(it->target->floor);
  }
  std::erase_if(figures, [&](const Figure& f) {
    return std::find(wanted.begin(), wanted.end(), f.name) == wanted.end();
  });
  return figures;
}

std::string format_value(double value, const std::string& unit) {
  std::ostringstream out;
  out << std::fixed << std::setprecision(unit == "GB_per_s" ? 2 : 1) << value;
  return out.str();
}

/// The comment line under a figure that says what it should reach and whether it did.
std::string describe_target(const Target& target, const std::string& unit, double value,
                            const std::map<std::string, double>& floors) {
  std::string op = target.bound == Target::Bound::kAtLeast ? ">=" : "<=";
  double bound = target.value;
  std::string source;
  if (!target.floor.empty()) {
    auto floor = floors.find(target.floor);
    if (floor == floors.end())
      return "#   target: " + op + " " + target.fraction_words + " " + target.floor +
             " (floor not measured)";
    bound = target.fraction * floor->second;
    source = " (" + target.fraction_words + " " + target.floor + ")";
  }
  bool met = target.bound == Target::Bound::kAtLeast ? value >= bound : value <= bound;
  return "#   target: " + op + " " + format_value(bound, unit) + " " + unit + source + ": " +
         (met ? "met" : "not met");
}

/// Measures `figure` once, its timed part split into pairs of kDashboardSlice slices, one
/// slice of each pair with the embedded dashboard polled and one without (see
/// Interleaving). This machine's speed drifts by tens of percent within a second, so the
/// change is the median of the pairs' ratios, each pair measured back to back in the same
/// set-up, rather than a ratio of separate averages; its 95% interval (from the order
/// statistics, which assume nothing of the ratios' distribution) says how far to trust it.
/// `paths` are what the poller asks in turn; `polled_suffix` names the polled figure.
void measure_under_dashboard_load(const Figure& figure, const Settings& settings,
                                  const std::vector<std::string>& paths = DashboardPoller::kViews,
                                  const std::string& polled_suffix = "_dashboard_polled") {
  DashboardPoller poller(gantry::dashboard_login_url(), kDashboardPollPeriod, paths);
  poller.start(/*polling=*/false);
  const int pairs = std::max(kDashboardMinPairs, static_cast<int>(settings.seconds * kDashboardPairsPerSecond));
  Interleaving slices{&poller, pairs, kDashboardSlice, {}, {}, {}};
  Settings interleaved = settings;
  interleaved.interleaving = &slices;
  Result result = figure.measure(interleaved);
  long requests = poller.stop();
  long failures = poller.failures();
  // The figure's value is its rate over every slice in its unit: slices' rates convert by
  // the same factor (GB/s figures count bytes).
  double unit_per_rate = slices.total.rate() > 0 ? result.value / slices.total.rate() : 1;
  std::vector<double> without, with, ratios;
  for (size_t i = 0; i < slices.plain.size() && i < slices.polled.size(); ++i) {
    without.push_back(slices.plain[i] * unit_per_rate);
    with.push_back(slices.polled[i] * unit_per_rate);
    ratios.push_back(slices.polled[i] / slices.plain[i]);
  }
  if (ratios.empty()) throw std::runtime_error("the figure's timed part ran no slices");
  bool higher_is_better = figure.unit != "ms";
  // A pair's loss in percent (positive: worse with the dashboard polled).
  auto loss_of = [&](double ratio) { return (higher_is_better ? 1 - ratio : ratio - 1) * 100; };
  double loss = loss_of(median(ratios));
  std::vector<double> sorted = ratios;
  std::sort(sorted.begin(), sorted.end());
  // The median lies between these order statistics with 95% confidence (binomial, normal
  // approximation): ranks n/2 -/+ 1.96 sqrt(n)/2.
  const double n = static_cast<double>(sorted.size());
  auto at_rank = [&](double rank) { return sorted[static_cast<size_t>(std::clamp(rank, 0.0, n - 1))]; };
  double interval_a = loss_of(at_rank(std::floor(n / 2 - 0.98 * std::sqrt(n))));
  double interval_b = loss_of(at_rank(std::ceil(n / 2 + 0.98 * std::sqrt(n))));
  int worse_pairs = 0;
  for (double r : ratios) worse_pairs += loss_of(r) > 0;
  auto words = [](double l) {
    std::ostringstream w;
    w << std::fixed << std::setprecision(1) << (l >= 0 ? l : -l) << "% " << (l >= 0 ? "worse" : "better");
    return w.str();
  };
  std::cout << figure.name << ' ' << format_value(median(without), figure.unit) << ' ' << figure.unit << '\n'
            << figure.name << polled_suffix << ' ' << format_value(median(with), figure.unit) << ' ' << figure.unit
            << '\n'
            << "#   " << ratios.size() << " pairs of back-to-back slices of " << static_cast<int>(kDashboardSlice * 1000)
            << " ms or more, of one run (medians shown), the dashboard polled every " << kDashboardPollPeriod.count()
            << " ms in one slice of each (" << requests << " requests, " << failures << " failed; answered in "
            << std::fixed << std::setprecision(1) << poller.median_ms() << " ms median, " << poller.max_ms()
            << " ms at most)\n"
            << "#   median pair " << words(loss) << (paths == DashboardPoller::kViews ? " (target: under 5% worse)" : "")
            << "; 95% interval "
            << words(std::min(interval_a, interval_b)) << " to " << words(std::max(interval_a, interval_b)) << "; "
            << worse_pairs << " of " << ratios.size() << " pairs worse\n";
  // A dashboard that fails to answer under load is a fault, not a speed figure.
  if (failures > 0)
    throw std::runtime_error(std::to_string(failures) + " of " + std::to_string(requests) +
                             " dashboard requests failed while the figure ran (the first are on stderr)");
}

/// CPU seconds (user and system) used so far by this process, whose threads include the
/// embedded head, agent and dashboard, and by each of its live children (the workers),
/// by pid: from /proc/PID/stat.
std::map<pid_t, double> cluster_cpu_seconds() {
  auto cpu_of = [](const std::string& stat_path, pid_t* parent) -> double {
    std::ifstream in(stat_path);
    std::string line;
    if (!std::getline(in, line)) return -1;
    size_t close = line.rfind(')');  // the command name may hold spaces and parentheses
    if (close == std::string::npos) return -1;
    std::istringstream fields(line.substr(close + 2));
    std::vector<std::string> f{std::istream_iterator<std::string>(fields), std::istream_iterator<std::string>()};
    if (f.size() < 13) return -1;  // f[0] is field 3 (state): ppid is f[1], utime f[11], stime f[12]
    *parent = static_cast<pid_t>(std::stol(f[1]));
    return static_cast<double>(std::stoull(f[11]) + std::stoull(f[12])) / static_cast<double>(::sysconf(_SC_CLK_TCK));
  };
  const pid_t self = ::getpid();
  pid_t parent = 0;
  std::map<pid_t, double> out{{self, cpu_of("/proc/self/stat", &parent)}};
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const std::string name = entry.path().filename().string();
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
    double cpu = cpu_of(entry.path().string() + "/stat", &parent);
    if (cpu >= 0 && parent == self) out[static_cast<pid_t>(std::stol(name))] = cpu;  // else gone, or not ours
  }
  return out;
}

/// CPU used between two readings by the processes alive at the second (a child that
/// started between them counts from zero; one that exited is left out).
double cpu_used(const std::map<pid_t, double>& before, const std::map<pid_t, double>& after) {
  double used = 0;
  for (const auto& [pid, cpu] : after) {
    auto was = before.find(pid);
    used += cpu - (was != before.end() ? was->second : 0.0);
  }
  return used;
}

/// What watching costs, without the noise of a throughput figure: the CPU the embedded
/// cluster (this process and its workers, four of them hosting idle actors the dashboard
/// lists and asks) uses in alternating blocks without and with the dashboard polled as in
/// the figures above. The polling client's own thread is left out, as a browser's would be.
void measure_dashboard_cpu() {
  constexpr int kBlocks = 4;
  constexpr auto kBlock = std::chrono::seconds(3);
  SinkGroup sinks(4);
  double plain = 0, polled = 0;
  long requests = 0;
  size_t processes = 0;
  for (int block = 0; block < 2 * kBlocks; ++block) {
    bool poll = block % 2 == 1;
    std::optional<DashboardPoller> poller;
    if (poll) poller.emplace(gantry::dashboard_login_url(), kDashboardPollPeriod);
    auto before = cluster_cpu_seconds();
    if (poller) poller->start();
    std::this_thread::sleep_for(kBlock);
    if (poller) requests += poller->stop();
    auto after = cluster_cpu_seconds();
    processes = after.size();
    // The client's own CPU is a browser's, not the cluster's: left out.
    (poll ? polled : plain) += cpu_used(before, after) - (poller ? poller->cpu_seconds() : 0.0);
  }
  double seconds = std::chrono::duration<double>(kBlock).count() * kBlocks;
  double cost_ms_per_s = std::max(0.0, polled - plain) / seconds * 1000;
  std::cout << "dashboard_polled_cpu_ms_per_s " << std::fixed << std::setprecision(2) << cost_ms_per_s << " ms_per_s\n"
            << "#   CPU the embedded cluster (this process and its " << processes - 1
            << " workers, 4 hosting idle actors; the polling client left out) used more per second while polled: " << cost_ms_per_s / 10
            << "% of one core; " << requests << " requests, " << std::setprecision(3)
            << (requests ? (polled - plain) * 1000 / requests : 0.0) << " ms each; unpolled it used "
            << std::setprecision(2) << plain / seconds * 1000 << " ms per s\n";
}

/// Runs and prints `figures`; returns the exit status (1 when any figure threw).
int run_figures(const std::vector<Figure>& figures, const Settings& settings) {
  std::cout << "# gantry microbenchmarks (" << machine_cores() << " cores)\n"
            << "# each figure: a warm-up, then " << settings.seconds
            << " s or more of repeated work; rate = operations / elapsed seconds\n";
  std::map<std::string, double> floors;
  int status = 0;
  bool floor_section_started = false;
  bool gantry_section_started = false;
  for (const Figure& figure : figures) {
    if (figure.is_floor && !floor_section_started) {
      std::cout << "# machine floors\n";
      floor_section_started = true;
    }
    if (!figure.is_floor && !gantry_section_started) {
      std::cout << "# gantry, with the names of Ray's microbenchmark figures\n"
                << kRayReference << "\n";
      gantry_section_started = true;
    }
    std::cout.flush();
    try {
      if (settings.dashboard_load && !figure.is_floor && figure.name != "cold_start_ms") {
        measure_under_dashboard_load(figure, settings);
        continue;
      }
      Result result = figure.measure(settings);
      if (figure.is_floor) floors[figure.name] = result.value;
      std::cout << figure.name << ' ' << format_value(result.value, figure.unit) << ' '
                << figure.unit << '\n';
      for (const std::string& note : result.notes) std::cout << "#   " << note << '\n';
      if (figure.target)
        std::cout << describe_target(*figure.target, figure.unit, result.value, floors) << '\n';
    } catch (const std::exception& e) {
      // Keep every line of a multi-line message a comment.
      std::string message = e.what();
      for (size_t at = message.find('\n'); at != std::string::npos; at = message.find('\n', at + 1))
        message.replace(at, 1, "\n#   ");
      std::cout << "# " << figure.name << " FAILED: " << message << '\n';
      std::cerr << "gantry_microbench: " << figure.name << " failed: " << e.what() << '\n';
      status = 1;
    }
    std::cout.flush();
  }
  if (settings.dashboard_load) {
    // What any HTTP client asking this often costs the most sensitive figure on this
    // machine, whatever it asks: the same measurement with the login page (a fixed answer,
    // no gathering) asked instead of the views.
    for (const Figure& figure : figures) {
      if (figure.name != kHttpBaselineFigure) continue;
      std::cout << "# baseline: " << figure.name << " again, polling only /login (a fixed page: no gathering)\n";
      try {
        measure_under_dashboard_load(figure, settings, {"/login"}, "_login_page_polled");
      } catch (const std::exception& e) {
        std::cout << "# " << figure.name << " with /login polled FAILED: " << e.what() << '\n';
        status = 1;
      }
    }
    measure_dashboard_cpu();
  }
  return status;
}

void print_usage(std::ostream& out, const char* argv0) {
  out << "usage: " << argv0 << " [--seconds S] [--quick] [--dashboard-load] [--only NAME[,NAME...]]\n"
      << "  --seconds S   measure each figure for S seconds after its warm-up (default "
      << kDefaultSeconds << ")\n"
      << "  --quick       " << kQuickSeconds
      << " s per figure and one cold start (for smoke tests)\n"
      << "  --dashboard-load  each figure in alternating " << static_cast<int>(kDashboardSlice * 1000)
      << " ms slices without and with the embedded dashboard\n"
      << "                polled every 100 ms: " << kDashboardPairsPerSecond
      << " pairs per second of --seconds (about 40 s a figure by default)\n"
      << "  --only NAMES  run only these figures (and the floors their targets use):\n";
  for (const Figure& f : all_figures(argv0)) out << "                  " << f.name << '\n';
}

}  // namespace

int main(int argc, char** argv) {
  // Read before init, for cold_start_ms when this process is the cold-start child.
  const Clock::time_point process_start = Clock::now();
  bool dashboard = false;
  for (int i = 1; i < argc; ++i) dashboard |= std::string_view(argv[i]) == kDashboardLoadFlag;
  try {
    // worker processes serve tasks here and never return
    gantry::init(argc, argv, {.dashboard = dashboard, .dashboard_port = 0});
  } catch (const std::exception& e) {
    std::cerr << "gantry_microbench: gantry::init failed: " << e.what() << '\n';
    return 1;
  }

  int status = 0;
  try {
    Settings settings = parse_flags(argc, argv);
    if (settings.help) {
      print_usage(std::cout, argv[0]);
    } else if (settings.cold_start_child) {
      status = run_as_cold_start_child(process_start);
    } else {
      status = run_figures(select_figures(all_figures(argv[0]), settings.only), settings);
    }
  } catch (const UsageError& e) {
    std::cerr << "gantry_microbench: " << e.what() << "\n\n";
    print_usage(std::cerr, argv[0]);
    status = 2;
  } catch (const std::exception& e) {
    std::cerr << "gantry_microbench: " << e.what() << '\n';
    status = 1;
  }
  gantry::shutdown();
  return status;
}
