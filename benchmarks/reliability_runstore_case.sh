#!/bin/bash
# usage: runstore_case.sh CODE_ROOT  (in a folder with d.zarr and a trained r.zarr)
CODE=$1
nice -n 15 env PYTHONPATH=$CODE python -m pipeline.evaluate --store r.zarr --data d.zarr --workers 1 --dashboard-address :0 > ev.out 2> ev.err &
EV=$!
for i in $(seq 1 200); do ls r.zarr.reader-* >/dev/null 2>&1 && break; sleep 0.02; done
sleep 0.3
kill -STOP $EV
M1=$(sha256sum r.zarr/manifest.json | cut -c1-16)
nice -n 15 env PYTHONPATH=$CODE python -m pipeline.train --data d.zarr --store r.zarr --overwrite --hidden 8 --iterations 1 --workers 1 --dashboard-address :0 --no-progress > tr.out 2> tr.err
echo "train --overwrite rc=$?"; tail -1 tr.out; cat tr.err | tail -2
M2=$(sha256sum r.zarr/manifest.json | cut -c1-16)
echo "manifest before $M1 after $M2"
kill -CONT $EV; wait $EV; echo "evaluate rc=$?"; cat ev.out | tail -1; tail -2 ev.err
