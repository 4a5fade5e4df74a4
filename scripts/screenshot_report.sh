#!/usr/bin/env bash
# Render the HTML report of a run to a PNG with headless Chromium (for docs, or to check the page).
#
#   scripts/screenshot_report.sh RUN_DIR OUT.png
#
# RUN_DIR is a run directory with a report made by `wmss report RUN_DIR` (RUN_DIR/report/report.html);
# a path to a report.html works too. Environment: CHROMIUM (the browser; default: chromium,
# chromium-browser or google-chrome on PATH; Debian: apt-get install chromium), WIDTH (default 1280)
# and HEIGHT (default 3000) of the window, in CSS pixels: the page is cut at HEIGHT.
set -euo pipefail

if [ $# -ne 2 ]; then
    echo "usage: $0 RUN_DIR OUT.png" >&2
    exit 2
fi
html=$1
[ -d "$html" ] && html=$html/report/report.html
if [ ! -f "$html" ]; then
    echo "$0: no report at $html; make it first with: wmss report ${1}" >&2
    exit 2
fi
browser=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)}
if [ -z "$browser" ]; then
    echo "$0: no Chromium found; install it (Debian: apt-get install chromium) or set CHROMIUM=/path" >&2
    exit 2
fi
out=$(realpath -m "$2")
mkdir -p "$(dirname "$out")"
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --no-first-run \
    --screenshot="$out" --window-size="${WIDTH:-1280},${HEIGHT:-3000}" \
    "file://$(realpath "$html")" 2>/dev/null
[ -s "$out" ] || { echo "$0: Chromium wrote no screenshot to $out" >&2; exit 1; }
echo "screenshot: $out"
