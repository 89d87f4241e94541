#!/usr/bin/env bash
# The quality runs of docs/RESULTS.md (needle streams and task families) on the current code: the streams,
# presets and settings of the runs recorded there (their exact commands and the commit each ran at are in
# RESULTS.md), one bench-out/ folder per setting, then their reports into bench-out/reports/
# (`--docs docs/reports --force` would replace the committed ones). Each `bench run` resumes where its folder's
# records stop, so the script can be stopped and started again. Long: hours on 2 CPU cores (on the 60-minute
# stream one preset took 5 to 20 minutes there). The speech streams need espeak-ng: their commands are in
# docs/RESULTS.md, "Speech needle streams".
set -eu
cd "$(dirname "$0")/.."
export PATH=$PWD/.venv/bin:$PATH
videokv bench make-needles --out bench-out/needles --minutes 1,5 --questions 8 --seed 0
videokv bench make-needles --out bench-out/needles30 --minutes 1,5,30 --questions 8 --seed 0
videokv bench make-needles --out bench-out/needles60 --minutes 1,5,30,60 --questions 8 --seed 0
run() { videokv bench run --model offline --fps 0.5 --frame-tokens 12 --evidence-kind text "$@"; }
# needles: 1 and 5 minutes, every preset (videokv here with its former top-64 budget)
run bench-out/needles/needles.json --out bench-out/needles-run3 --memory-set retrieve.base.k=64 --memory videokv --videos needles-1min,needles-5min
run bench-out/needles/needles.json --out bench-out/needles-run3-paper --memory streamkv,x2l,rekv,full,window,uniform --videos needles-1min,needles-5min
run bench-out/needles/needles.json --out bench-out/needles-run3-mukv --memory mukv --videos needles-1min,needles-5min
# needles: 30 minutes, the paper presets; 60 minutes, the paper presets; 30 and 60 minutes, the baselines
run bench-out/needles30/needles.json --out bench-out/needles-run3-30 --memory rekv,x2l,streamkv,mukv --videos needles-30min
run bench-out/needles60/needles.json --out bench-out/needles-run4-60 --memory x2l,rekv,streamkv,mukv --videos needles-60min
run bench-out/needles60/needles.json --out bench-out/needles-run4-base30 --memory window,uniform,full --videos needles-30min
run bench-out/needles60/needles.json --out bench-out/needles-run4-base60 --memory window,uniform,full --videos needles-60min
# needles: videokv (top-32, the preset) at every length
run bench-out/needles60/needles.json --out bench-out/var-k32 --memory videokv --videos needles-1min,needles-5min,needles-30min,needles-60min
# task families at 5 and 30 minutes
videokv bench make-needles --out bench-out/tasks --name tasks \
    --tasks retrieval,ordering,counting,temporal,multihop --minutes 5,30 --questions 10 --seed 0
run bench-out/tasks/tasks.json --out bench-out/tasks-run --videos tasks-5min --memory rekv,x2l,streamkv,mukv,uniform,window,full
run bench-out/tasks/tasks.json --out bench-out/tasks-run --videos tasks-30min --memory rekv,x2l,streamkv,mukv
run bench-out/tasks/tasks.json --out bench-out/tasks-k32 --memory videokv --videos tasks-5min,tasks-30min
for folder in needles-run3 needles-run3-paper needles-run3-mukv needles-run3-30 needles-run4-60 needles-run4-base30 \
    needles-run4-base60 var-k32 tasks-run tasks-k32; do
  videokv bench report "bench-out/$folder" --docs bench-out/reports --force
done
