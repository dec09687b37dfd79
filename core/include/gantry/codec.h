#pragma once

// Values travel in the MessagePack wire format. gantry's own encoder first measures a
// value, then writes it straight into its destination (an inline buffer or a shared-memory
// object), so a large object is written once. Vectors of arithmetic types are one
// MessagePack `ext` whose payload is the raw little-endian elements: no per-element work.

#include <array>
#include <cstdint>
#include <cstring>
#include <deque>
#include <limits>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <variant>
#include <vector>

#include "gantry/errors.h"

namespace gantry {

/// Serialises a value. With a null output it only counts bytes (`size()`), which is how
/// callers size a buffer before writing into it.
class Writer {
 public:
  explicit Writer(uint8_t* out = nullptr) : out_(out) {}

  size_t size() const { return pos_; }
  /// True when this writer only counts bytes. An encoder must count exactly the bytes it
  /// later writes, but may skip work that only produces their contents (making a tensor
  /// contiguous, say): while counting, `bin` and `raw` never read their data pointer.
  bool counting() const { return out_ == nullptr; }

  void nil() { byte(0xc0); }
  void boolean(bool v) { byte(v ? 0xc3 : 0xc2); }
  void uint(uint64_t v);
  void sint(int64_t v);
  void f32(float v);
  void f64(double v);
  void str(std::string_view s);
  void bin(const void* data, size_t n);
  void array(size_t n);
  void map(size_t n);
  void ext(int8_t type, const void* data, size_t n);
  void raw(const void* data, size_t n) {
    if (out_ != nullptr && n != 0) std::memcpy(out_ + pos_, data, n);
    pos_ += n;
  }

 private:
  void byte(uint8_t b) {
    if (out_ != nullptr) out_[pos_] = b;
    ++pos_;
  }
  template <typename U>
  void big_endian(U v);
  void header(uint8_t fix_base, size_t fix_limit, uint8_t c8, uint8_t c16, uint8_t c32, size_t n);

  uint8_t* out_;
  size_t pos_ = 0;
};

/// Reads what `Writer` wrote, checking every length against the buffer. Malformed input
/// throws `gantry::DecodeError` naming what was expected and where.
class Reader {
 public:
  Reader(const uint8_t* data, size_t size) : data_(data), size_(size) {}

  bool at_end() const { return pos_ == size_; }
  size_t position() const { return pos_; }
  /// The MessagePack type byte of the next value, without consuming it.
  uint8_t peek() const;
  bool next_is_nil() const { return pos_ < size_ && data_[pos_] == 0xc0; }

  void nil();
  bool boolean();
  int64_t sint();
  uint64_t uint();
  double f64();
  std::string_view str();
  std::string_view bin();
  size_t array();
  size_t map();
  /// Reads an ext header and returns its payload; `type` receives the ext type.
  std::string_view ext(int8_t& type);
  /// Skips one whole value of any type.
  void skip();

  [[noreturn]] void fail(const std::string& expected) const;

 private:
  const uint8_t* take(size_t n);
  uint8_t byte() { return *take(1); }
  template <typename U>
  U big_endian();
  /// Reads the length that follows a str/bin/array/map/ext header byte.
  size_t length_after(uint8_t tag, uint8_t c8, uint8_t c16, uint8_t c32);

  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

/// While alive on a thread, tells codecs that the value decoded on that thread lies in
/// `[data, data + size)` and that `keep_alive` keeps those bytes readable, unchanged by
/// anyone else and private to this process: a write through them (a copy-on-write
/// mapping) changes neither the object nor any other reader. A codec of a large type may
/// then alias the bytes instead of copying them (gantry/train/tensor.h does, for tensors).
/// `ObjectRef::get` opens one over a value mapped from this node's shared-memory store;
/// call arguments and inline values are decoded without one. Scopes nest; not shared
/// between threads.
class DecodeSource {
 public:
  DecodeSource(const uint8_t* data, size_t size, std::shared_ptr<void> keep_alive);
  ~DecodeSource();
  DecodeSource(const DecodeSource&) = delete;
  DecodeSource& operator=(const DecodeSource&) = delete;

  /// For a codec: a handle that keeps the `n` bytes at `p` as described above for as long
  /// as the handle lives, when they lie inside the innermost source open on this thread;
  /// null otherwise (then copy them). Holding the handle keeps the whole object in the
  /// store.
  ///
  ///     if (auto keep = gantry::DecodeSource::retain(p, n)) alias(p, n, std::move(keep));
  ///     else copy(p, n);
  static std::shared_ptr<void> retain(const void* p, size_t n);

 private:
  const uint8_t* data_;
  size_t size_;
  std::shared_ptr<void> keep_alive_;
  const DecodeSource* previous_;
};

/// `Codec<T>` encodes and decodes one type. Specialise it for a type you cannot change;
/// for your own structs, `GANTRY_FIELDS` is one line.
template <typename T, typename Enable = void>
struct Codec {
  template <typename U>
  static constexpr bool kAlwaysFalse = false;
  static_assert(kAlwaysFalse<T>,
                "gantry cannot serialise this type: add GANTRY_FIELDS(member, ...) to the struct, "
                "or specialise gantry::Codec<T> with encode(Writer&, const T&) and "
                "decode(Reader&, T&)");
};

namespace detail {

// Ext type codes. Typed arrays use kTypedArrayBase + element code.
inline constexpr int8_t kExtObjectRef = 1;
inline constexpr int8_t kExtActorHandle = 2;
inline constexpr int8_t kExtTypedArrayBase = 16;

template <typename T>
constexpr int8_t element_code() {
  if constexpr (std::is_same_v<T, float>) return 0;
  else if constexpr (std::is_same_v<T, double>) return 1;
  else if constexpr (std::is_same_v<T, long double>) return 2;
  else if constexpr (std::is_signed_v<T>) return static_cast<int8_t>(3 + (sizeof(T) == 1 ? 0 : sizeof(T) == 2 ? 1 : sizeof(T) == 4 ? 2 : 3));
  else return static_cast<int8_t>(7 + (sizeof(T) == 1 ? 0 : sizeof(T) == 2 ? 1 : sizeof(T) == 4 ? 2 : 3));
}

template <typename T, typename = void>
struct HasFields : std::false_type {};
template <typename T>
struct HasFields<T, std::void_t<decltype(std::declval<T&>().gantry_fields())>> : std::true_type {};

template <typename T>
struct IsPair : std::false_type {};
template <typename A, typename B>
struct IsPair<std::pair<A, B>> : std::true_type {};

template <typename T>
inline constexpr bool kIsPlainArithmetic =
    std::is_arithmetic_v<T> && !std::is_same_v<T, bool>;

}  // namespace detail

/// Encodes `value`. Measure with a null-output `Writer` first to size the buffer.
template <typename T>
void encode(Writer& w, const T& value) {
  Codec<T>::encode(w, value);
}

/// Decodes into `out`.
template <typename T>
void decode(Reader& r, T& out) {
  Codec<T>::decode(r, out);
}

/// Bytes `value` takes encoded.
template <typename T>
size_t encoded_size(const T& value) {
  Writer counter;
  encode(counter, value);
  return counter.size();
}

/// Encodes `value` into a string.
template <typename T>
std::string encode_to_string(const T& value) {
  std::string out(encoded_size(value), '\0');
  Writer w(reinterpret_cast<uint8_t*>(out.data()));
  encode(w, value);
  return out;
}

/// Decodes a whole buffer into a `T`; trailing bytes are an error.
template <typename T>
T decode_from(const uint8_t* data, size_t size) {
  Reader r(data, size);
  T out{};
  decode(r, out);
  if (!r.at_end()) r.fail("end of value");
  return out;
}

template <typename T>
T decode_from(std::string_view bytes) {
  return decode_from<T>(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
}

template <>
struct Codec<bool> {
  static void encode(Writer& w, bool v) { w.boolean(v); }
  static void decode(Reader& r, bool& v) { v = r.boolean(); }
};

template <typename T>
struct Codec<T, std::enable_if_t<std::is_integral_v<T> && !std::is_same_v<T, bool>>> {
  static void encode(Writer& w, T v) {
    if constexpr (std::is_signed_v<T>) w.sint(v);
    else w.uint(v);
  }
  static void decode(Reader& r, T& v) {
    if constexpr (std::is_signed_v<T>) {
      int64_t x = r.sint();
      if (x < static_cast<int64_t>(std::numeric_limits<T>::min()) ||
          x > static_cast<int64_t>(std::numeric_limits<T>::max()))
        r.fail("integer within the range of the target type");
      v = static_cast<T>(x);
    } else {
      uint64_t x = r.uint();
      if (x > static_cast<uint64_t>(std::numeric_limits<T>::max()))
        r.fail("integer within the range of the target type");
      v = static_cast<T>(x);
    }
  }
};

template <typename T>
struct Codec<T, std::enable_if_t<std::is_floating_point_v<T>>> {
  static void encode(Writer& w, T v) {
    if constexpr (std::is_same_v<T, float>) w.f32(v);
    else w.f64(static_cast<double>(v));
  }
  static void decode(Reader& r, T& v) { v = static_cast<T>(r.f64()); }
};

template <typename T>
struct Codec<T, std::enable_if_t<std::is_enum_v<T>>> {
  using U = std::underlying_type_t<T>;
  static void encode(Writer& w, T v) { Codec<U>::encode(w, static_cast<U>(v)); }
  static void decode(Reader& r, T& v) {
    U u{};
    Codec<U>::decode(r, u);
    v = static_cast<T>(u);
  }
};

template <>
struct Codec<std::string> {
  static void encode(Writer& w, const std::string& v) { w.str(v); }
  static void decode(Reader& r, std::string& v) { v = std::string(r.str()); }
};

/// Vectors of arithmetic types: one ext holding the raw elements.
template <typename T, typename A>
struct Codec<std::vector<T, A>, std::enable_if_t<detail::kIsPlainArithmetic<T>>> {
  static_assert(sizeof(T) != 16 || std::is_floating_point_v<T>, "128-bit integers are not supported");
  // MessagePack lengths stop at 4 GiB - 1: larger arrays go as an array of ext chunks.
  static constexpr size_t kChunkBytes = size_t{1} << 30;
  static constexpr int8_t kType = static_cast<int8_t>(detail::kExtTypedArrayBase + detail::element_code<T>());
  static void encode(Writer& w, const std::vector<T, A>& v) {
    const size_t bytes = v.size() * sizeof(T);
    const auto* p = reinterpret_cast<const uint8_t*>(v.data());
    if (bytes <= 0xffffffffu) return w.ext(kType, p, bytes);
    w.array((bytes + kChunkBytes - 1) / kChunkBytes);
    for (size_t offset = 0; offset < bytes; offset += kChunkBytes)
      w.ext(kType, p + offset, std::min(kChunkBytes, bytes - offset));
  }
  static void decode(Reader& r, std::vector<T, A>& v) {
    std::vector<std::string_view> chunks;
    uint8_t tag = r.peek();
    bool chunked = (tag & 0xf0) == 0x90 || tag == 0xdc || tag == 0xdd;
    size_t n = chunked ? r.array() : 1, bytes = 0;
    if (n == 0) r.fail("typed array (ext, or a non-empty array of ext chunks)");
    for (size_t i = 0; i < n; ++i) {
      int8_t type = 0;
      chunks.push_back(r.ext(type));
      if (type != kType) r.fail("typed array of the requested element type");
      bytes += chunks.back().size();
    }
    if (bytes % sizeof(T) != 0) r.fail("typed array with a whole number of elements");
    v.resize(bytes / sizeof(T));
    auto* out = reinterpret_cast<uint8_t*>(v.data());
    for (std::string_view c : chunks) {
      if (!c.empty()) std::memcpy(out, c.data(), c.size());
      out += c.size();
    }
  }
};

namespace detail {

// Sequence containers and sets of anything else: a MessagePack array.
template <typename C, typename Insert>
void decode_sequence(Reader& r, C& c, Insert insert) {
  size_t n = r.array();
  c.clear();
  for (size_t i = 0; i < n; ++i) {
    typename C::value_type item{};
    Codec<typename C::value_type>::decode(r, item);
    insert(c, std::move(item));
  }
}

template <typename C>
void encode_sequence(Writer& w, const C& c) {
  w.array(c.size());
  for (const auto& item : c) Codec<typename C::value_type>::encode(w, item);
}

template <typename M>
void encode_map(Writer& w, const M& m) {
  w.map(m.size());
  for (const auto& [k, v] : m) {
    Codec<typename M::key_type>::encode(w, k);
    Codec<typename M::mapped_type>::encode(w, v);
  }
}

template <typename M>
void decode_map(Reader& r, M& m) {
  size_t n = r.map();
  m.clear();
  for (size_t i = 0; i < n; ++i) {
    typename M::key_type k{};
    typename M::mapped_type v{};
    Codec<typename M::key_type>::decode(r, k);
    Codec<typename M::mapped_type>::decode(r, v);
    m.emplace(std::move(k), std::move(v));
  }
}

template <typename Tuple, size_t... I>
void encode_tuple(Writer& w, const Tuple& t, std::index_sequence<I...>) {
  w.array(sizeof...(I));
  (Codec<std::decay_t<std::tuple_element_t<I, Tuple>>>::encode(w, std::get<I>(t)), ...);
}

template <typename Tuple, size_t... I>
void decode_tuple(Reader& r, Tuple&& t, std::index_sequence<I...>) {
  using Plain = std::decay_t<Tuple>;
  if (r.array() != sizeof...(I)) r.fail("array of " + std::to_string(sizeof...(I)) + " fields");
  (Codec<std::decay_t<std::tuple_element_t<I, Plain>>>::decode(r, std::get<I>(t)), ...);
}

}  // namespace detail

template <typename T, typename A>
struct Codec<std::vector<T, A>, std::enable_if_t<!detail::kIsPlainArithmetic<T>>> {
  static void encode(Writer& w, const std::vector<T, A>& v) { detail::encode_sequence(w, v); }
  static void decode(Reader& r, std::vector<T, A>& v) {
    detail::decode_sequence(r, v, [](auto& c, T&& x) { c.push_back(std::move(x)); });
  }
};

template <typename T>
struct Codec<std::deque<T>> {
  static void encode(Writer& w, const std::deque<T>& v) { detail::encode_sequence(w, v); }
  static void decode(Reader& r, std::deque<T>& v) {
    detail::decode_sequence(r, v, [](auto& c, T&& x) { c.push_back(std::move(x)); });
  }
};

template <typename T>
struct Codec<std::list<T>> {
  static void encode(Writer& w, const std::list<T>& v) { detail::encode_sequence(w, v); }
  static void decode(Reader& r, std::list<T>& v) {
    detail::decode_sequence(r, v, [](auto& c, T&& x) { c.push_back(std::move(x)); });
  }
};

template <typename T, typename C, typename A>
struct Codec<std::set<T, C, A>> {
  static void encode(Writer& w, const std::set<T, C, A>& v) { detail::encode_sequence(w, v); }
  static void decode(Reader& r, std::set<T, C, A>& v) {
    detail::decode_sequence(r, v, [](auto& c, T&& x) { c.insert(std::move(x)); });
  }
};

template <typename T, typename H, typename E, typename A>
struct Codec<std::unordered_set<T, H, E, A>> {
  static void encode(Writer& w, const std::unordered_set<T, H, E, A>& v) { detail::encode_sequence(w, v); }
  static void decode(Reader& r, std::unordered_set<T, H, E, A>& v) {
    detail::decode_sequence(r, v, [](auto& c, T&& x) { c.insert(std::move(x)); });
  }
};

template <typename T, size_t N>
struct Codec<std::array<T, N>> {
  static void encode(Writer& w, const std::array<T, N>& v) {
    w.array(N);
    for (const auto& x : v) Codec<T>::encode(w, x);
  }
  static void decode(Reader& r, std::array<T, N>& v) {
    if (r.array() != N) r.fail("array of " + std::to_string(N) + " elements");
    for (auto& x : v) Codec<T>::decode(r, x);
  }
};

template <typename K, typename V, typename C, typename A>
struct Codec<std::map<K, V, C, A>> {
  static void encode(Writer& w, const std::map<K, V, C, A>& m) { detail::encode_map(w, m); }
  static void decode(Reader& r, std::map<K, V, C, A>& m) { detail::decode_map(r, m); }
};

template <typename K, typename V, typename H, typename E, typename A>
struct Codec<std::unordered_map<K, V, H, E, A>> {
  static void encode(Writer& w, const std::unordered_map<K, V, H, E, A>& m) { detail::encode_map(w, m); }
  static void decode(Reader& r, std::unordered_map<K, V, H, E, A>& m) { detail::decode_map(r, m); }
};

template <typename A, typename B>
struct Codec<std::pair<A, B>> {
  static void encode(Writer& w, const std::pair<A, B>& p) {
    w.array(2);
    Codec<A>::encode(w, p.first);
    Codec<B>::encode(w, p.second);
  }
  static void decode(Reader& r, std::pair<A, B>& p) {
    if (r.array() != 2) r.fail("array of 2 elements (pair)");
    Codec<A>::decode(r, p.first);
    Codec<B>::decode(r, p.second);
  }
};

template <typename... Ts>
struct Codec<std::tuple<Ts...>> {
  static void encode(Writer& w, const std::tuple<Ts...>& t) {
    detail::encode_tuple(w, t, std::index_sequence_for<Ts...>{});
  }
  static void decode(Reader& r, std::tuple<Ts...>& t) {
    detail::decode_tuple(r, t, std::index_sequence_for<Ts...>{});
  }
};

template <typename T>
struct Codec<std::optional<T>> {
  static void encode(Writer& w, const std::optional<T>& v) {
    if (v) Codec<T>::encode(w, *v);
    else w.nil();
  }
  static void decode(Reader& r, std::optional<T>& v) {
    if (r.next_is_nil()) {
      r.nil();
      v.reset();
      return;
    }
    v.emplace();
    Codec<T>::decode(r, *v);
  }
};

/// A variant is [index, value].
template <typename... Ts>
struct Codec<std::variant<Ts...>> {
  static void encode(Writer& w, const std::variant<Ts...>& v) {
    w.array(2);
    w.uint(v.index());
    std::visit([&](const auto& x) { Codec<std::decay_t<decltype(x)>>::encode(w, x); }, v);
  }
  static void decode(Reader& r, std::variant<Ts...>& v) {
    if (r.array() != 2) r.fail("array of 2 elements (variant)");
    uint64_t index = r.uint();
    if (index >= sizeof...(Ts)) r.fail("variant index below " + std::to_string(sizeof...(Ts)));
    decode_alternative(r, v, index, std::index_sequence_for<Ts...>{});
  }

 private:
  template <size_t... I>
  static void decode_alternative(Reader& r, std::variant<Ts...>& v, uint64_t index,
                                 std::index_sequence<I...>) {
    ((index == I ? (void)Codec<std::variant_alternative_t<I, std::variant<Ts...>>>::decode(
                       r, v.template emplace<I>())
                 : (void)0),
     ...);
  }
};

/// Structs that declare `GANTRY_FIELDS(...)`: a MessagePack array of the listed members.
template <typename T>
struct Codec<T, std::enable_if_t<detail::HasFields<T>::value>> {
  static void encode(Writer& w, const T& v) {
    auto fields = const_cast<T&>(v).gantry_fields();
    detail::encode_tuple(w, fields, std::make_index_sequence<std::tuple_size_v<decltype(fields)>>{});
  }
  static void decode(Reader& r, T& v) {
    auto fields = v.gantry_fields();
    detail::decode_tuple(r, fields, std::make_index_sequence<std::tuple_size_v<decltype(fields)>>{});
  }
};

}  // namespace gantry

/// Makes a struct serialisable: list its members in one line inside the struct.
///
///     struct Reading { std::string station; double temp; GANTRY_FIELDS(station, temp); };
#define GANTRY_FIELDS(...) \
  auto gantry_fields() { return std::tie(__VA_ARGS__); }
