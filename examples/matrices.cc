// Chains tasks through ObjectRefs: `multiply` takes the refs `ones` returned, so the
// matrices go from task to task in the cluster and the driver fetches only the product.
//
//     matrices [N]      N x N matrices (default 300)

#include <charconv>
#include <cstring>
#include <iostream>
#include <numeric>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "gantry/gantry.h"

/// A dense row-major matrix. GANTRY_FIELDS makes it travel between processes.
struct Matrix {
  int rows = 0;
  int cols = 0;
  std::vector<double> data;  ///< rows * cols values, row after row

  GANTRY_FIELDS(rows, cols, data);
};

/// An n x n matrix of zeros.
Matrix zeros(int n) { return Matrix{n, n, std::vector<double>(static_cast<size_t>(n) * n, 0.0)}; }

/// An n x n matrix of ones.
Matrix ones(int n) { return Matrix{n, n, std::vector<double>(static_cast<size_t>(n) * n, 1.0)}; }

/// The product a * b; throws std::invalid_argument when a.cols != b.rows.
Matrix multiply(Matrix a, Matrix b) {
  if (a.cols != b.rows) {
    throw std::invalid_argument("cannot multiply a " + std::to_string(a.rows) + "x" + std::to_string(a.cols) +
                                " matrix by a " + std::to_string(b.rows) + "x" + std::to_string(b.cols) +
                                " one");
  }
  Matrix c{a.rows, b.cols, std::vector<double>(static_cast<size_t>(a.rows) * b.cols, 0.0)};
  // i-k-j order walks both b and c along rows, which keeps the inner loop contiguous.
  for (int i = 0; i < a.rows; ++i) {
    for (int k = 0; k < a.cols; ++k) {
      double aik = a.data[static_cast<size_t>(i) * a.cols + k];
      const double* b_row = &b.data[static_cast<size_t>(k) * b.cols];
      double* c_row = &c.data[static_cast<size_t>(i) * c.cols];
      for (int j = 0; j < b.cols; ++j) c_row[j] += aik * b_row[j];
    }
  }
  return c;
}

GANTRY_REMOTE(zeros, ones, multiply);

namespace {

double sum(const Matrix& m) { return std::accumulate(m.data.begin(), m.data.end(), 0.0); }

int run(int argc, char** argv) {
  int n = 300;
  if (argc > 2 || (argc == 2 && (std::strcmp(argv[1], "-h") == 0 || std::strcmp(argv[1], "--help") == 0))) {
    std::cerr << "usage: matrices [N]   (N x N matrices, default 300)\n";
    return 2;
  }
  if (argc == 2) {
    std::string_view text = argv[1];
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
    if (ec != std::errc() || end != text.data() + text.size() || n < 1 || n > 4000) {
      std::cerr << "matrices: N must be a whole number from 1 to 4000, not '" << text << "'\n";
      return 2;
    }
  }

  // Nothing below waits until get(): each call returns a ref at once, and multiply runs
  // when the refs it was given are ready.
  gantry::ObjectRef<Matrix> product =
      gantry::task(multiply).remote(gantry::task(ones).remote(n), gantry::task(ones).remote(n));
  gantry::ObjectRef<Matrix> zero_product =
      gantry::task(multiply).remote(gantry::task(zeros).remote(n), gantry::task(ones).remote(n));

  Matrix result = product.get();
  Matrix zero_result = zero_product.get();

  // Every entry of ones * ones is n, so the sum is n^3 (exact in a double for n <= 4000).
  double expected = static_cast<double>(n) * n * n;
  bool shape_ok = result.rows == n && result.cols == n && zero_result.rows == n && zero_result.cols == n;
  bool ok = shape_ok && sum(result) == expected && sum(zero_result) == 0.0;
  std::cout.precision(15);
  std::cout << "matrices: only the products came back to the driver; the inputs went task to task\n"
            << "  multiply(ones(" << n << "), ones(" << n << ")): " << result.rows << "x" << result.cols
            << ", sum " << sum(result) << " (expected " << expected << ")\n"
            << "  multiply(zeros(" << n << "), ones(" << n << ")): " << zero_result.rows << "x"
            << zero_result.cols << ", sum " << sum(zero_result) << " (expected 0)\n";
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  gantry::init(argc, argv);  // in a worker process this serves tasks and never returns
  int status = 1;
  try {
    status = run(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "matrices: " << e.what() << "\n";
  }
  gantry::shutdown();
  return status;
}
