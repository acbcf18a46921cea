#!/bin/sh
# Interleaved A/B rounds; order of libraries alternates each round.
cd /tmp/qh3-eval
R=${1:-5}
for r in $(seq 1 $R); do
  if [ $((r % 2)) -eq 1 ]; then libs="aioquic qh3"; else libs="qh3 aioquic"; fi
  for kind in bulk msg1k msg1k_batch; do
    for l in $libs; do ./venv/bin/python bench.py $l $kind 1; done
  done
  for l in $libs qh3-x25519; do ./venv/bin/python bench.py $l handshake 3; done
done
