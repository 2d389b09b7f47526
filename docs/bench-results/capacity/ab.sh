#!/bin/bash
# Interleaved A/B of the capacity work (2026-12-01): the code before it (a worktree of 395413e at
# /tmp/old: `git worktree add /tmp/old 395413e`, run with this checkout's venv, which still had
# llama-cpp-python installed) vs this checkout, one server at a time, level by level, both measured
# by this checkout's bench (callers in their own processes) with --url.
# usage: ab.sh OUTDIR "1:12 4:24 8:32" [webrtc|ws]
out=$1; levels=$2; transport=${3:-webrtc}
mkdir -p $out
for spec in $levels; do
  level=${spec%%:*}; turns=${spec##*:}
  for variant in old new; do
    if [ $variant = old ]; then dir=/tmp/old; port=8091; else dir=/work/main; port=8092; fi
    (cd $dir && exec /work/main/.venv/bin/python -m realtime.cli serve --config configs/default.yaml --port $port > $out/server-$variant-$level.log 2>&1) &
    for i in $(seq 60); do curl -sf localhost:$port/healthz >/dev/null && break; sleep 1; done
    pid=$(pgrep -f "realtime.cli serve --config configs/default.yaml --port $port" | head -1)
    echo "== $variant x $level (pid $pid) $(date +%T) load $(cut -d' ' -f1 /proc/loadavg)"
    (cd /work/main && timeout 900 .venv/bin/python -m bench --url http://127.0.0.1:$port --server-pid $pid --transport $transport \
        --concurrency $level --min-turns $turns --deadline-s 800 --reply-timeout-s 10 --out $out/$variant-$level 2>&1 | grep -E "p50|refused|Error" )
    kill $pid; sleep 3; pkill -f "port $port" ; sleep 2
  done
done
