#pragma once

// Global Surface Summary of the Day (GSOD) data: reading one year's archive of per-station
// CSV files, and writing a synthetic archive in the same layout. Free of gantry, so it can
// be tested on its own.
//
// The layout is NOAA's since 2013: one `<year>.tar.gz` per year holding one CSV per station
// (`02974099999.csv`), every field double-quoted, numbers padded with spaces inside the
// quotes, NAME holding a comma ("HELSINKI VANTAA, FI"), TEMP the mean temperature in
// degrees Fahrenheit with 9999.9 for a missing value.

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace gsod {

/// Columns of a GSOD CSV file, in order.
inline constexpr std::string_view kColumns[] = {
    "STATION",   "DATE",
    "LATITUDE",  "LONGITUDE",
    "ELEVATION", "NAME",
    "TEMP",      "TEMP_ATTRIBUTES",
    "DEWP",      "DEWP_ATTRIBUTES",
    "SLP",       "SLP_ATTRIBUTES",
    "STP",       "STP_ATTRIBUTES",
    "VISIB",     "VISIB_ATTRIBUTES",
    "WDSP",      "WDSP_ATTRIBUTES",
    "MXSPD",     "GUST",
    "MAX",       "MAX_ATTRIBUTES",
    "MIN",       "MIN_ATTRIBUTES",
    "PRCP",      "PRCP_ATTRIBUTES",
    "SNDP",      "FRSHTT",
};

/// TEMP, DEWP and the other temperatures hold this when the value is missing.
inline constexpr double kMissingTemperature = 9999.9;

/// At most this many problem messages are kept; the rest are only counted.
inline constexpr size_t kMaxProblems = 20;

/// One station's readings for a year.
struct Station {
  std::string name;
  /// Daily mean temperatures in degrees Fahrenheit, missing values left out.
  std::vector<double> temps_f;
};

/// One year of GSOD data.
struct YearData {
  /// Stations by id (the STATION column), sorted.
  std::map<std::string, Station> stations;
  /// Well-formed data lines, including those with a missing TEMP.
  int64_t rows = 0;
  /// Well-formed data lines whose TEMP is missing (9999.9).
  int64_t missing_temps = 0;
  /// Lines that could not be parsed; they are skipped.
  int64_t malformed_lines = 0;
  /// The first kMaxProblems problems, each "SOURCE:LINE: what is wrong".
  std::vector<std::string> problems;
};

/// Splits one CSV line into `fields` (cleared first). Fields may be double-quoted; a quoted
/// field may hold commas and doubled quotes (`""`). Throws std::invalid_argument naming
/// the 1-based field when a quote is unterminated or stray.
void split_csv_line(std::string_view line, std::vector<std::string>& fields);

/// Parses the text of one station CSV (header line first) into `out`. Malformed lines are
/// skipped, counted in `out.malformed_lines` and described in `out.problems` with
/// `source` and the line number. A header without STATION or TEMP columns skips the
/// whole file (counted as one malformed line). Never throws on bad content.
void parse_station_csv(std::string_view text, const std::string& source, YearData& out);

/// Reads every `*.csv` entry of a tar.gz archive. Throws std::runtime_error naming the
/// archive (and the entry, when it is known) if the file cannot be opened, is not a
/// tar.gz, is corrupt or truncated, or holds no CSV file. Malformed CSV lines do not
/// throw; see parse_station_csv.
YearData read_year_archive(const std::string& archive_path);

/// The station ids of `data`, sorted.
std::vector<std::string> station_ids(const YearData& data);

/// How many readings of the given stations are at or above `threshold_f`. Unknown station
/// ids count nothing; missing temperatures never count.
int64_t count_at_or_above(const YearData& data, const std::vector<std::string>& station_ids,
                          double threshold_f);

/// One file to put in an archive.
struct ArchiveFile {
  std::string name;
  std::string content;
};

/// Writes `files` as a gzip-compressed tar (pax restricted) to `archive_path`, through a
/// temporary file renamed into place, so a failure leaves no partial archive. Throws
/// std::runtime_error naming the path on failure.
void write_archive(const std::string& archive_path, const std::vector<ArchiveFile>& files);

/// A synthetic year: stations `first_station .. first_station + station_count - 1` of a
/// fixed pool, with deterministic pseudo-random temperatures.
struct SyntheticYear {
  int year = 2019;
  int first_station = 0;
  int station_count = 40;
  /// Share of days whose TEMP is written as missing (9999.9).
  double missing_fraction = 0.02;
  /// Share of days with no line at all, as real stations have gaps.
  double skipped_day_fraction = 0.05;
  uint64_t seed = 1;
};

/// What write_synthetic_year wrote.
struct SyntheticSummary {
  std::string archive_path;
  int64_t stations = 0;
  int64_t rows = 0;
  int64_t missing_temps = 0;
};

/// Writes one synthetic year in the GSOD layout to `archive_path`. The same spec always
/// gives the same rows.
SyntheticSummary write_synthetic_year(const std::string& archive_path, const SyntheticYear& spec);

/// Writes `dir`/2019.tar.gz and `dir`/2020.tar.gz, 40 stations each, 32 of them in both
/// years; creates `dir` if needed.
std::vector<SyntheticSummary> write_synthetic_dataset(const std::string& dir);

}  // namespace gsod
