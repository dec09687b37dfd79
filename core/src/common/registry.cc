#include "gantry/detail/registry.h"

#include <cctype>
#include <cstdlib>

namespace gantry::detail {
namespace {

bool is_identifier_char(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '_';
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front())) != 0) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back())) != 0) s.remove_suffix(1);
  return s;
}

std::string clean_name(std::string_view piece) {
  piece = trim(piece);
  if (!piece.empty() && piece.front() == '&') piece = trim(piece.substr(1));
  return std::string(piece);
}

// Length of the operator token starting at `i` (after `operator` and any spaces), so that
// `&C::operator<` does not open a bracket and `&C::operator,` does not split the list.
size_t operator_symbol_length(std::string_view list, size_t i) {
  // Longest first, so `>>=` is not read as `>`.
  static constexpr std::string_view kTokens[] = {
      "->*", "<<=", ">>=", "<=>", "()", "[]", "->", "<<", ">>", "<=", ">=", "==", "!=",
      "&&",  "||",  "++",  "--",  "+=", "-=", "*=", "/=", "%=", "^=", "&=", "|=", "+",
      "-",   "*",   "/",   "%",   "^",  "&",  "|",  "~",  "!",  "=",  "<",  ">",  ","};
  const std::string_view rest = list.substr(i);
  for (std::string_view token : kTokens)
    if (rest.starts_with(token)) return token.size();
  return 0;
}

}  // namespace

Registry& Registry::instance() {
  static Registry registry;
  return registry;
}

void Registry::add_function(const void* address, FunctionEntry entry) {
  std::lock_guard<std::mutex> lock(mu_);
  std::string name = entry.name;
  auto [it, inserted] = functions_.emplace(name, std::move(entry));
  // A second function under a taken name is not recorded against its address: resolving
  // it to the first function's name would run the wrong code on the worker.
  if (inserted) names_.emplace(address, std::move(name));
}

void Registry::add_factory(const void* address, FactoryEntry entry) {
  std::lock_guard<std::mutex> lock(mu_);
  std::string name = entry.name;
  auto [it, inserted] = factories_.emplace(name, std::move(entry));
  if (inserted) names_.emplace(address, std::move(name));
}

void Registry::add_method(MethodEntry entry) {
  std::lock_guard<std::mutex> lock(mu_);
  std::string name = entry.name;
  methods_.emplace(std::move(name), std::move(entry));
}

const FunctionEntry* Registry::find_function(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = functions_.find(name);
  return it == functions_.end() ? nullptr : &it->second;
}

const FactoryEntry* Registry::find_factory(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = factories_.find(name);
  return it == factories_.end() ? nullptr : &it->second;
}

const MethodEntry* Registry::find_method(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = methods_.find(name);
  return it == methods_.end() ? nullptr : &it->second;
}

std::string Registry::name_of(const void* address) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = names_.find(address);
  return it == names_.end() ? std::string() : it->second;
}

std::string demangle(const char* mangled) {
  if (mangled == nullptr) return {};
  int status = 0;
  char* readable = abi::__cxa_demangle(mangled, nullptr, nullptr, &status);
  if (status != 0 || readable == nullptr) {
    std::free(readable);
    return mangled;
  }
  std::string result(readable);
  std::free(readable);
  return result;
}

std::vector<std::string> split_remote_names(std::string_view list) {
  std::vector<std::string> names;
  // Open brackets, innermost last. '>' closes only a '<' on top, so a comparison inside
  // a template argument such as `C<(a > b)>` leaves the count alone.
  std::string open;
  size_t start = 0;
  size_t i = 0;
  while (i < list.size()) {
    const char c = list[i];
    if (c == 'o' && list.compare(i, 8, "operator") == 0 &&
        (i == 0 || !is_identifier_char(list[i - 1])) &&
        (i + 8 == list.size() || !is_identifier_char(list[i + 8]))) {
      i += 8;
      while (i < list.size() && std::isspace(static_cast<unsigned char>(list[i])) != 0) ++i;
      i += operator_symbol_length(list, i);
      continue;
    }
    switch (c) {
      case '(':
      case '[':
      case '{':
      case '<':
        open.push_back(c);
        break;
      case '>':
        if (!open.empty() && open.back() == '<') open.pop_back();
        break;
      case ')':
      case ']':
      case '}': {
        const char opener = c == ')' ? '(' : c == ']' ? '[' : '{';
        // Drops any '<' that was a less-than inside these brackets.
        size_t at = open.rfind(opener);
        if (at != std::string::npos) open.resize(at);
        break;
      }
      case ',':
        if (open.empty()) {
          names.push_back(clean_name(list.substr(start, i - start)));
          start = i + 1;
        }
        break;
      default:
        break;
    }
    ++i;
  }
  std::string last = clean_name(list.substr(start));
  // An empty list, or a trailing comma, adds no name.
  if (!last.empty()) names.push_back(std::move(last));
  return names;
}

}  // namespace gantry::detail
