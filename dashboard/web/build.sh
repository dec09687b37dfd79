#!/usr/bin/env bash
# Builds the dashboard's web app into dist/ (index.html, app.js, app.css), which is committed
# and embedded by the C++ build. Needs node and npm; installs the pinned packages from
# package-lock.json into node_modules/ first.
set -euo pipefail
cd "$(dirname "$0")"
npm ci --no-audit --no-fund
npm run build
