#pragma once

// A strict reader of Prometheus' text exposition format (0.0.4) for tests: every line is
// a comment, a HELP or TYPE line, or a sample; it rejects what a Prometheus server or
// `promtool check metrics` would object to, naming the line.
#include <cmath>
#include <cstdlib>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace gantry::test_support {

struct PromSample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

struct PromFamily {
  std::string type;  // counter, gauge, histogram, summary, untyped
  std::string help;
  std::vector<PromSample> samples;
};

class PromParseError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

inline bool prom_metric_name_ok(const std::string& s) {
  if (s.empty()) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' || (i && c >= '0' && c <= '9')))
      return false;
  }
  return true;
}

inline bool prom_label_name_ok(const std::string& s) {
  if (s.empty() || s.rfind("__", 0) == 0) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (i && c >= '0' && c <= '9'))) return false;
  }
  return true;
}

/// Parses `text` into families by name. Throws PromParseError on: a malformed line, an
/// invalid metric or label name, a bad escape, a duplicate label, a sample before its
/// TYPE, HELP or TYPE given twice, a family's lines not contiguous, a counter not named
/// *_total or another type named so, a duplicate series, a value that is not a number, a missing final newline.
inline std::map<std::string, PromFamily> parse_prometheus(const std::string& text) {
  std::map<std::string, PromFamily> out;
  std::set<std::string> closed;  // families whose block ended
  std::string current;
  std::set<std::string> series;
  if (!text.empty() && text.back() != '\n') throw PromParseError("the exposition does not end with a newline");
  size_t pos = 0;
  int line_no = 0;
  auto fail = [&](const std::string& line, const std::string& why) {
    throw PromParseError("line " + std::to_string(line_no) + " '" + line + "': " + why);
  };
  auto enter = [&](const std::string& name, const std::string& line) {
    if (name != current) {
      if (closed.count(name)) fail(line, "family " + name + " continues after another family started");
      if (!current.empty()) closed.insert(current);
      current = name;
    }
  };
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    std::string line = text.substr(pos, end - pos);
    pos = end + 1;
    ++line_no;
    if (line.empty()) continue;
    if (line[0] == '#') {
      std::string rest = line.substr(1);
      if (rest.rfind(" HELP ", 0) == 0 || rest.rfind(" TYPE ", 0) == 0) {
        bool help = rest[1] == 'H';
        std::string body = rest.substr(6);
        size_t sp = body.find(' ');
        std::string name = body.substr(0, sp);
        std::string value = sp == std::string::npos ? "" : body.substr(sp + 1);
        if (!prom_metric_name_ok(name)) fail(line, "invalid metric name");
        enter(name, line);
        PromFamily& f = out[name];
        if (help) {
          if (!f.help.empty()) fail(line, "HELP given twice");
          if (!f.samples.empty()) fail(line, "HELP after samples");
          f.help = value.empty() ? " " : value;
        } else {
          if (!f.type.empty()) fail(line, "TYPE given twice");
          if (!f.samples.empty()) fail(line, "TYPE after samples");
          static const std::set<std::string> kTypes = {"counter", "gauge", "histogram", "summary", "untyped"};
          if (!kTypes.count(value)) fail(line, "unknown type '" + value + "'");
          bool total = name.size() >= 6 && name.substr(name.size() - 6) == "_total";
          if (value == "counter" && !total) fail(line, "a counter's name must end in _total");
          if (value != "counter" && total) fail(line, "only a counter's name may end in _total");
          f.type = value;
        }
      }
      continue;  // other comments are allowed
    }
    size_t i = 0;
    while (i < line.size() && line[i] != '{' && line[i] != ' ') ++i;
    PromSample s;
    s.name = line.substr(0, i);
    if (!prom_metric_name_ok(s.name)) fail(line, "invalid metric name");
    if (i < line.size() && line[i] == '{') {
      ++i;
      while (true) {
        if (i < line.size() && line[i] == '}') {
          ++i;
          break;
        }
        size_t eq = line.find('=', i);
        if (eq == std::string::npos) fail(line, "label without '='");
        std::string label = line.substr(i, eq - i);
        if (!prom_label_name_ok(label)) fail(line, "invalid label name '" + label + "'");
        i = eq + 1;
        if (i >= line.size() || line[i] != '"') fail(line, "label value not quoted");
        ++i;
        std::string value;
        while (true) {
          if (i >= line.size()) fail(line, "unterminated label value");
          char c = line[i++];
          if (c == '"') break;
          if (c == '\\') {
            if (i >= line.size()) fail(line, "dangling escape");
            char e = line[i++];
            if (e == 'n') value += '\n';
            else if (e == '\\' || e == '"') value += e;
            else fail(line, std::string("invalid escape \\") + e);
          } else {
            value += c;
          }
        }
        if (!s.labels.emplace(label, value).second) fail(line, "label '" + label + "' given twice");
        if (i < line.size() && line[i] == ',') ++i;
        else if (i >= line.size() || line[i] != '}') fail(line, "expected ',' or '}' after a label");
      }
    }
    if (i >= line.size() || line[i] != ' ') fail(line, "expected a space before the value");
    std::string value = line.substr(i + 1);
    size_t sp = value.find(' ');
    if (sp != std::string::npos) {
      std::string ts = value.substr(sp + 1);
      if (ts.empty() || ts.find_first_not_of("-0123456789") != std::string::npos) fail(line, "bad timestamp");
      value = value.substr(0, sp);
    }
    if (value == "NaN") s.value = std::nan("");
    else if (value == "+Inf") s.value = INFINITY;
    else if (value == "-Inf") s.value = -INFINITY;
    else {
      char* stop = nullptr;
      s.value = std::strtod(value.c_str(), &stop);
      if (value.empty() || *stop != '\0') fail(line, "value '" + value + "' is not a number");
    }
    // Histogram and summary samples carry suffixes of their family's name.
    std::string family = s.name;
    if (!out.count(family)) {
      for (const char* suffix : {"_bucket", "_sum", "_count"}) {
        std::string sfx = suffix;
        if (family.size() > sfx.size() && family.substr(family.size() - sfx.size()) == sfx &&
            out.count(family.substr(0, family.size() - sfx.size())))
          family = family.substr(0, family.size() - sfx.size());
      }
    }
    auto it = out.find(family);
    if (it == out.end() || it->second.type.empty()) fail(line, "sample before its family's TYPE line");
    enter(family, line);
    std::string key = s.name + "{";
    for (const auto& [k, v] : s.labels) key += k + "=" + v + ",";
    if (!series.insert(key).second) fail(line, "the same series twice");
    it->second.samples.push_back(std::move(s));
  }
  return out;
}

}  // namespace gantry::test_support
