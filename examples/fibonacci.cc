// Generates one Fibonacci sequence per CPU core, first in the driver one after another,
// then as remote tasks in parallel, and checks that both give the same numbers.
//
//     fibonacci [N]      N numbers per sequence (default 200000)

#include <algorithm>
#include <array>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <iomanip>
#include <iostream>
#include <string_view>
#include <thread>
#include <vector>

#include "gantry/gantry.h"

namespace {

/// The numbers are kept modulo this prime (2^62 - 57), so they never overflow.
constexpr uint64_t kModulus = 4611686018427387847ULL;

uint64_t mul_mod(uint64_t a, uint64_t b) {
  return static_cast<uint64_t>(static_cast<unsigned __int128>(a) * b % kModulus);
}

uint64_t add_mod(uint64_t a, uint64_t b) {
  uint64_t sum = a + b;  // both below 2^62: no overflow
  return sum >= kModulus ? sum - kModulus : sum;
}

using Matrix2 = std::array<uint64_t, 4>;  // row-major [a b; c d]

Matrix2 multiply(const Matrix2& x, const Matrix2& y) {
  return {
      add_mod(mul_mod(x[0], y[0]), mul_mod(x[1], y[2])), add_mod(mul_mod(x[0], y[1]), mul_mod(x[1], y[3])),
      add_mod(mul_mod(x[2], y[0]), mul_mod(x[3], y[2])), add_mod(mul_mod(x[2], y[1]), mul_mod(x[3], y[3]))};
}

/// F(n) mod kModulus, from [1 1; 1 0]^n = [F(n+1) F(n); F(n) F(n-1)].
uint64_t fibonacci_number(uint64_t n) {
  Matrix2 result{1, 0, 0, 1};
  Matrix2 base{1, 1, 1, 0};
  for (; n != 0; n >>= 1) {
    if ((n & 1) != 0) result = multiply(result, base);
    base = multiply(base, base);
  }
  return result[1];
}

}  // namespace

/// The first `n` Fibonacci numbers modulo kModulus. Each number is computed from scratch
/// by matrix powers instead of by the two-term recurrence: that makes a sequence
/// CPU-bound work (about 0.2 s for 200000 numbers) worth spreading over cores.
std::vector<int64_t> fibonacci_sequence(int n) {
  std::vector<int64_t> sequence(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) sequence[i] = static_cast<int64_t>(fibonacci_number(static_cast<uint64_t>(i)));
  return sequence;
}

GANTRY_REMOTE(fibonacci_sequence);

namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

/// True when every number is the sum of the two before it (mod kModulus).
bool follows_recurrence(const std::vector<int64_t>& s) {
  if (s.size() > 0 && s[0] != 0) return false;
  if (s.size() > 1 && s[1] != 1) return false;
  for (size_t i = 2; i < s.size(); ++i) {
    if (static_cast<uint64_t>(s[i]) !=
        add_mod(static_cast<uint64_t>(s[i - 1]), static_cast<uint64_t>(s[i - 2])))
      return false;
  }
  return true;
}

int run(int argc, char** argv) {
  int n = 200000;
  if (argc > 2 || (argc == 2 && (std::strcmp(argv[1], "-h") == 0 || std::strcmp(argv[1], "--help") == 0))) {
    std::cerr << "usage: fibonacci [N]   (N numbers per sequence, default 200000)\n";
    return 2;
  }
  if (argc == 2) {
    std::string_view text = argv[1];
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
    if (ec != std::errc() || end != text.data() + text.size() || n < 1 || n > 50'000'000) {
      std::cerr << "fibonacci: N must be a whole number from 1 to 50000000, not '" << text << "'\n";
      return 2;
    }
  }
  unsigned cpu_count = std::max(1U, std::thread::hardware_concurrency());
  std::cout << std::fixed << std::setprecision(3);
  std::cout << "fibonacci: " << cpu_count << " sequences of " << n
            << " numbers (mod 2^62-57, each by matrix powers)\n";

  auto start = std::chrono::steady_clock::now();
  std::vector<std::vector<int64_t>> local;
  for (unsigned i = 0; i < cpu_count; ++i) local.push_back(fibonacci_sequence(n));
  double local_seconds = seconds_since(start);
  std::cout << "  local,  one after another:  " << local_seconds << " s\n";

  // The first tasks start worker processes; time that apart so the comparison is fair.
  start = std::chrono::steady_clock::now();
  std::vector<gantry::ObjectRef<std::vector<int64_t>>> warm_up;
  for (unsigned i = 0; i < cpu_count; ++i) warm_up.push_back(gantry::task(fibonacci_sequence).remote(1));
  gantry::get(warm_up);
  double start_up_seconds = seconds_since(start);

  start = std::chrono::steady_clock::now();
  std::vector<gantry::ObjectRef<std::vector<int64_t>>> refs;
  for (unsigned i = 0; i < cpu_count; ++i) refs.push_back(gantry::task(fibonacci_sequence).remote(n));
  std::vector<std::vector<int64_t>> remote = gantry::get(refs);
  double remote_seconds = seconds_since(start);
  std::cout << "  remote, " << cpu_count << " tasks in parallel: " << remote_seconds << " s  ("
            << std::setprecision(1) << local_seconds / remote_seconds
            << "x as fast; starting the workers took " << std::setprecision(3) << start_up_seconds
            << " s before that)\n";

  bool recurrence_ok = follows_recurrence(local[0]);
  bool equal = remote == local;
  std::cout << "  local sequence follows F(i) = F(i-1) + F(i-2): " << (recurrence_ok ? "yes" : "NO") << "\n"
            << "  remote results equal local: " << (equal ? "yes" : "NO") << "\n";
  return recurrence_ok && equal ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  gantry::init(argc, argv);  // in a worker process this serves tasks and never returns
  int status = 1;
  try {
    status = run(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "fibonacci: " << e.what() << "\n";
  }
  gantry::shutdown();
  return status;
}
