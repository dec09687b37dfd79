#include "gsod/gsod_data.h"

#include <archive.h>
#include <archive_entry.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <iterator>
#include <memory>
#include <numbers>
#include <stdexcept>
#include <system_error>

namespace gsod {

namespace {

/// Largest CSV entry read into memory; real station files are well under 1 MiB.
constexpr la_int64_t kMaxEntryBytes = la_int64_t{256} << 20;

struct ArchiveReadFree {
  void operator()(archive* a) const { archive_read_free(a); }
};
struct ArchiveWriteFree {
  void operator()(archive* a) const { archive_write_free(a); }
};
struct ArchiveEntryFree {
  void operator()(archive_entry* e) const { archive_entry_free(e); }
};

std::string archive_error(archive* a) {
  const char* message = archive_error_string(a);
  // libarchive sets no message for some damaged gzip trailers.
  return message != nullptr ? message : "corrupt or truncated data";
}

/// "cannot read PATH (entry NAME): WHAT"
[[noreturn]] void fail_read(const std::string& path, const std::string& entry, const std::string& what) {
  std::string where = entry.empty() ? path : path + " (entry " + entry + ")";
  throw std::runtime_error("cannot read GSOD archive " + where + ": " + what);
}

[[noreturn]] void fail_write(const std::string& path, const std::string& what) {
  throw std::runtime_error("cannot write archive " + path + ": " + what);
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

bool parse_double(std::string_view text, double& out) {
  text = trim(text);
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  return !text.empty() && ec == std::errc() && end == text.data() + text.size() && std::isfinite(out);
}

bool is_missing(double temp_f) { return std::abs(temp_f - kMissingTemperature) < 0.05; }

std::string file_name_of(const std::string& path) { return std::filesystem::path(path).filename().string(); }

}  // namespace

void split_csv_line(std::string_view line, std::vector<std::string>& fields) {
  fields.clear();
  size_t i = 0;
  for (;;) {
    std::string& field = fields.emplace_back();
    if (i < line.size() && line[i] == '"') {
      ++i;
      bool closed = false;
      while (i < line.size()) {
        char c = line[i++];
        if (c != '"') {
          field += c;
        } else if (i < line.size() && line[i] == '"') {
          field += '"';
          ++i;
        } else {
          closed = true;
          break;
        }
      }
      if (!closed) {
        throw std::invalid_argument("field " + std::to_string(fields.size()) + ": unterminated quote");
      }
      if (i < line.size() && line[i] != ',') {
        throw std::invalid_argument("field " + std::to_string(fields.size()) +
                                    ": text after the closing quote");
      }
    } else {
      size_t end = std::min(line.find(',', i), line.size());
      field.assign(line.substr(i, end - i));
      if (field.find('"') != std::string::npos) {
        throw std::invalid_argument("field " + std::to_string(fields.size()) +
                                    ": quote inside an unquoted field");
      }
      i = end;
    }
    if (i >= line.size()) return;
    ++i;  // the comma; a comma at the very end leaves one more, empty, field
  }
}

void parse_station_csv(std::string_view text, const std::string& source, YearData& out) {
  auto problem = [&](int64_t line_number, const std::string& what) {
    ++out.malformed_lines;
    if (out.problems.size() < kMaxProblems) {
      out.problems.push_back(source + ":" + std::to_string(line_number) + ": " + what);
    }
  };

  if (text.starts_with("\xEF\xBB\xBF")) text.remove_prefix(3);  // a UTF-8 byte-order mark
  std::vector<std::string> fields;
  bool have_header = false;
  size_t column_count = 0;
  size_t station_column = 0;
  size_t temp_column = 0;
  size_t name_column = SIZE_MAX;
  int64_t line_number = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t eol = text.find('\n', pos);
    std::string_view line =
        text.substr(pos, eol == std::string_view::npos ? std::string_view::npos : eol - pos);
    pos = eol == std::string_view::npos ? text.size() : eol + 1;
    ++line_number;
    if (line.ends_with('\r')) line.remove_suffix(1);
    if (line.empty()) continue;

    try {
      split_csv_line(line, fields);
    } catch (const std::invalid_argument& e) {
      if (!have_header) {
        problem(line_number, std::string("unreadable header (") + e.what() + "); skipping the file");
        return;
      }
      problem(line_number, e.what());
      continue;
    }

    if (!have_header) {
      bool has_station = false;
      bool has_temp = false;
      for (size_t c = 0; c < fields.size(); ++c) {
        std::string_view column = trim(fields[c]);
        if (column == "STATION") station_column = c, has_station = true;
        if (column == "TEMP") temp_column = c, has_temp = true;
        if (column == "NAME") name_column = c;
      }
      if (!has_station || !has_temp) {
        problem(line_number, "header has no STATION and TEMP columns; skipping the file");
        return;
      }
      column_count = fields.size();
      have_header = true;
      continue;
    }

    if (fields.size() != column_count) {
      problem(line_number,
              "expected " + std::to_string(column_count) + " fields, found " + std::to_string(fields.size()));
      continue;
    }
    std::string_view station_id = trim(fields[station_column]);
    if (station_id.empty()) {
      problem(line_number, "empty STATION");
      continue;
    }
    double temp_f = 0;
    if (!parse_double(fields[temp_column], temp_f)) {
      problem(line_number, "TEMP is not a number: \"" + fields[temp_column] + "\"");
      continue;
    }

    Station& station = out.stations[std::string(station_id)];
    if (station.name.empty() && name_column != SIZE_MAX) station.name = trim(fields[name_column]);
    ++out.rows;
    if (is_missing(temp_f)) {
      ++out.missing_temps;
    } else {
      station.temps_f.push_back(temp_f);
    }
  }
}

YearData read_year_archive(const std::string& archive_path) {
  std::unique_ptr<archive, ArchiveReadFree> reader(archive_read_new());
  if (!reader) fail_read(archive_path, "", "out of memory");
  // ARCHIVE_WARN here only means libarchive will run an external gzip program.
  if (archive_read_support_filter_gzip(reader.get()) < ARCHIVE_WARN ||
      archive_read_support_format_tar(reader.get()) != ARCHIVE_OK) {
    fail_read(archive_path, "", archive_error(reader.get()));
  }
  if (archive_read_open_filename(reader.get(), archive_path.c_str(), 1 << 16) != ARCHIVE_OK) {
    // An OS error (no such file, permission denied) says more than libarchive's "Failed to
    // open"; EILSEQ and EINVAL are libarchive's own codes for bad format and misuse.
    int error = archive_errno(reader.get());
    bool os_error = error > 0 && error != EILSEQ && error != EINVAL;
    fail_read(archive_path, "", os_error ? std::strerror(error) : archive_error(reader.get()));
  }

  const std::string archive_name = file_name_of(archive_path);
  YearData out;
  int64_t csv_files = 0;
  std::string text;
  std::vector<char> buffer(1 << 16);
  for (;;) {
    archive_entry* entry = nullptr;
    int status = archive_read_next_header(reader.get(), &entry);
    if (status == ARCHIVE_EOF) break;
    if (status < ARCHIVE_WARN) fail_read(archive_path, "", archive_error(reader.get()));
    const char* raw_name = archive_entry_pathname(entry);
    std::string entry_name = raw_name != nullptr ? raw_name : "";
    if (archive_entry_filetype(entry) != AE_IFREG || !entry_name.ends_with(".csv")) continue;

    text.clear();
    for (;;) {
      la_ssize_t n = archive_read_data(reader.get(), buffer.data(), buffer.size());
      if (n == 0) break;
      if (n < 0) fail_read(archive_path, entry_name, archive_error(reader.get()));
      if (static_cast<la_int64_t>(text.size()) + n > kMaxEntryBytes) {
        fail_read(archive_path, entry_name, "entry larger than 256 MiB");
      }
      text.append(buffer.data(), static_cast<size_t>(n));
    }
    parse_station_csv(text, archive_name + ":" + entry_name, out);
    ++csv_files;
  }
  if (csv_files == 0) fail_read(archive_path, "", "no station CSV files (*.csv) in the archive");
  return out;
}

std::vector<std::string> station_ids(const YearData& data) {
  std::vector<std::string> ids;
  ids.reserve(data.stations.size());
  for (const auto& [id, station] : data.stations) ids.push_back(id);
  return ids;
}

int64_t count_at_or_above(const YearData& data, const std::vector<std::string>& station_ids,
                          double threshold_f) {
  int64_t count = 0;
  for (const std::string& id : station_ids) {
    auto it = data.stations.find(id);
    if (it == data.stations.end()) continue;
    for (double temp_f : it->second.temps_f) count += temp_f >= threshold_f ? 1 : 0;
  }
  return count;
}

void write_archive(const std::string& archive_path, const std::vector<ArchiveFile>& files) {
  const std::string partial_path = archive_path + ".partial";
  try {
    std::unique_ptr<archive, ArchiveWriteFree> writer(archive_write_new());
    if (!writer) fail_write(archive_path, "out of memory");
    if (archive_write_add_filter_gzip(writer.get()) < ARCHIVE_WARN ||
        archive_write_set_format_pax_restricted(writer.get()) != ARCHIVE_OK ||
        archive_write_open_filename(writer.get(), partial_path.c_str()) != ARCHIVE_OK) {
      fail_write(archive_path, archive_error(writer.get()));
    }
    const time_t now = std::time(nullptr);
    for (const ArchiveFile& file : files) {
      std::unique_ptr<archive_entry, ArchiveEntryFree> entry(archive_entry_new());
      if (!entry) fail_write(archive_path, "out of memory");
      archive_entry_set_pathname(entry.get(), file.name.c_str());
      archive_entry_set_size(entry.get(), static_cast<la_int64_t>(file.content.size()));
      archive_entry_set_filetype(entry.get(), AE_IFREG);
      archive_entry_set_perm(entry.get(), 0644);
      archive_entry_set_mtime(entry.get(), now, 0);
      if (archive_write_header(writer.get(), entry.get()) != ARCHIVE_OK) {
        fail_write(archive_path, file.name + ": " + archive_error(writer.get()));
      }
      la_ssize_t written = archive_write_data(writer.get(), file.content.data(), file.content.size());
      if (written != static_cast<la_ssize_t>(file.content.size())) {
        fail_write(archive_path, file.name + ": " + archive_error(writer.get()));
      }
    }
    if (archive_write_close(writer.get()) != ARCHIVE_OK)
      fail_write(archive_path, archive_error(writer.get()));
    std::error_code ec;
    std::filesystem::rename(partial_path, archive_path, ec);
    if (ec) fail_write(archive_path, ec.message());
  } catch (...) {
    std::error_code ignored;
    std::filesystem::remove(partial_path, ignored);
    throw;
  }
}

namespace {

/// SplitMix64: a small, fast, well-mixed generator; the same seed gives the same stream.
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }
  /// Uniform in [0, 1).
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

 private:
  uint64_t state_;
};

/// Stations the synthetic years draw from.
constexpr int kStationPool = 48;

struct StationSite {
  std::string id;
  std::string name;
  double latitude;
  double longitude;
  double elevation;
};

StationSite synthetic_site(int index) {
  static constexpr const char* kCountries[] = {"FI", "NO", "SE", "DE", "FR", "ES",
                                               "IT", "US", "CA", "AU", "BR", "IN"};
  char id[32];
  std::snprintf(id, sizeof id, "%06d99999", 20000 + 1371 * index);
  char name[48];
  std::snprintf(name, sizeof name, "SYNTHETIC STATION %02d, %s", index, kCountries[index % 12]);
  return {id, name, -40.0 + (index * 37) % 110 + 0.25, -170.0 + (index * 53) % 340 + 0.5,
          static_cast<double>((index * 97) % 1500)};
}

bool is_leap(int year) { return (year % 4 == 0 && year % 100 != 0) || year % 400 == 0; }

std::string formatted(const char* format, double value) {
  char text[64];
  std::snprintf(text, sizeof text, format, value);
  return text;
}

/// Appends one CSV line with every field double-quoted, as GSOD writes them. No field here
/// holds a quote, so none needs escaping.
template <typename Fields>
void append_quoted_line(std::string& out, const Fields& fields) {
  bool first = true;
  for (std::string_view field : fields) {
    out += first ? "\"" : ",\"";
    out += field;
    out += '"';
    first = false;
  }
  out += '\n';
}

}  // namespace

SyntheticSummary write_synthetic_year(const std::string& archive_path, const SyntheticYear& spec) {
  if (spec.first_station < 0 || spec.station_count < 0 ||
      spec.first_station + spec.station_count > kStationPool) {
    throw std::invalid_argument("synthetic stations must lie within 0.." + std::to_string(kStationPool - 1));
  }
  static constexpr int kMonthDays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  const int days_in_year = is_leap(spec.year) ? 366 : 365;

  std::string header;
  append_quoted_line(header, kColumns);

  SyntheticSummary summary;
  summary.archive_path = archive_path;
  std::vector<ArchiveFile> files;
  for (int s = spec.first_station; s < spec.first_station + spec.station_count; ++s) {
    const StationSite site = synthetic_site(s);
    SplitMix64 rng(spec.seed * 0x100000001B3ULL ^ (static_cast<uint64_t>(spec.year) << 20) ^
                   static_cast<uint64_t>(s));
    // Warmer near the equator, with a seasonal swing that grows with latitude and is
    // reversed in the southern hemisphere.
    const double mean_f = 82.0 - 0.55 * std::abs(site.latitude) + 0.3 * (spec.year - 2019);
    const double swing_f = (4.0 + 0.3 * std::abs(site.latitude)) * (site.latitude < 0 ? -1.0 : 1.0);
    std::string csv = header;
    int month = 0;
    int day_of_month = 1;
    for (int day = 0; day < days_in_year; ++day) {
      if (day > 0 && ++day_of_month > kMonthDays[month] + (month == 1 && is_leap(spec.year) ? 1 : 0)) {
        day_of_month = 1;
        ++month;
      }
      if (rng.uniform() < spec.skipped_day_fraction) continue;
      const double temp_f = mean_f + swing_f * std::cos(2 * std::numbers::pi * (day - 200) / days_in_year) +
                            (rng.uniform() - 0.5) * 12.0;
      const bool missing = rng.uniform() < spec.missing_fraction;
      char date[40];
      std::snprintf(date, sizeof date, "%04d-%02d-%02d", spec.year, month + 1, day_of_month);
      const double wind = 2.0 + 10.0 * rng.uniform();
      // A braced list is evaluated left to right, so the generator is used in a fixed order.
      // clang-format off
      const std::string fields[] = {
          site.id, date, formatted("%.7f", site.latitude), formatted("%.7f", site.longitude),
          formatted("%.1f", site.elevation), site.name,
          missing ? "9999.9" : formatted("%7.1f", temp_f), missing ? " 0" : "24",  // TEMP
          formatted("%7.1f", temp_f - 6.0 - 4.0 * rng.uniform()), "24",            // DEWP
          formatted("%6.1f", 1005.0 + 15.0 * rng.uniform()), "24",                 // SLP
          formatted("%6.1f", 995.0 + 15.0 * rng.uniform()), "24",                  // STP
          formatted("%5.1f", 3.0 + 7.0 * rng.uniform()), "24",                     // VISIB
          formatted("%5.1f", wind), "24",                                          // WDSP
          formatted("%5.1f", wind * 1.8), "999.9",                                 // MXSPD, GUST
          formatted("%7.1f", temp_f + 8.0), "*",                                   // MAX
          formatted("%7.1f", temp_f - 8.0), "*",                                   // MIN
          " 0.00", "I", "999.9", "000000",                                         // PRCP, SNDP, FRSHTT
      };
      // clang-format on
      static_assert(std::size(fields) == std::size(kColumns));
      append_quoted_line(csv, fields);
      ++summary.rows;
      if (missing) ++summary.missing_temps;
    }
    files.push_back({site.id + ".csv", std::move(csv)});
    ++summary.stations;
  }
  write_archive(archive_path, files);
  return summary;
}

std::vector<SyntheticSummary> write_synthetic_dataset(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) throw std::runtime_error("cannot create directory " + dir + ": " + ec.message());
  std::vector<SyntheticSummary> summaries;
  // Stations 0..39 in 2019 and 8..47 in 2020: 32 in both years, 8 in only one.
  for (const SyntheticYear& spec :
       {SyntheticYear{.year = 2019, .first_station = 0}, SyntheticYear{.year = 2020, .first_station = 8}}) {
    std::string path = (std::filesystem::path(dir) / (std::to_string(spec.year) + ".tar.gz")).string();
    summaries.push_back(write_synthetic_year(path, spec));
  }
  return summaries;
}

}  // namespace gsod
