#!/usr/bin/env bash
# Rewrites every *.expected.json from its payload with `compound-gateway parse`. Review the diff!
set -euo pipefail
cd "$(dirname "$0")/../.."
for meta in tests/golden/*/*.meta.json; do
  base=${meta%.meta.json}
  payload=$(ls "$base".* | grep -v -e '\.meta\.json$' -e '\.expected\.json$')
  dialect=$(basename "$(dirname "$meta")")
  ct=$(python3 -c "import json;print(json.load(open('$meta')).get('content_type',''))")
  topic=$(python3 -c "import json;print(json.load(open('$meta')).get('topic',''))")
  args=(--dialect "$dialect" --received-at 2026-06-01T00:00:00+00:00 --device-id 36010400011990000001)
  [ -n "$ct" ] && args+=(--content-type "$ct")
  [ -n "$topic" ] && args+=(--topic "$topic")
  .venv/bin/compound-gateway parse "${args[@]}" "$payload" > "$base.expected.json"
done
