#!/usr/bin/env bash
# CPU per request and latency of one release node with and without the audit trail
# (joch dev up [--no-audit], the canned upstream, joch-bench load at 2000 rps for 8 s, node CPU
# ticks from /proc). Build first: cargo build --release -p joch-node -p joch-bench.
set -euo pipefail
T=$HOME/.cache/joch-target/release
J=$T/joch; B=$T/joch-bench
rm -f /tmp/canned.addr
$B canned --listen 127.0.0.1:0 --addr-file /tmp/canned.addr & CP=$!
# The upstream writes its address once it listens.
until [ -s /tmp/canned.addr ]; do sleep 0.05; done
ADDR=$(cat /tmp/canned.addr)
for round in 1 2; do
for mode in audit noaudit; do
  D=/tmp/lc-$mode; rm -rf $D
  extra=""; [ $mode = noaudit ] && extra="--no-audit"
  $J dev up --nodes 1 --no-demo --dir $D $extra >/dev/null
  export JOCH_TOKEN=$(python3 -c "import json;print(json.load(open('$D/cluster.json'))['admin_token'])")
  export JOCH_CA=$(python3 -c "import json;print(json.load(open('$D/cluster.json'))['ca'])")
  ADMIN=$(python3 -c "import json;print(json.load(open('$D/cluster.json'))['nodes'][0]['admin_url'])")
  MCP=$(python3 -c "import json;print(json.load(open('$D/cluster.json'))['nodes'][0]['mcp_url'])")
  PID=$(python3 -c "import json;print(json.load(open('$D/cluster.json'))['nodes'][0]['pid'])")
  AT=$(python3 -c "import json;print(json.load(open('$D/cluster.json'))['agent_token'])")
  $J --server $ADMIN mcp add canned --endpoint http://$ADDR/mcp >/dev/null
  c0=$(awk '{print $14+$15}' /proc/$PID/stat)
  out=$($B load --target $MCP/mcp/canned --rate 2000 --duration 8 --token $AT)
  c1=$(awk '{print $14+$15}' /proc/$PID/stat)
  n=$(echo "$out" | python3 -c "import json,sys;o=json.load(sys.stdin);print(o.get('completed', o.get('ok', 0)))")
  echo "$mode round $round: cpu_ticks=$((c1-c0)) $(echo "$out" | python3 -c "import json,sys;o=json.load(sys.stdin);print({k:o[k] for k in o if k in ('completed','ok','errors','p50_ms','p99_ms','latency','achieved_rps')})")"
  $J dev down --dir $D >/dev/null
done
done
kill $CP
