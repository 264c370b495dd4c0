#!/usr/bin/env bash
# Checks the Grafana dashboard (docs/grafana/edge-agent.json) against the dashboard schema
# that Grafana itself publishes (@grafana/schema: the types generated from its CUE schema),
# with the TypeScript compiler: the JSON becomes an object literal typed as `Dashboard`, so
# an unknown key, a missing required one or a wrong type is an error. Needs node and npm;
# not part of .ci/run (the PromQL of every panel is checked there, by promtool, against a
# real scrape: tests/integration/observability.rs).
#
# Usage: tests/grafana/check.sh        exit 0 if the dashboard matches the schema
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp "$here/package.json" "$work/"
(cd "$work" && npm install --silent --no-audit --no-fund >/dev/null)
{
    echo "import type { Dashboard } from '@grafana/schema/dist/esm/raw/dashboard/x/Dashboard_types.gen';"
    printf 'export const dashboard: Dashboard = '
    cat "$root/docs/grafana/edge-agent.json"
    echo ';'
} >"$work/check.ts"
(cd "$work" && npx tsc --noEmit --strict --skipLibCheck --moduleResolution bundler --module esnext check.ts)
echo "docs/grafana/edge-agent.json matches @grafana/schema $(node -p "require('$work/node_modules/@grafana/schema/package.json').version")'s Dashboard"
