#include "dashboard/prometheus_text.h"

#include <charconv>
#include <cmath>
#include <stdexcept>

namespace gantry::internal {

bool PrometheusText::valid_metric_name(const std::string& name) {
  if (name.empty()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    char c = name[i];
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' || (i > 0 && c >= '0' && c <= '9');
    if (!ok) return false;
  }
  return true;
}

bool PrometheusText::valid_label_name(const std::string& name) {
  if (name.empty() || name.rfind("__", 0) == 0) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    char c = name[i];
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (i > 0 && c >= '0' && c <= '9');
    if (!ok) return false;
  }
  return true;
}

std::string PrometheusText::escape_label_value(const std::string& value) {
  std::string out;
  out.reserve(value.size());
  for (char c : value) {
    if (c == '\\') out += "\\\\";
    else if (c == '"') out += "\\\"";
    else if (c == '\n') out += "\\n";
    else out += c;
  }
  return out;
}

std::string PrometheusText::format_value(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  char buf[32];
  auto r = std::to_chars(buf, buf + sizeof buf, value);
  return std::string(buf, r.ptr);
}

namespace {
bool ends_in_total(const std::string& name) {
  return name.size() >= 6 && name.compare(name.size() - 6, 6, "_total") == 0;
}
}  // namespace

void PrometheusText::gauge(const std::string& name, const std::string& help, const Labels& labels, double value) {
  // Prometheus reserves the suffix for counters (promtool flags it).
  if (ends_in_total(name)) throw std::invalid_argument("gauge " + name + " must not end in _total");
  add(name, help, "gauge", labels, value);
}


void PrometheusText::counter(const std::string& name, const std::string& help, const Labels& labels, double value) {
  if (!ends_in_total(name)) throw std::invalid_argument("counter " + name + " must end in _total");
  add(name, help, "counter", labels, value);
}

void PrometheusText::add(const std::string& name, const std::string& help, const std::string& type,
                         const Labels& labels, double value) {
  if (!valid_metric_name(name)) throw std::invalid_argument("invalid metric name '" + name + "'");
  auto [it, fresh] = families_.try_emplace(name);
  Family& f = it->second;
  if (fresh) {
    f.help = help;
    f.type = type;
    order_.push_back(name);
  } else if (f.type != type) {
    throw std::invalid_argument("metric " + name + " written as both " + f.type + " and " + type);
  }
  std::string line = name;
  if (!labels.empty()) {
    line += '{';
    for (size_t i = 0; i < labels.size(); ++i) {
      if (!valid_label_name(labels[i].first))
        throw std::invalid_argument("invalid label name '" + labels[i].first + "' on " + name);
      if (i) line += ',';
      line += labels[i].first + "=\"" + escape_label_value(labels[i].second) + '"';
    }
    line += '}';
  }
  line += ' ' + format_value(value);
  f.lines.push_back(std::move(line));
}

std::string PrometheusText::str() const {
  std::string out;
  for (const std::string& name : order_) {
    const Family& f = families_.at(name);
    std::string help;
    for (char c : f.help) help += c == '\n' ? std::string("\\n") : c == '\\' ? std::string("\\\\") : std::string(1, c);
    out += "# HELP " + name + ' ' + help + '\n';
    out += "# TYPE " + name + ' ' + f.type + '\n';
    for (const std::string& line : f.lines) out += line + '\n';
  }
  return out;
}

}  // namespace gantry::internal
