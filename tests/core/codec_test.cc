#include "gantry/codec.h"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <random>

#ifdef GANTRY_TEST_MSGPACK
#include <msgpack.hpp>
#endif

namespace gantry {

// std::monostate has no codec of its own; the variant test encodes it as nil.
template <>
struct Codec<std::monostate> {
  static void encode(Writer& w, std::monostate) { w.nil(); }
  static void decode(Reader& r, std::monostate&) { r.nil(); }
};

namespace {

struct Reading {
  std::string station;
  double temp = 0;
  std::optional<int32_t> humidity;
  GANTRY_FIELDS(station, temp, humidity);
  friend bool operator==(const Reading&, const Reading&) = default;
};

struct Batch {
  uint64_t id = 0;
  std::vector<Reading> readings;
  std::map<std::string, std::vector<double>> series;
  GANTRY_FIELDS(id, readings, series);
  friend bool operator==(const Batch&, const Batch&) = default;
};

enum class Color : uint8_t { kRed = 1, kGreen = 2, kBlue = 200 };
enum class Offset : int16_t { kBack = -300, kNone = 0, kFar = 30000 };

// Exercises every container, wrapper and header kind at once, for the malformed-input tests.
using Complex =
    std::tuple<std::map<std::string, std::vector<Reading>>, std::vector<double>,
               std::variant<int64_t, std::string, std::vector<uint8_t>>, std::set<uint16_t>,
               std::pair<bool, float>, std::optional<std::string>, std::list<std::deque<int8_t>>>;

Complex sample_complex() {
  Complex c;
  std::get<0>(c)["north"] = {Reading{"a", 1.5, 40}, Reading{"b", -2.25, std::nullopt}};
  std::get<0>(c)["south"] = {};
  std::get<1>(c) = {1.0, 2.0, 3.5};
  std::get<2>(c) = std::string("variant text");
  std::get<3>(c) = {1, 300, 65535};
  std::get<4>(c) = {true, 0.5f};
  std::get<5>(c) = std::string(40, 'x');
  std::get<6>(c) = {{1, -1, 127}, {}, {-128}};
  return c;
}

std::string bytes_of(std::initializer_list<int> bytes) {
  std::string out;
  for (int b : bytes) out.push_back(static_cast<char>(b));
  return out;
}

const uint8_t* u8(const std::string& s) { return reinterpret_cast<const uint8_t*>(s.data()); }

// Encodes, checks the measured size against the bytes written, and decodes back.
template <typename T>
T round_trip(const T& value) {
  std::string bytes = encode_to_string(value);
  EXPECT_EQ(bytes.size(), encoded_size(value));
  return decode_from<T>(bytes);
}

template <typename T>
void expect_round_trip(const T& value) {
  EXPECT_EQ(round_trip(value), value);
}

std::string decode_error_message(const std::function<void()>& decode) {
  try {
    decode();
  } catch (const DecodeError& e) {
    return e.what();
  }
  ADD_FAILURE() << "no DecodeError thrown";
  return {};
}

TEST(CodecTest, NilAndBoolBytes) {
  EXPECT_EQ(encode_to_string(true), bytes_of({0xc3}));
  EXPECT_EQ(encode_to_string(false), bytes_of({0xc2}));
  EXPECT_EQ(encode_to_string(std::optional<int>()), bytes_of({0xc0}));
  expect_round_trip(true);
  expect_round_trip(false);
}

TEST(CodecTest, IntegersUseTheSmallestEncoding) {
  EXPECT_EQ(encode_to_string(0), bytes_of({0x00}));
  EXPECT_EQ(encode_to_string(127), bytes_of({0x7f}));
  EXPECT_EQ(encode_to_string(128), bytes_of({0xcc, 0x80}));
  EXPECT_EQ(encode_to_string(255), bytes_of({0xcc, 0xff}));
  EXPECT_EQ(encode_to_string(256), bytes_of({0xcd, 0x01, 0x00}));
  EXPECT_EQ(encode_to_string(65535), bytes_of({0xcd, 0xff, 0xff}));
  EXPECT_EQ(encode_to_string(65536), bytes_of({0xce, 0x00, 0x01, 0x00, 0x00}));
  EXPECT_EQ(encode_to_string(uint64_t{1} << 32), bytes_of({0xcf, 0, 0, 0, 1, 0, 0, 0, 0}));
  EXPECT_EQ(encode_to_string(-1), bytes_of({0xff}));
  EXPECT_EQ(encode_to_string(-32), bytes_of({0xe0}));
  EXPECT_EQ(encode_to_string(-33), bytes_of({0xd0, 0xdf}));
  EXPECT_EQ(encode_to_string(-128), bytes_of({0xd0, 0x80}));
  EXPECT_EQ(encode_to_string(-129), bytes_of({0xd1, 0xff, 0x7f}));
  EXPECT_EQ(encode_to_string(-32768), bytes_of({0xd1, 0x80, 0x00}));
  EXPECT_EQ(encode_to_string(-32769), bytes_of({0xd2, 0xff, 0xff, 0x7f, 0xff}));
  EXPECT_EQ(encode_to_string(int64_t{INT32_MIN} - 1),
            bytes_of({0xd3, 0xff, 0xff, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff}));
  // A signed type holding a positive value takes the unsigned forms.
  EXPECT_EQ(encode_to_string(int64_t{200}), bytes_of({0xcc, 0xc8}));
}

template <typename T>
class IntegerCodecTest : public ::testing::Test {};
using IntegerTypes =
    ::testing::Types<int8_t, int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t, char,
                     signed char, unsigned char, short, long, long long, unsigned long long>;
TYPED_TEST_SUITE(IntegerCodecTest, IntegerTypes);

TYPED_TEST(IntegerCodecTest, RoundTripsExtremesAndBoundaries) {
  using T = TypeParam;
  using L = std::numeric_limits<T>;
  std::vector<T> values = {
      L::min(), L::max(), T(0), T(1), static_cast<T>(L::max() - 1), static_cast<T>(L::min() + 1)};
  for (int64_t boundary : {31, 32, 127, 128, 255, 256, 32767, 32768, 65535, 65536}) {
    if (static_cast<uint64_t>(boundary) <= static_cast<uint64_t>(L::max())) {
      values.push_back(static_cast<T>(boundary));
    }
    if constexpr (L::is_signed) {
      if (-boundary >= static_cast<int64_t>(L::min())) values.push_back(static_cast<T>(-boundary));
    }
  }
  for (T v : values) EXPECT_EQ(round_trip(v), v) << static_cast<int64_t>(v);
}

TEST(CodecTest, Int64AndUint64Extremes) {
  expect_round_trip(std::numeric_limits<int64_t>::min());
  expect_round_trip(std::numeric_limits<int64_t>::max());
  expect_round_trip(std::numeric_limits<uint64_t>::max());
  expect_round_trip(int64_t{INT32_MIN} - 1);
  expect_round_trip(int64_t{UINT32_MAX} + 1);
}

TEST(CodecTest, IntegerOutOfRangeForTargetThrows) {
  EXPECT_THROW(decode_from<uint8_t>(encode_to_string(300)), DecodeError);
  EXPECT_THROW(decode_from<int8_t>(encode_to_string(128)), DecodeError);
  EXPECT_THROW(decode_from<int8_t>(encode_to_string(-129)), DecodeError);
  EXPECT_THROW(decode_from<uint32_t>(encode_to_string(-1)), DecodeError);
  EXPECT_THROW(decode_from<uint16_t>(encode_to_string(int64_t{70000})), DecodeError);
  EXPECT_THROW(decode_from<int32_t>(encode_to_string(int64_t{1} << 40)), DecodeError);
  EXPECT_THROW(decode_from<int64_t>(encode_to_string(std::numeric_limits<uint64_t>::max())),
               DecodeError);
  EXPECT_EQ(decode_from<int16_t>(encode_to_string(300)), 300);
  EXPECT_EQ(decode_from<uint8_t>(encode_to_string(int64_t{255})), 255);
  EXPECT_NE(decode_error_message([] {
              decode_from<uint8_t>(encode_to_string(300));
            }).find("range of the target type"),
            std::string::npos);
}

TEST(CodecTest, ReaderAcceptsEveryIntegerEncodingThatFits) {
  // Other encoders may pick a wider or differently signed form than gantry would.
  {
    std::string b = bytes_of({0xcf, 0, 0, 0, 0, 0, 0, 0, 5});
    EXPECT_EQ(decode_from<int64_t>(b), 5);
  }
  {
    std::string b = bytes_of({0xcf, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff});
    EXPECT_EQ(decode_from<int64_t>(b), std::numeric_limits<int64_t>::max());
  }
  {
    std::string b = bytes_of({0xcf, 0x80, 0, 0, 0, 0, 0, 0, 0});
    EXPECT_THROW(decode_from<int64_t>(b), DecodeError);
  }
  {
    std::string b = bytes_of({0xd0, 0x05});
    EXPECT_EQ(decode_from<uint8_t>(b), 5);
  }
  {
    std::string b = bytes_of({0xd3, 0, 0, 0, 0, 0, 0, 0x01, 0x00});
    EXPECT_EQ(decode_from<uint64_t>(b), 256u);
  }
  {
    std::string b = bytes_of({0xd0, 0xff});
    EXPECT_THROW(decode_from<uint64_t>(b), DecodeError);
  }
  {
    std::string b = bytes_of({0xd1, 0x00, 0x07});
    EXPECT_EQ(decode_from<int8_t>(b), 7);
  }
}

TEST(CodecTest, FloatsRoundTripBitExactly) {
  EXPECT_EQ(encode_to_string(1.0f), bytes_of({0xca, 0x3f, 0x80, 0x00, 0x00}));
  EXPECT_EQ(encode_to_string(1.0), bytes_of({0xcb, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0}));
  for (float v :
       {0.0f, -0.0f, 1.5f, -3.25e10f, std::numeric_limits<float>::max(),
        std::numeric_limits<float>::lowest(), std::numeric_limits<float>::denorm_min(),
        std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity()}) {
    EXPECT_EQ(std::bit_cast<uint32_t>(round_trip(v)), std::bit_cast<uint32_t>(v)) << v;
  }
  for (double v :
       {0.0, -0.0, 1e-300, 3.141592653589793, std::numeric_limits<double>::max(),
        std::numeric_limits<double>::lowest(), std::numeric_limits<double>::denorm_min(),
        std::numeric_limits<double>::infinity(), -std::numeric_limits<double>::infinity()}) {
    EXPECT_EQ(std::bit_cast<uint64_t>(round_trip(v)), std::bit_cast<uint64_t>(v)) << v;
  }
  EXPECT_TRUE(std::isnan(round_trip(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_TRUE(std::isnan(round_trip(std::numeric_limits<double>::quiet_NaN())));
  EXPECT_TRUE(std::signbit(round_trip(-0.0)));
}

TEST(CodecTest, FloatReaderAcceptsOtherNumericEncodings) {
  EXPECT_EQ(decode_from<float>(encode_to_string(2.5)), 2.5f);
  EXPECT_EQ(decode_from<double>(encode_to_string(2.5f)), 2.5);
  EXPECT_EQ(decode_from<double>(encode_to_string(42)), 42.0);
  EXPECT_EQ(decode_from<double>(encode_to_string(-7)), -7.0);
  EXPECT_EQ(decode_from<double>(encode_to_string(std::numeric_limits<uint64_t>::max())),
            static_cast<double>(std::numeric_limits<uint64_t>::max()));
  EXPECT_EQ(decode_from<double>(encode_to_string(std::numeric_limits<int64_t>::min())),
            static_cast<double>(std::numeric_limits<int64_t>::min()));
  EXPECT_THROW(decode_from<double>(encode_to_string(std::string("1.0"))), DecodeError);
  EXPECT_THROW(decode_from<double>(encode_to_string(true)), DecodeError);
}

TEST(CodecTest, EnumsTravelAsTheirUnderlyingType) {
  expect_round_trip(Color::kRed);
  expect_round_trip(Color::kBlue);
  expect_round_trip(Offset::kBack);
  expect_round_trip(Offset::kFar);
  EXPECT_EQ(encode_to_string(Color::kBlue), encode_to_string(uint8_t{200}));
  EXPECT_THROW(decode_from<Color>(encode_to_string(300)), DecodeError);
}

TEST(CodecTest, StringsHitEveryHeader) {
  struct Case {
    size_t length;
    std::string header;
  };
  const std::vector<Case> cases = {
      {0, bytes_of({0xa0})},
      {31, bytes_of({0xbf})},
      {32, bytes_of({0xd9, 32})},
      {255, bytes_of({0xd9, 0xff})},
      {256, bytes_of({0xda, 0x01, 0x00})},
      {65535, bytes_of({0xda, 0xff, 0xff})},
      {65536, bytes_of({0xdb, 0x00, 0x01, 0x00, 0x00})},
  };
  for (const Case& c : cases) {
    std::string s(c.length, '\0');
    for (size_t i = 0; i < s.size(); ++i) s[i] = static_cast<char>(i * 7);
    std::string bytes = encode_to_string(s);
    ASSERT_EQ(bytes.size(), c.header.size() + c.length) << c.length;
    EXPECT_EQ(bytes.substr(0, c.header.size()), c.header) << c.length;
    EXPECT_EQ(decode_from<std::string>(bytes), s) << c.length;
  }
  expect_round_trip(std::string("h\xc3\xa9llo w\0rld", 13));
}

TEST(CodecTest, BinaryHitsEveryHeader) {
  for (size_t n : {size_t{0}, size_t{1}, size_t{255}, size_t{256}, size_t{65535}, size_t{65536}}) {
    std::string payload(n, 'b');
    Writer counter;
    counter.bin(payload.data(), payload.size());
    std::string bytes(counter.size(), '\0');
    Writer w(reinterpret_cast<uint8_t*>(bytes.data()));
    w.bin(payload.data(), payload.size());
    ASSERT_EQ(w.size(), counter.size());
    const uint8_t expected_tag = n <= 0xff ? 0xc4 : n <= 0xffff ? 0xc5 : 0xc6;
    EXPECT_EQ(static_cast<uint8_t>(bytes[0]), expected_tag) << n;
    Reader r(u8(bytes), bytes.size());
    EXPECT_EQ(r.bin(), payload);
    EXPECT_TRUE(r.at_end());
  }
}

TEST(CodecTest, ExtUsesFixextForExactSizes) {
  const std::map<size_t, std::string> headers = {
      {0, bytes_of({0xc7, 0x00})},
      {1, bytes_of({0xd4})},
      {2, bytes_of({0xd5})},
      {3, bytes_of({0xc7, 0x03})},
      {4, bytes_of({0xd6})},
      {8, bytes_of({0xd7})},
      {16, bytes_of({0xd8})},
      {17, bytes_of({0xc7, 17})},
      {256, bytes_of({0xc8, 0x01, 0x00})},
      {65536, bytes_of({0xc9, 0x00, 0x01, 0x00, 0x00})},
  };
  for (const auto& [n, header] : headers) {
    std::string payload(n, 'e');
    Writer counter;
    counter.ext(-5, payload.data(), n);
    std::string bytes(counter.size(), '\0');
    Writer w(reinterpret_cast<uint8_t*>(bytes.data()));
    w.ext(-5, payload.data(), n);
    ASSERT_EQ(bytes.size(), header.size() + 1 + n) << n;
    EXPECT_EQ(bytes.substr(0, header.size()), header) << n;
    EXPECT_EQ(static_cast<int8_t>(bytes[header.size()]), -5) << n;
    Reader r(u8(bytes), bytes.size());
    int8_t type = 0;
    EXPECT_EQ(r.ext(type), payload) << n;
    EXPECT_EQ(type, -5);
    EXPECT_TRUE(r.at_end());
  }
}

TEST(CodecTest, ArrayAndMapHeaders) {
  EXPECT_EQ(encode_to_string(std::vector<std::string>(15)).substr(0, 1), bytes_of({0x9f}));
  EXPECT_EQ(encode_to_string(std::vector<std::string>(16)).substr(0, 3), bytes_of({0xdc, 0, 16}));
  EXPECT_EQ(encode_to_string(std::vector<std::string>(65536)).substr(0, 5),
            bytes_of({0xdd, 0, 1, 0, 0}));
  std::map<int, int> m;
  for (int i = 0; i < 15; ++i) m[i] = i;
  EXPECT_EQ(encode_to_string(m).substr(0, 1), bytes_of({0x8f}));
  m[15] = 15;
  EXPECT_EQ(encode_to_string(m).substr(0, 3), bytes_of({0xde, 0, 16}));
  for (int i = 16; i < 65536; ++i) m[i] = i;
  std::string big = encode_to_string(m);
  EXPECT_EQ(big.substr(0, 5), bytes_of({0xdf, 0, 1, 0, 0}));
  EXPECT_EQ((decode_from<std::map<int, int>>(big)), m);
}

template <typename T>
void check_typed_array(size_t n) {
  std::vector<T> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<T>(i * 37 + 11);
  std::string bytes = encode_to_string(v);
  EXPECT_EQ(bytes.size(), encoded_size(v));
  Reader r(u8(bytes), bytes.size());
  int8_t type = 0;
  EXPECT_EQ(r.ext(type).size(), n * sizeof(T));
  EXPECT_EQ(type, detail::kExtTypedArrayBase + detail::element_code<T>());
  EXPECT_EQ(decode_from<std::vector<T>>(bytes), v);
}

TEST(CodecTest, TypedArraysRoundTrip) {
  for (size_t n : {size_t{0}, size_t{1}, size_t{2}, size_t{3}, size_t{1000}, size_t{1} << 20}) {
    check_typed_array<double>(n);
    check_typed_array<int32_t>(n);
    check_typed_array<uint8_t>(n);
  }
  check_typed_array<float>(100);
  check_typed_array<int8_t>(100);
  check_typed_array<int16_t>(100);
  check_typed_array<int64_t>(100);
  check_typed_array<uint16_t>(100);
  check_typed_array<uint32_t>(100);
  check_typed_array<uint64_t>(100);
  std::vector<double> special = {std::numeric_limits<double>::infinity(), -0.0,
                                 std::numeric_limits<double>::denorm_min()};
  expect_round_trip(special);
}

// Arrays of 4 GiB and more go as an array of ext chunks (MessagePack lengths stop at
// 2^32 - 1). Too big to build in a unit test, so the chunked form is written by hand.
TEST(CodecTest, ChunkedTypedArraysDecodeAsOne) {
  std::vector<int32_t> first{1, 2, 3}, second{4, 5};
  using C = Codec<std::vector<int32_t>>;
  std::string bytes(64, '\0');
  Writer w(reinterpret_cast<uint8_t*>(bytes.data()));
  w.array(2);
  w.ext(C::kType, first.data(), first.size() * sizeof(int32_t));
  w.ext(C::kType, second.data(), second.size() * sizeof(int32_t));
  bytes.resize(w.size());
  EXPECT_EQ(decode_from<std::vector<int32_t>>(bytes), (std::vector<int32_t>{1, 2, 3, 4, 5}));
  // A chunk of another element type is an error, not a reinterpretation.
  std::vector<double> other{1.5};
  std::string mixed(64, '\0');
  Writer m(reinterpret_cast<uint8_t*>(mixed.data()));
  m.array(2);
  m.ext(C::kType, first.data(), first.size() * sizeof(int32_t));
  m.ext(Codec<std::vector<double>>::kType, other.data(), sizeof(double));
  mixed.resize(m.size());
  EXPECT_THROW(decode_from<std::vector<int32_t>>(mixed), DecodeError);
}

TEST(CodecTest, TypedArrayPayloadIsRawLittleEndian) {
  if constexpr (std::endian::native != std::endian::little) GTEST_SKIP() << "big-endian host";
  std::vector<uint32_t> v = {0x01020304};
  // fixext4, type 16 + code of uint32_t, then the element's bytes as they sit in memory.
  EXPECT_EQ(encode_to_string(v), bytes_of({0xd6, 16 + 9, 0x04, 0x03, 0x02, 0x01}));
}

TEST(CodecTest, TypedArrayOfWrongElementTypeThrows) {
  std::string doubles = encode_to_string(std::vector<double>{1.0, 2.0});
  EXPECT_THROW(decode_from<std::vector<float>>(doubles), DecodeError);
  EXPECT_THROW(decode_from<std::vector<int64_t>>(doubles), DecodeError);
  // Three bytes tagged as doubles are not a whole number of elements.
  std::string ragged = bytes_of({0xc7, 3, 16 + 1, 1, 2, 3});
  EXPECT_NE(decode_error_message([&] {
              decode_from<std::vector<double>>(ragged);
            }).find("whole number of elements"),
            std::string::npos);
}

TEST(CodecTest, SequencesAndSets) {
  expect_round_trip(std::vector<std::string>{});
  expect_round_trip(std::vector<std::string>{"", "a", std::string(300, 'z')});
  expect_round_trip(std::vector<bool>{});
  expect_round_trip(std::vector<bool>{true, false, true, true});
  EXPECT_EQ(encode_to_string(std::vector<bool>{true, false}), bytes_of({0x92, 0xc3, 0xc2}));
  expect_round_trip(std::deque<int>{1, -2, 300000});
  expect_round_trip(std::list<std::string>{"x", "yy"});
  expect_round_trip(std::set<int64_t>{std::numeric_limits<int64_t>::min(), 0, 5});
  expect_round_trip(std::unordered_set<std::string>{"alpha", "beta", "gamma"});
  expect_round_trip(std::array<int, 3>{7, 8, 9});
  expect_round_trip(std::array<std::string, 0>{});
  EXPECT_THROW((decode_from<std::array<int, 4>>(encode_to_string(std::array<int, 3>{1, 2, 3}))),
               DecodeError);
}

TEST(CodecTest, MapsPairsTuples) {
  expect_round_trip(std::map<std::string, int>{});
  expect_round_trip(std::map<std::string, int>{{"one", 1}, {"two", 2}});
  expect_round_trip(std::unordered_map<int, std::vector<std::string>>{{1, {"a"}}, {-5, {}}});
  expect_round_trip(std::pair<int, std::string>{3, "three"});
  expect_round_trip(std::tuple<int, std::string, double, bool>{1, "s", 2.5, true});
  expect_round_trip(std::tuple<>{});
  EXPECT_EQ(encode_to_string(std::pair<int, bool>{1, false}), bytes_of({0x92, 0x01, 0xc2}));
  EXPECT_THROW(
      (decode_from<std::tuple<int, int, int>>(encode_to_string(std::tuple<int, int>{1, 2}))),
      DecodeError);
}

TEST(CodecTest, OptionalAndVariant) {
  expect_round_trip(std::optional<int>{});
  expect_round_trip(std::optional<int>{42});
  expect_round_trip(std::optional<std::string>{""});
  expect_round_trip(std::optional<std::vector<double>>{std::vector<double>{1.0}});
  using V = std::variant<int, std::string, std::vector<double>, std::monostate>;
  expect_round_trip(V{5});
  expect_round_trip(V{std::string("five")});
  expect_round_trip(V{std::vector<double>{5.0, 6.0}});
  EXPECT_EQ(round_trip(V{std::string("five")}).index(), 1u);
  // Index 7 of a 4-alternative variant.
  EXPECT_THROW((decode_from<std::variant<int, std::string>>(bytes_of({0x92, 0x07, 0x01}))),
               DecodeError);
}

TEST(CodecTest, NestedContainers) {
  std::map<std::string, std::vector<std::map<int, std::optional<std::string>>>> nested = {
      {"k", {{{1, "one"}, {2, std::nullopt}}, {}}},
      {"empty", {}},
  };
  expect_round_trip(nested);
  expect_round_trip(std::vector<std::vector<int>>{{1, 2}, {}, {3}});
  expect_round_trip(std::vector<std::pair<std::string, std::vector<uint8_t>>>{{"blob", {0, 255}}});
}

TEST(CodecTest, StructsWithFields) {
  Reading r{"station-7", 21.5, 60};
  expect_round_trip(r);
  EXPECT_EQ(encode_to_string(r), encode_to_string(std::make_tuple(std::string("station-7"), 21.5,
                                                                  std::optional<int32_t>(60))));
  Batch b;
  b.id = 99;
  b.readings = {r, Reading{"x", -1.0, std::nullopt}};
  b.series = {{"t", {1.0, 2.0}}, {"empty", {}}};
  expect_round_trip(b);
  expect_round_trip(std::vector<Reading>{r, r, Reading{}});
  // A struct with a field missing on the wire is rejected, not half-filled silently.
  EXPECT_THROW(decode_from<Reading>(encode_to_string(std::make_tuple(std::string("a"), 1.0))),
               DecodeError);
}

TEST(CodecTest, TypeMismatchNamesExpectedTypeAndOffset) {
  std::string text = encode_to_string(std::string("hi"));
  std::string message = decode_error_message([&] { decode_from<int>(text); });
  EXPECT_NE(message.find("expected integer"), std::string::npos) << message;
  EXPECT_NE(message.find("byte 0"), std::string::npos) << message;
  EXPECT_NE(message.find("0xa2"), std::string::npos) << message;

  std::string pair = encode_to_string(std::pair<int, int>{1, 2});
  message = decode_error_message([&] { decode_from<std::pair<int, std::string>>(pair); });
  EXPECT_NE(message.find("expected str"), std::string::npos) << message;
  EXPECT_NE(message.find("byte 2"), std::string::npos) << message;

  EXPECT_THROW(decode_from<std::string>(encode_to_string(5)), DecodeError);
  EXPECT_THROW(decode_from<bool>(encode_to_string(1)), DecodeError);
  EXPECT_THROW(decode_from<std::vector<std::string>>(encode_to_string(std::map<int, int>{})),
               DecodeError);
  EXPECT_THROW((decode_from<std::map<int, int>>(encode_to_string(std::vector<std::string>{}))),
               DecodeError);
  EXPECT_THROW(decode_from<std::vector<double>>(encode_to_string(std::vector<std::string>{})),
               DecodeError);
}

TEST(CodecTest, TrailingBytesAreRejected) {
  std::string bytes = encode_to_string(5) + bytes_of({0x00});
  std::string message = decode_error_message([&] { decode_from<int>(bytes); });
  EXPECT_NE(message.find("end of value"), std::string::npos) << message;
  EXPECT_NE(message.find("byte 1"), std::string::npos) << message;
}

TEST(CodecTest, EmptyBufferIsAnError) {
  std::string message = decode_error_message([] { decode_from<int>(std::string_view()); });
  EXPECT_NE(message.find("end of buffer"), std::string::npos) << message;
}

TEST(CodecTest, EveryTruncationThrows) {
  const Complex value = sample_complex();
  const std::string bytes = encode_to_string(value);
  ASSERT_EQ(decode_from<Complex>(bytes), value);
  for (size_t n = 0; n < bytes.size(); ++n) {
    // A fresh copy of exactly n bytes lets AddressSanitizer see any read past the end.
    std::vector<uint8_t> prefix(bytes.begin(), bytes.begin() + static_cast<ptrdiff_t>(n));
    EXPECT_THROW(decode_from<Complex>(prefix.data(), prefix.size()), DecodeError) << n;
    Reader r(prefix.data(), prefix.size());
    EXPECT_THROW(r.skip(), DecodeError) << n;
  }
}

TEST(CodecTest, HugeLengthHeadersFailFast) {
  // Headers that promise far more than the buffer holds.
  for (const std::string& bytes : {bytes_of({0xdb, 0xff, 0xff, 0xff, 0xff, 'a'}),
                                   bytes_of({0xdd, 0xff, 0xff, 0xff, 0xff, 0x01}),
                                   bytes_of({0xdf, 0xff, 0xff, 0xff, 0xff, 0x01, 0x01}),
                                   bytes_of({0xc9, 0xff, 0xff, 0xff, 0xff, 17, 0}),
                                   bytes_of({0xc6, 0xff, 0xff, 0xff, 0xff})}) {
    Reader r(u8(bytes), bytes.size());
    EXPECT_THROW(r.skip(), DecodeError);
  }
  EXPECT_THROW(decode_from<std::vector<int>>(bytes_of({0xdd, 0xff, 0xff, 0xff, 0xff, 0x01})),
               DecodeError);
  EXPECT_THROW(decode_from<std::vector<double>>(bytes_of({0xc9, 0xff, 0xff, 0xff, 0xff, 17, 0})),
               DecodeError);
}

TEST(CodecTest, SkipHandlesEveryType) {
  const std::string value = encode_to_string(sample_complex());
  std::string stream = value + encode_to_string(std::numeric_limits<uint64_t>::max()) +
                       encode_to_string(-5000000000LL) + encode_to_string(1.5f) +
                       encode_to_string(std::optional<int>{}) + encode_to_string(true) +
                       encode_to_string(std::string(70000, 's')) + bytes_of({0xc4, 0x01, 0x00}) +
                       encode_to_string(std::vector<uint8_t>(3)) + value;
  Reader r(u8(stream), stream.size());
  for (int i = 0; i < 9; ++i) r.skip();
  EXPECT_EQ(r.position(), stream.size() - value.size());
  Complex last;
  decode(r, last);
  EXPECT_EQ(last, sample_complex());
  EXPECT_TRUE(r.at_end());
  // 0xc1 is never used by MessagePack.
  std::string unused = bytes_of({0xc1});
  Reader bad(u8(unused), unused.size());
  EXPECT_THROW(bad.skip(), DecodeError);
}

TEST(CodecTest, SkipSurvivesDeepNesting) {
  // A million nested one-element arrays would overflow a recursive skip's stack.
  std::string deep(1000000, static_cast<char>(0x91));
  Reader truncated(u8(deep), deep.size());
  EXPECT_THROW(truncated.skip(), DecodeError);
  deep.push_back(static_cast<char>(0xc0));
  Reader complete(u8(deep), deep.size());
  complete.skip();
  EXPECT_TRUE(complete.at_end());
}

TEST(CodecTest, RandomBytesOnlyEverThrowDecodeError) {
  std::mt19937 rng(12345);
  const std::string valid = encode_to_string(sample_complex());
  size_t decoded = 0;
  for (int iteration = 0; iteration < 20000; ++iteration) {
    std::vector<uint8_t> buffer;
    if (iteration % 2 == 0) {
      buffer.resize(rng() % 96);
      for (auto& b : buffer) b = static_cast<uint8_t>(rng());
    } else {
      // Mutating a valid encoding reaches deeper into the decoder than pure noise.
      buffer.assign(valid.begin(), valid.end());
      const int mutations = 1 + static_cast<int>(rng() % 4);
      for (int m = 0; m < mutations; ++m)
        buffer[rng() % buffer.size()] = static_cast<uint8_t>(rng());
      if (rng() % 4 == 0) buffer.resize(rng() % buffer.size());
    }
    try {
      decode_from<Complex>(buffer.data(), buffer.size());
      ++decoded;
    } catch (const DecodeError&) {
    }
    try {
      Reader r(buffer.data(), buffer.size());
      r.skip();
    } catch (const DecodeError&) {
    }
  }
  // Some mutations only touch payload bytes and still decode; most must not.
  EXPECT_LT(decoded, 20000u);
}

TEST(CodecTest, EncodedSizeMatchesBytesWritten) {
  const Complex value = sample_complex();
  const size_t measured = encoded_size(value);
  std::vector<uint8_t> buffer(measured);
  Writer w(buffer.data());
  encode(w, value);
  EXPECT_EQ(w.size(), measured);
  EXPECT_EQ(encoded_size(std::string(65536, 'x')), 5u + 65536u);
  // ext16: tag, two length bytes, type.
  EXPECT_EQ(encoded_size(std::vector<double>(1000)), 4u + 8000u);
  EXPECT_EQ(encoded_size(std::optional<int>{}), 1u);
}

#ifdef GANTRY_TEST_MSGPACK

msgpack::object_handle unpack_gantry(const std::string& bytes) {
  msgpack::object_handle handle = msgpack::unpack(bytes.data(), bytes.size());
  return handle;
}

template <typename T>
std::string pack_msgpack(const T& value) {
  msgpack::sbuffer buffer;
  msgpack::pack(buffer, value);
  return std::string(buffer.data(), buffer.size());
}

const std::vector<int64_t> kSignedSamples = {0,
                                             1,
                                             31,
                                             32,
                                             127,
                                             128,
                                             255,
                                             256,
                                             65535,
                                             65536,
                                             -1,
                                             -31,
                                             -32,
                                             -33,
                                             -128,
                                             -129,
                                             -32768,
                                             -32769,
                                             INT32_MIN,
                                             int64_t{INT32_MIN} - 1,
                                             INT32_MAX,
                                             int64_t{UINT32_MAX},
                                             int64_t{UINT32_MAX} + 1,
                                             std::numeric_limits<int64_t>::min(),
                                             std::numeric_limits<int64_t>::max()};

TEST(MsgpackCompatTest, IntegersMatchMsgpackCxxByteForByte) {
  for (int64_t v : kSignedSamples) {
    std::string ours = encode_to_string(v);
    EXPECT_EQ(ours, pack_msgpack(v)) << v;
    EXPECT_EQ(unpack_gantry(ours)->as<int64_t>(), v) << v;
    EXPECT_EQ(decode_from<int64_t>(pack_msgpack(v)), v) << v;
  }
  for (uint64_t v : {uint64_t{0}, uint64_t{200}, uint64_t{70000}, uint64_t{1} << 40,
                     std::numeric_limits<uint64_t>::max()}) {
    EXPECT_EQ(encode_to_string(v), pack_msgpack(v)) << v;
    EXPECT_EQ(unpack_gantry(encode_to_string(v))->as<uint64_t>(), v) << v;
    EXPECT_EQ(decode_from<uint64_t>(pack_msgpack(v)), v) << v;
  }
  EXPECT_EQ(decode_from<int8_t>(pack_msgpack(int8_t{-100})), -100);
  EXPECT_EQ(decode_from<uint16_t>(pack_msgpack(uint16_t{40000})), 40000);
}

TEST(MsgpackCompatTest, FloatsAndScalars) {
  EXPECT_EQ(unpack_gantry(encode_to_string(2.5))->as<double>(), 2.5);
  EXPECT_EQ(unpack_gantry(encode_to_string(0.25f))->as<float>(), 0.25f);
  EXPECT_EQ(decode_from<double>(pack_msgpack(-1.0e100)), -1.0e100);
  EXPECT_EQ(decode_from<float>(pack_msgpack(3.5f)), 3.5f);
  EXPECT_TRUE(unpack_gantry(encode_to_string(true))->as<bool>());
  EXPECT_FALSE(decode_from<bool>(pack_msgpack(false)));
  EXPECT_TRUE(unpack_gantry(encode_to_string(std::optional<int>{}))->is_nil());
  EXPECT_FALSE(decode_from<std::optional<int>>(pack_msgpack(msgpack::type::nil_t())).has_value());
}

TEST(MsgpackCompatTest, StringsBothWays) {
  for (size_t n : {size_t{0}, size_t{31}, size_t{32}, size_t{255}, size_t{256}, size_t{65535},
                   size_t{65536}}) {
    std::string s(n, 'q');
    EXPECT_EQ(encode_to_string(s), pack_msgpack(s)) << n;
    EXPECT_EQ(unpack_gantry(encode_to_string(s))->as<std::string>(), s) << n;
    EXPECT_EQ(decode_from<std::string>(pack_msgpack(s)), s) << n;
  }
}

TEST(MsgpackCompatTest, ArraysBothWays) {
  for (size_t n : {size_t{0}, size_t{15}, size_t{16}, size_t{65535}, size_t{65536}}) {
    std::vector<std::string> strings(n, "s");
    EXPECT_EQ(encode_to_string(strings), pack_msgpack(strings)) << n;
    EXPECT_EQ(unpack_gantry(encode_to_string(strings))->as<std::vector<std::string>>(), strings);
    EXPECT_EQ(decode_from<std::vector<std::string>>(pack_msgpack(strings)), strings);
  }
  // msgpack-cxx packs a vector of numbers as a plain array; gantry reads that into a
  // non-typed-array container.
  std::vector<int64_t> numbers = {1, -1, 300, std::numeric_limits<int64_t>::min()};
  std::list<int64_t> as_list(numbers.begin(), numbers.end());
  EXPECT_EQ(decode_from<std::list<int64_t>>(pack_msgpack(numbers)), as_list);
  EXPECT_EQ(unpack_gantry(encode_to_string(as_list))->as<std::vector<int64_t>>(), numbers);
  std::vector<bool> flags = {true, false, true};
  EXPECT_EQ(unpack_gantry(encode_to_string(flags))->as<std::vector<bool>>(), flags);
  EXPECT_EQ(decode_from<std::vector<bool>>(pack_msgpack(flags)), flags);
  std::tuple<int, std::string, double> t{7, "seven", 7.5};
  EXPECT_EQ(encode_to_string(t), pack_msgpack(t));
  EXPECT_EQ((decode_from<std::tuple<int, std::string, double>>(pack_msgpack(t))), t);
}

TEST(MsgpackCompatTest, MapsBothWays) {
  std::map<std::string, int> small = {{"a", 1}, {"b", -2}};
  std::map<int, std::string> large;
  for (int i = 0; i < 70000; ++i) large[i] = std::to_string(i);
  EXPECT_EQ(encode_to_string(small), pack_msgpack(small));
  EXPECT_EQ(encode_to_string(large), pack_msgpack(large));
  EXPECT_EQ((unpack_gantry(encode_to_string(small))->as<std::map<std::string, int>>()), small);
  EXPECT_EQ((unpack_gantry(encode_to_string(large))->as<std::map<int, std::string>>()), large);
  EXPECT_EQ((decode_from<std::map<std::string, int>>(pack_msgpack(small))), small);
  EXPECT_EQ((decode_from<std::map<int, std::string>>(pack_msgpack(large))), large);
  std::map<std::string, std::vector<std::string>> nested = {{"k", {"x", "y"}}, {"e", {}}};
  EXPECT_EQ((decode_from<std::map<std::string, std::vector<std::string>>>(pack_msgpack(nested))),
            nested);
}

TEST(MsgpackCompatTest, BinAndExtBothWays) {
  for (size_t n : {size_t{0}, size_t{1}, size_t{2}, size_t{3}, size_t{4}, size_t{8}, size_t{16},
                   size_t{17}, size_t{255}, size_t{256}, size_t{65536}}) {
    std::string payload(n, 'p');
    msgpack::sbuffer buffer;
    msgpack::packer<msgpack::sbuffer> packer(buffer);
    packer.pack_ext(n, 42);
    packer.pack_ext_body(payload.data(), n);
    packer.pack_bin(n);
    packer.pack_bin_body(payload.data(), n);
    std::string theirs(buffer.data(), buffer.size());

    Writer counter;
    counter.ext(42, payload.data(), n);
    counter.bin(payload.data(), n);
    std::string ours(counter.size(), '\0');
    Writer w(reinterpret_cast<uint8_t*>(ours.data()));
    w.ext(42, payload.data(), n);
    w.bin(payload.data(), n);
    EXPECT_EQ(ours, theirs) << n;

    Reader r(u8(theirs), theirs.size());
    int8_t type = 0;
    EXPECT_EQ(r.ext(type), payload);
    EXPECT_EQ(type, 42);
    EXPECT_EQ(r.bin(), payload);
    EXPECT_TRUE(r.at_end());
  }
  std::vector<double> doubles = {1.0, 2.0, 3.0};
  msgpack::object_handle handle = unpack_gantry(encode_to_string(doubles));
  ASSERT_EQ(handle->type, msgpack::type::EXT);
  EXPECT_EQ(handle->via.ext.type(), detail::kExtTypedArrayBase + detail::element_code<double>());
  EXPECT_EQ(handle->via.ext.size, doubles.size() * sizeof(double));
}

struct PackedReading {
  std::string station;
  double temp = 0;
  std::optional<int32_t> humidity;
  MSGPACK_DEFINE(station, temp, humidity);
};

TEST(MsgpackCompatTest, StructsMatchMsgpackDefine) {
  Reading ours{"s1", 12.5, 80};
  PackedReading theirs{"s1", 12.5, 80};
  EXPECT_EQ(encode_to_string(ours), pack_msgpack(theirs));
  EXPECT_EQ(decode_from<Reading>(pack_msgpack(theirs)), ours);
  PackedReading back = unpack_gantry(encode_to_string(ours))->as<PackedReading>();
  EXPECT_EQ(back.station, "s1");
  EXPECT_EQ(back.humidity, std::optional<int32_t>(80));
}

#endif  // GANTRY_TEST_MSGPACK

}  // namespace
}  // namespace gantry
