#pragma once

#include <map>
#include <string>
#include <vector>

namespace gantry::internal {

/// Writes metrics in Prometheus' text exposition format (version 0.0.4): each family's
/// `# HELP` and `# TYPE` once, then its samples. Families are written in the order they
/// were first added. Not thread-safe.
///
///     PrometheusText m;
///     m.gauge("gantry_nodes", "Nodes of the cluster by state.", {{"state", "alive"}}, 2);
///     std::string body = m.str();
class PrometheusText {
 public:
  using Labels = std::vector<std::pair<std::string, std::string>>;

  /// Throws std::invalid_argument for an invalid name or label, a `name` ending in "_total"
  /// (reserved for counters), or a family written before with another type.
  void gauge(const std::string& name, const std::string& help, const Labels& labels, double value);
  /// `name` must end in "_total".
  void counter(const std::string& name, const std::string& help, const Labels& labels, double value);
  std::string str() const;

  /// Whether `name` is a valid metric name ([a-zA-Z_:][a-zA-Z0-9_:]*).
  static bool valid_metric_name(const std::string& name);
  /// Whether `name` is a valid label name ([a-zA-Z_][a-zA-Z0-9_]*, not starting "__").
  static bool valid_label_name(const std::string& name);
  /// A label value with backslash, double quote and line feed escaped.
  static std::string escape_label_value(const std::string& value);
  /// A sample value: NaN, +Inf, -Inf or the shortest text that reads back the same.
  static std::string format_value(double value);

 private:
  struct Family {
    std::string help;
    std::string type;
    std::vector<std::string> lines;
  };
  void add(const std::string& name, const std::string& help, const std::string& type, const Labels& labels,
           double value);
  std::vector<std::string> order_;
  std::map<std::string, Family> families_;
};

}  // namespace gantry::internal
