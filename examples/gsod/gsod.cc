// Two actors each load one year of Global Surface Summary of the Day (GSOD) weather data
// and keep it in memory; the driver finds the stations present in both years and asks
// each actor how many days at those stations reached a temperature threshold.
//
//     gsod                                      generate a small synthetic data set in a
//                                               temporary directory and analyse it
//     gsod --generate DIR                       write DIR/2019.tar.gz and DIR/2020.tar.gz
//     gsod DIR [YEAR1 YEAR2] [--threshold F]    analyse DIR/YEAR1.tar.gz and DIR/YEAR2.tar.gz
//                                               (defaults 2019, 2020 and 80 F)
//
// Real data: https://www.ncei.noaa.gov/data/global-summary-of-the-day/archive/2019.tar.gz
// The actors open the archives themselves, so the files must be readable at the same path
// wherever the actors run (one machine, or a shared file system).

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <iterator>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "gantry/gantry.h"
#include "gsod/gsod_data.h"

/// What an actor reports after loading its year.
struct LoadReport {
  int64_t stations = 0;
  int64_t rows = 0;
  int64_t missing_temps = 0;
  int64_t malformed_lines = 0;
  std::vector<std::string> problems;  ///< the first few, each naming file and line

  GANTRY_FIELDS(stations, rows, missing_temps, malformed_lines, problems);
};

/// Holds one year of GSOD data in its own process, so the data is read once and then
/// queried in place. Not thread-safe, and need not be: an actor runs one method at a time.
class GsodActor {
 public:
  /// The actor factory; nothing is read until load().
  static GsodActor* create(std::string archive_path) { return new GsodActor(std::move(archive_path)); }

  /// Reads the archive into memory and reports what it found. Throws std::runtime_error
  /// naming the archive when it cannot be read (the caller gets a gantry::TaskError).
  LoadReport load() {
    data_ = gsod::read_year_archive(archive_path_);
    return {static_cast<int64_t>(data_->stations.size()), data_->rows, data_->missing_temps,
            data_->malformed_lines, data_->problems};
  }

  /// The ids of the loaded stations, sorted.
  std::vector<std::string> stations() const { return gsod::station_ids(loaded()); }

  /// Readings of these stations with TEMP at or above `threshold_f`; missing ones never count.
  int64_t count_at_or_above(std::vector<std::string> station_ids, double threshold_f) const {
    return gsod::count_at_or_above(loaded(), station_ids, threshold_f);
  }

 private:
  explicit GsodActor(std::string archive_path) : archive_path_(std::move(archive_path)) {}

  const gsod::YearData& loaded() const {
    if (!data_) throw std::logic_error("GsodActor: call load() before querying " + archive_path_);
    return *data_;
  }

  std::string archive_path_;
  std::optional<gsod::YearData> data_;  ///< set by load()
};

GANTRY_REMOTE(GsodActor::create, &GsodActor::load, &GsodActor::stations, &GsodActor::count_at_or_above);

namespace {

namespace fs = std::filesystem;

constexpr size_t kProblemsShown = 5;

constexpr const char* kUsage =
    "usage: gsod                                    analyse a generated synthetic data set\n"
    "       gsod --generate DIR                     write DIR/2019.tar.gz and DIR/2020.tar.gz\n"
    "       gsod [DIR [YEAR1 YEAR2]] [--threshold F] analyse DIR/YEAR1.tar.gz and DIR/YEAR2.tar.gz\n"
    "                                               (defaults 2019, 2020 and 80 F)\n";

struct Arguments {
  std::optional<std::string> generate_dir;
  std::optional<std::string> data_dir;  ///< none: generate a synthetic data set to analyse
  std::string years[2] = {"2019", "2020"};
  double threshold_f = 80.0;
  bool help = false;
};

bool is_year(std::string_view s) {
  return s.size() == 4 && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

/// Parses the command line, or returns nothing after printing what is wrong.
std::optional<Arguments> parse_arguments(int argc, char** argv) {
  Arguments args;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      args.help = true;
    } else if (arg == "--generate" || arg == "--threshold") {
      if (i + 1 == argc) {
        std::cerr << "gsod: " << arg << " needs a value\n";
        return std::nullopt;
      }
      std::string_view value = argv[++i];
      if (arg == "--generate") {
        args.generate_dir = std::string(value);
      } else {
        auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), args.threshold_f);
        if (ec != std::errc() || end != value.data() + value.size() || !std::isfinite(args.threshold_f)) {
          std::cerr << "gsod: --threshold must be a number of degrees Fahrenheit, not '" << value << "'\n";
          return std::nullopt;
        }
      }
    } else if (arg.starts_with("-") && arg.size() > 1) {
      std::cerr << "gsod: unknown option '" << arg << "'\n";
      return std::nullopt;
    } else {
      positional.emplace_back(arg);
    }
  }
  if (args.generate_dir && !positional.empty()) {
    std::cerr << "gsod: --generate DIR takes no other arguments\n";
    return std::nullopt;
  }
  if (positional.size() == 2 || positional.size() > 3) {
    std::cerr << "gsod: give a data directory, optionally followed by two years\n";
    return std::nullopt;
  }
  if (!positional.empty()) args.data_dir = positional[0];
  if (positional.size() == 3) {
    for (int y = 0; y < 2; ++y) {
      if (!is_year(positional[1 + y])) {
        std::cerr << "gsod: a year is four digits, not '" << positional[1 + y] << "'\n";
        return std::nullopt;
      }
      args.years[y] = positional[1 + y];
    }
  }
  return args;
}

/// A fresh directory under the system's temporary directory, removed with its contents
/// when this goes out of scope.
class TemporaryDirectory {
 public:
  TemporaryDirectory() {
    std::string pattern = (fs::temp_directory_path() / "gantry-gsod.XXXXXX").string();
    if (mkdtemp(pattern.data()) == nullptr) {
      throw std::runtime_error("cannot create a temporary directory like " + pattern);
    }
    path_ = pattern;
  }
  ~TemporaryDirectory() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  TemporaryDirectory(const TemporaryDirectory&) = delete;
  TemporaryDirectory& operator=(const TemporaryDirectory&) = delete;

  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

void print_generated(const std::vector<gsod::SyntheticSummary>& written) {
  for (const gsod::SyntheticSummary& s : written) {
    std::cout << "  wrote " << s.archive_path << ": " << s.stations << " stations, " << s.rows
              << " readings (" << s.missing_temps << " missing TEMP)\n";
  }
}

void print_load(const std::string& year, const LoadReport& r) {
  std::cout << "  " << year << ": " << r.stations << " stations, " << r.rows << " readings ("
            << r.missing_temps << " missing TEMP, " << r.malformed_lines << " malformed lines skipped)\n";
  for (size_t i = 0; i < r.problems.size() && i < kProblemsShown; ++i) {
    std::cout << "    " << r.problems[i] << "\n";
  }
  if (r.malformed_lines > static_cast<int64_t>(kProblemsShown)) {
    std::cout << "    ... and " << r.malformed_lines - static_cast<int64_t>(kProblemsShown) << " more\n";
  }
}

std::vector<std::string> intersection(std::vector<std::string> a, std::vector<std::string> b) {
  std::sort(a.begin(), a.end());
  std::sort(b.begin(), b.end());
  std::vector<std::string> out;
  std::set_intersection(a.begin(), a.end(), b.begin(), b.end(), std::back_inserter(out));
  return out;
}

int run(int argc, char** argv) {
  std::optional<Arguments> args = parse_arguments(argc, argv);
  if (!args || args->help) {
    (args ? std::cout : std::cerr) << kUsage;
    return args ? 0 : 2;
  }
  if (args->generate_dir) {
    std::cout << "gsod: generating a synthetic data set\n";
    print_generated(gsod::write_synthetic_dataset(*args->generate_dir));
    return 0;
  }

  std::optional<TemporaryDirectory> temporary;
  std::vector<gsod::SyntheticSummary> generated;
  fs::path dir;
  if (args->data_dir) {
    dir = *args->data_dir;
  } else {
    temporary.emplace();
    dir = temporary->path();
    std::cout << "gsod: no data directory given; generating a synthetic data set\n";
    generated = gsod::write_synthetic_dataset(dir.string());
    print_generated(generated);
  }

  // Absolute paths, because the actors' working directory need not be ours.
  std::string paths[2];
  for (int y = 0; y < 2; ++y) {
    paths[y] = fs::absolute(dir / (args->years[y] + ".tar.gz")).string();
    if (!fs::is_regular_file(paths[y])) {
      std::cerr << "gsod: no archive " << paths[y] << "\n";
      return 1;
    }
  }

  gantry::ActorHandle<GsodActor> actors[2] = {gantry::actor(GsodActor::create).remote(paths[0]),
                                              gantry::actor(GsodActor::create).remote(paths[1])};
  // Each pair of calls is sent before either is awaited, so the two years load and
  // answer in parallel.
  gantry::ObjectRef<LoadReport> loading[2] = {actors[0].task(&GsodActor::load).remote(),
                                              actors[1].task(&GsodActor::load).remote()};
  LoadReport reports[2] = {loading[0].get(), loading[1].get()};
  std::cout << "gsod: each year loaded by its own actor\n";
  for (int y = 0; y < 2; ++y) print_load(args->years[y], reports[y]);

  auto stations_0 = actors[0].task(&GsodActor::stations).remote();
  auto stations_1 = actors[1].task(&GsodActor::stations).remote();
  std::vector<std::string> common = intersection(stations_0.get(), stations_1.get());
  std::cout << "  stations in both years: " << common.size() << "\n";

  auto counting_0 = actors[0].task(&GsodActor::count_at_or_above).remote(common, args->threshold_f);
  auto counting_1 = actors[1].task(&GsodActor::count_at_or_above).remote(common, args->threshold_f);
  int64_t counts[2] = {counting_0.get(), counting_1.get()};
  std::cout << "  readings with TEMP >= " << std::fixed << std::setprecision(1) << args->threshold_f
            << " F at those stations: " << args->years[0] << ": " << counts[0] << ", " << args->years[1]
            << ": " << counts[1] << "\n";

  if (generated.empty()) return 0;  // real data: nothing to check against

  // For the data it generated, the example knows the truth: what it wrote, and what a
  // plain local read of the same archives gives.
  bool ok = true;
  gsod::YearData local[2] = {gsod::read_year_archive(paths[0]), gsod::read_year_archive(paths[1])};
  std::vector<std::string> local_common =
      intersection(gsod::station_ids(local[0]), gsod::station_ids(local[1]));
  for (int y = 0; y < 2; ++y) {
    ok = ok && reports[y].stations == generated[y].stations && reports[y].rows == generated[y].rows &&
         reports[y].missing_temps == generated[y].missing_temps && reports[y].malformed_lines == 0 &&
         counts[y] == gsod::count_at_or_above(local[y], local_common, args->threshold_f);
  }
  ok = ok && common == local_common;
  std::cout << "  matches what was generated and a local read of the archives: " << (ok ? "yes" : "NO")
            << "\n";
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  gantry::init(argc, argv);  // in a worker process this serves the actors and never returns
  int status = 1;
  try {
    status = run(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "gsod: " << e.what() << "\n";
  }
  gantry::shutdown();
  return status;
}
