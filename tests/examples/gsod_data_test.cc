#include "gsod/gsod_data.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace {

namespace fs = std::filesystem;

// NOAA's layout since 2013: every field quoted, numbers padded inside the quotes, a comma
// in NAME.
const std::string kHeader =
    R"("STATION","DATE","LATITUDE","LONGITUDE","ELEVATION","NAME","TEMP","TEMP_ATTRIBUTES","DEWP",)"
    R"("DEWP_ATTRIBUTES","SLP","SLP_ATTRIBUTES","STP","STP_ATTRIBUTES","VISIB","VISIB_ATTRIBUTES","WDSP",)"
    R"("WDSP_ATTRIBUTES","MXSPD","GUST","MAX","MAX_ATTRIBUTES","MIN","MIN_ATTRIBUTES","PRCP",)"
    R"("PRCP_ATTRIBUTES","SNDP","FRSHTT")"
    "\n";

/// One data line in the real layout, with `temp` as the TEMP field's text.
std::string csv_line(const std::string& station, const std::string& date, const std::string& temp) {
  return R"(")" + station + R"(",")" + date +
         R"(","60.3166666","24.9666666","51.0","HELSINKI VANTAA, FI",")" + temp +
         R"(","24","   21.1","24","1000.4","24","  999.2","24","  6.1","24","   19.0","24"," 28.0","  36.1",)"
         R"("   32.2","*","   23.2","*"," 0.00","I","999.9","001000")"
         "\n";
}

class GsodDataTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::temp_directory_path() / "gsod_data_test.XXXXXX").string();
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override {
    std::error_code ignored;
    fs::remove_all(dir_, ignored);
  }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  /// Expects read_year_archive(p) to throw std::runtime_error whose message names `p`.
  static void expect_read_error(const std::string& p) {
    try {
      gsod::read_year_archive(p);
      ADD_FAILURE() << "no error reading " << p;
    } catch (const std::runtime_error& e) {
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
    }
  }

  fs::path dir_;
};

TEST_F(GsodDataTest, GeneratedYearReadsBackWithExpectedStationsAndRows) {
  // No skipped days, so every station has a line for every day of the year.
  gsod::SyntheticYear spec{.year = 2019, .first_station = 0, .station_count = 40, .skipped_day_fraction = 0};
  gsod::SyntheticSummary written = gsod::write_synthetic_year(path("2019.tar.gz"), spec);
  EXPECT_EQ(written.stations, 40);
  EXPECT_EQ(written.rows, 40 * 365);
  EXPECT_GT(written.missing_temps, 0);

  gsod::YearData data = gsod::read_year_archive(path("2019.tar.gz"));
  EXPECT_EQ(data.stations.size(), 40U);
  EXPECT_EQ(data.rows, 40 * 365);
  EXPECT_EQ(data.missing_temps, written.missing_temps);
  EXPECT_EQ(data.malformed_lines, 0);
  EXPECT_TRUE(data.problems.empty());
  int64_t present = 0;
  for (const auto& [id, station] : data.stations) {
    EXPECT_EQ(id.size(), 11U) << id;
    EXPECT_NE(station.name.find(", "), std::string::npos) << station.name;
    present += static_cast<int64_t>(station.temps_f.size());
  }
  EXPECT_EQ(present + data.missing_temps, data.rows);
}

TEST_F(GsodDataTest, LeapYearHas366Days) {
  gsod::SyntheticYear spec{.year = 2020, .station_count = 3, .skipped_day_fraction = 0};
  gsod::write_synthetic_year(path("2020.tar.gz"), spec);
  EXPECT_EQ(gsod::read_year_archive(path("2020.tar.gz")).rows, 3 * 366);
}

TEST_F(GsodDataTest, SyntheticDatasetYearsOverlapPartially) {
  std::vector<gsod::SyntheticSummary> years = gsod::write_synthetic_dataset(dir_.string());
  ASSERT_EQ(years.size(), 2U);
  EXPECT_EQ(years[0].archive_path, path("2019.tar.gz"));
  EXPECT_EQ(years[1].archive_path, path("2020.tar.gz"));
  gsod::YearData y2019 = gsod::read_year_archive(years[0].archive_path);
  gsod::YearData y2020 = gsod::read_year_archive(years[1].archive_path);
  EXPECT_EQ(y2019.stations.size(), 40U);
  EXPECT_EQ(y2020.stations.size(), 40U);
  EXPECT_EQ(y2019.rows, years[0].rows);
  EXPECT_EQ(y2020.rows, years[1].rows);

  std::vector<std::string> common;
  for (const std::string& id : gsod::station_ids(y2019))
    if (y2020.stations.count(id) != 0) common.push_back(id);
  EXPECT_EQ(common.size(), 32U);
  // Warm enough that the example's default threshold (80 F) finds readings.
  EXPECT_GT(gsod::count_at_or_above(y2019, common, 80.0), 0);
  EXPECT_LT(gsod::count_at_or_above(y2019, common, 80.0), gsod::count_at_or_above(y2019, common, 0.0));
}

TEST_F(GsodDataTest, GeneratorIsDeterministic) {
  gsod::SyntheticYear spec{.year = 2019, .station_count = 5};
  gsod::write_synthetic_year(path("a.tar.gz"), spec);
  gsod::write_synthetic_year(path("b.tar.gz"), spec);
  gsod::YearData a = gsod::read_year_archive(path("a.tar.gz"));
  gsod::YearData b = gsod::read_year_archive(path("b.tar.gz"));
  ASSERT_EQ(a.stations.size(), b.stations.size());
  for (const auto& [id, station] : a.stations) EXPECT_EQ(station.temps_f, b.stations.at(id).temps_f) << id;
}

TEST(SplitCsvLine, HeaderGivesTheGsodColumns) {
  std::vector<std::string> fields;
  gsod::split_csv_line(std::string_view(kHeader).substr(0, kHeader.size() - 1), fields);
  EXPECT_EQ(fields, std::vector<std::string>(std::begin(gsod::kColumns), std::end(gsod::kColumns)));
}

TEST(SplitCsvLine, QuotedCommaStaysInOneField) {
  std::vector<std::string> fields;
  gsod::split_csv_line("\"02974099999\",\"HELSINKI VANTAA, FI\",\"   27.2\"", fields);
  ASSERT_EQ(fields.size(), 3U);
  EXPECT_EQ(fields[0], "02974099999");
  EXPECT_EQ(fields[1], "HELSINKI VANTAA, FI");
  EXPECT_EQ(fields[2], "   27.2");
}

TEST(SplitCsvLine, DoubledQuotesUnquotedAndEmptyFields) {
  std::vector<std::string> fields;
  gsod::split_csv_line("\"say \"\"hi\"\"\",plain,,\"\",", fields);
  EXPECT_EQ(fields, (std::vector<std::string>{"say \"hi\"", "plain", "", "", ""}));
}

TEST(SplitCsvLine, RejectsBrokenQuotes) {
  std::vector<std::string> fields;
  EXPECT_THROW(gsod::split_csv_line("\"a\",\"unterminated", fields), std::invalid_argument);
  EXPECT_THROW(gsod::split_csv_line("\"a\"x,\"b\"", fields), std::invalid_argument);
  EXPECT_THROW(gsod::split_csv_line("a\"b,c", fields), std::invalid_argument);
}

TEST(ParseStationCsv, NameWithCommaIsParsed) {
  gsod::YearData data;
  gsod::parse_station_csv(kHeader + csv_line("02974099999", "2019-01-01", "   27.2"), "t.csv", data);
  ASSERT_EQ(data.stations.count("02974099999"), 1U);
  const gsod::Station& station = data.stations.at("02974099999");
  EXPECT_EQ(station.name, "HELSINKI VANTAA, FI");
  EXPECT_EQ(station.temps_f, std::vector<double>{27.2});
  EXPECT_EQ(data.malformed_lines, 0);
}

TEST(ParseStationCsv, MissingTemperatureIsIgnored) {
  gsod::YearData data;
  std::string text = kHeader + csv_line("02974099999", "2019-01-01", "   81.0") +
                     csv_line("02974099999", "2019-01-02", "9999.9") +
                     csv_line("02974099999", "2019-01-03", "   79.9");
  gsod::parse_station_csv(text, "t.csv", data);
  EXPECT_EQ(data.rows, 3);
  EXPECT_EQ(data.missing_temps, 1);
  EXPECT_EQ(data.malformed_lines, 0);
  EXPECT_EQ(data.stations.at("02974099999").temps_f, (std::vector<double>{81.0, 79.9}));
  // 9999.9 would count at any threshold if it were not ignored.
  EXPECT_EQ(gsod::count_at_or_above(data, {"02974099999"}, 80.0), 1);
  EXPECT_EQ(gsod::count_at_or_above(data, {"02974099999"}, -100.0), 2);
  EXPECT_EQ(gsod::count_at_or_above(data, {"unknown"}, -100.0), 0);
}

TEST(ParseStationCsv, MalformedLinesAreCountedAndSkipped) {
  gsod::YearData data;
  std::string text = kHeader + csv_line("02974099999", "2019-01-01", "   27.2") +  // line 2
                     "\"02974099999\",\"2019-01-02\",\"unterminated\n" +           // line 3
                     "\"02974099999\",\"2019-01-03\"\n" +                          // line 4: 2 fields
                     csv_line("02974099999", "2019-01-04", "warm") +               // line 5
                     csv_line("02974099999", "2019-01-05", "   30.0");             // line 6
  gsod::parse_station_csv(text, "2019.tar.gz:02974099999.csv", data);
  EXPECT_EQ(data.rows, 2);
  EXPECT_EQ(data.malformed_lines, 3);
  EXPECT_EQ(data.stations.at("02974099999").temps_f, (std::vector<double>{27.2, 30.0}));
  ASSERT_EQ(data.problems.size(), 3U);
  EXPECT_EQ(data.problems[0], "2019.tar.gz:02974099999.csv:3: field 3: unterminated quote");
  EXPECT_EQ(data.problems[1], "2019.tar.gz:02974099999.csv:4: expected 28 fields, found 2");
  EXPECT_EQ(data.problems[2], "2019.tar.gz:02974099999.csv:5: TEMP is not a number: \"warm\"");
}

TEST(ParseStationCsv, CrlfLineEndingsAndBlankLines) {
  gsod::YearData data;
  std::string line = csv_line("02974099999", "2019-01-01", "   27.2");
  line.insert(line.size() - 1, "\r");
  std::string header = kHeader;
  header.insert(header.size() - 1, "\r");
  gsod::parse_station_csv(header + line + "\r\n\n", "t.csv", data);
  EXPECT_EQ(data.rows, 1);
  EXPECT_EQ(data.malformed_lines, 0);
}

TEST(ParseStationCsv, HeaderWithoutTempSkipsTheFile) {
  gsod::YearData data;
  gsod::parse_station_csv("\"STATION\",\"DATE\"\n\"02974099999\",\"2019-01-01\"\n", "t.csv", data);
  EXPECT_EQ(data.rows, 0);
  EXPECT_EQ(data.malformed_lines, 1);
  ASSERT_EQ(data.problems.size(), 1U);
  EXPECT_EQ(data.problems[0].rfind("t.csv:1: ", 0), 0U) << data.problems[0];
}

TEST(ParseStationCsv, KeepsOnlyTheFirstProblems) {
  gsod::YearData data;
  std::string text = kHeader;
  for (int i = 0; i < 50; ++i) text += "\"broken\n";
  gsod::parse_station_csv(text, "t.csv", data);
  EXPECT_EQ(data.malformed_lines, 50);
  EXPECT_EQ(data.problems.size(), gsod::kMaxProblems);
}

TEST_F(GsodDataTest, MalformedLineInArchiveNamesArchiveEntryAndLine) {
  std::string good = kHeader + csv_line("02974099999", "2019-01-01", "   27.2");
  std::string bad =
      kHeader + csv_line("01001099999", "2019-01-01", "   12.0") + "\"01001099999\",\"2019-01-02\n";
  gsod::write_archive(path("2019.tar.gz"),
                      {{"02974099999.csv", good}, {"01001099999.csv", bad}, {"README.txt", "x"}});
  gsod::YearData data = gsod::read_year_archive(path("2019.tar.gz"));
  EXPECT_EQ(data.stations.size(), 2U);
  EXPECT_EQ(data.rows, 2);
  EXPECT_EQ(data.malformed_lines, 1);
  ASSERT_EQ(data.problems.size(), 1U);
  EXPECT_EQ(data.problems[0], "2019.tar.gz:01001099999.csv:3: field 2: unterminated quote");
}

TEST_F(GsodDataTest, RandomBytesGiveAClearError) {
  std::mt19937 rng(7);
  std::ofstream out(path("random.tar.gz"), std::ios::binary);
  for (int i = 0; i < 4096; ++i) out.put(static_cast<char>(rng() & 0xff));
  out.close();
  expect_read_error(path("random.tar.gz"));
}

TEST_F(GsodDataTest, TruncatedGzipGivesAClearError) {
  gsod::write_synthetic_year(path("full.tar.gz"), {.year = 2019, .station_count = 10});
  std::ifstream in(path("full.tar.gz"), std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_GT(bytes.size(), 1000U);
  for (size_t keep : {size_t{5}, size_t{100}, bytes.size() / 2, bytes.size() - 100}) {
    SCOPED_TRACE("kept " + std::to_string(keep) + " of " + std::to_string(bytes.size()) + " bytes");
    std::string p = path("truncated_" + std::to_string(keep) + ".tar.gz");
    std::ofstream(p, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(keep));
    expect_read_error(p);
  }
}

TEST_F(GsodDataTest, MissingFileAndArchiveWithoutCsvGiveClearErrors) {
  expect_read_error(path("does_not_exist.tar.gz"));
  gsod::write_archive(path("empty.tar.gz"), {{"README.txt", "no data"}});
  expect_read_error(path("empty.tar.gz"));
}

TEST_F(GsodDataTest, FailedWriteLeavesNoFile) {
  std::string target = path("no_such_dir/2019.tar.gz");
  EXPECT_THROW(gsod::write_archive(target, {{"a.csv", "x"}}), std::runtime_error);
  EXPECT_FALSE(fs::exists(target));
  EXPECT_FALSE(fs::exists(target + ".partial"));
}

}  // namespace
