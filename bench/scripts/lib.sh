# Sourced by the scripts here (with `joch` and `joch-bench` on PATH): the canned upstream, a
# one-node cluster, a process's CPU ticks.

# The canned upstream in the background, in DIR; sets $upstream. On exit it is stopped, and the
# cluster of the current directory (if any) brought down.
start_canned() {
  local dir=$1
  joch-bench canned --addr-file "$dir/canned.addr" >/dev/null 2>&1 &
  canned=$!
  trap 'kill $canned 2>/dev/null || true; joch dev down >/dev/null 2>&1 || true' EXIT
  for _ in $(seq 100); do [ -s "$dir/canned.addr" ] && break; sleep 0.1; done
  upstream="http://$(cat "$dir/canned.addr")/mcp"
}

# `joch dev up --nodes 1 [ARGS...]` in the current directory with the canned upstream registered
# as `canned`; sets $pid, $url (its MCP base URL) and $tok (the agent token).
node_up() {
  joch dev up --nodes 1 "$@" >/dev/null 2>&1
  joch mcp add canned --endpoint "$upstream" >/dev/null
  pid=$(field "c['nodes'][0]['pid']"); url=$(field "c['nodes'][0]['mcp_url']"); tok=$(field "c['agent_token']")
}

field() { python3 -c "import json,sys;c=json.load(open('.joch-dev/cluster.json'));print(eval(sys.argv[1]))" "$1"; }

# User + system CPU ticks (1/100 s) of process $1 so far.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
