# Sourced by the bench scripts: where results go and how a run is indexed.
# results_dir: prints results/<date>-<rev> (created). results_row SCRIPT HEADLINE REPORT:
# adds a row to results/README.md, creating it with its header the first time.
results_dir() {
  local dir
  dir="results/$(date -u +%Y-%m-%d)-$(git rev-parse --short HEAD)"
  mkdir -p "$dir"
  echo "$dir"
}
results_row() {
  local index=results/README.md dir
  dir=$(results_dir)
  [ -f "$index" ] || printf '# Results\n\nEach row: a benchmark run, the script that reproduces it, and its report (which names\nthe machine and the exact commands).\n\n| date | rev | script | headline | report |\n|---|---|---|---|---|\n' >"$index"
  echo "| $(date -u +%Y-%m-%d) | $(git rev-parse --short HEAD) | $1 | $2 | [$3](${dir#results/}/$3) |" >>"$index"
}
