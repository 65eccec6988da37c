# Sourced by the bench scripts: where results go, how a run is indexed, what machine it
# ran on. results_dir: prints results/<date>-<rev> (created). results_row SCRIPT HEADLINE
# REPORT: adds a row to results/README.md, creating it with its header the first time.
# machine: "N cores (CPU model), M GiB". ensure_wrk: installs wrk (Debian) when missing.
# free_port: a TCP port on 127.0.0.1 that was free a moment ago.
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
machine() {
  echo "$(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(free -g | awk '/Mem:/ {print $2}') GiB"
}
ensure_wrk() {
  command -v wrk >/dev/null && return
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
}
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
