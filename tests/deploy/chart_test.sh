#!/usr/bin/env bash
# One check of the Helm chart for one values file, as ctest runs it (label deploy):
#
#   chart_test.sh RENDER BIN_DIR good [--files DIR] VALUES...
#       render, lint, validate: all must pass
#   chart_test.sh RENDER BIN_DIR bad [--files DIR] VALUES
#       must be refused with the message in the file's "# expect: ..." line
#
# --files DIR renders a copy of the chart with DIR laid over it (DIR wins), so the
# templates that load files/grafana and files/prometheus are checked with fixtures
# whether or not the chart ships those files; without --files the chart's own are used.
#
# RENDER is the renderer built from tests/deploy/render, BIN_DIR holds the four service
# binaries (their --help is what the chart's flags are checked against). The chart's
# values.yaml is always the base; VALUES files are coalesced over it in order.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
chart=$root/helm/parley
render=$1 bin_dir=$2 mode=$3
shift 3
overlay=
if [[ "${1:-}" == "--files" ]]; then overlay=$2; shift 2; fi

[[ -d "$here/node_modules/kubernetes-models" ]] || {
  echo "tests/deploy/node_modules is missing: run scripts/test (it runs npm ci there)" >&2; exit 1; }
command -v yamllint >/dev/null || { echo "yamllint is missing: run scripts/setup" >&2; exit 1; }

out=$(mktemp -d "${PARLEY_TEST_TMPDIR:-/tmp}/chart.XXXXXX")
trap 'rm -rf "$out"' EXIT
if [[ -n "$overlay" ]]; then
  mkdir "$out/chart"
  cp -r "$chart/." "$out/chart/"
  cp -r "$overlay/." "$out/chart/"
  chart=$out/chart
fi
mkdir "$out/rendered"
args=()
for f in "$@"; do args+=(-f "$f"); done

case "$mode" in
  good)
    "$render" -chart "$chart" -out "$out/rendered" "${args[@]}"
    yamllint --strict -c "$here/yamllint.yaml" "$out/rendered/parley/templates"
    # The chart's own YAML by the same rules, except that a values file needs no "---".
    yamllint --strict -d "{extends: $here/yamllint.yaml, rules: {document-start: disable}}" \
      "$chart/values.yaml" "$chart/ci" "$chart/Chart.yaml" "$@"
    node "$here/check_manifests.mjs" "$out/rendered/render.json" "$chart" "$bin_dir"
    ;;
  bad)
    expect=$(sed -n 's/^# expect: //p' "$1" | head -1)
    [[ -n "$expect" ]] || { echo "$1 has no '# expect: ' line" >&2; exit 1; }
    set +e
    result=$("$render" -chart "$chart" -out "$out/rendered" "${args[@]}" 2>&1 &&
             node "$here/check_manifests.mjs" "$out/rendered/render.json" "$chart" "$bin_dir" 2>&1)
    status=$?
    set -e
    echo "$result"
    if [[ $status -eq 0 ]]; then echo "FAIL: $1 was accepted; expected: $expect" >&2; exit 1; fi
    if [[ "$result" != *"$expect"* ]]; then echo "FAIL: $1 was refused, but not with: $expect" >&2; exit 1; fi
    echo "refused as expected: $expect"
    ;;
  *) echo "mode must be good or bad" >&2; exit 2 ;;
esac
