#pragma once

#include <cstddef>
#include <string_view>

namespace gantry::internal {

/// A file of the dashboard's single-page app, compiled into the binary from
/// dashboard/web/dist (built from dashboard/web/src with `dashboard/web/build.sh`).
struct Asset {
  const char* data;
  size_t size;
  const char* content_type;
};

/// The asset named `name` ("index.html", "app.js", "app.css"), or null.
const Asset* find_asset(std::string_view name);

}  // namespace gantry::internal
