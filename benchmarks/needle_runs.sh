#!/usr/bin/env bash
# The quality runs of docs/RESULTS.md, as run on 2026-11-21/22 (each `bench run` resumes where its folder's
# records stop, so the script can be stopped and started again). Long: on 2 CPU cores one 60-minute stream
# takes one preset 20 to 60 minutes. The session ran these lines in parallel pairs, from fixed checkouts
# (commits in RESULTS.md).
set -eu
cd "$(dirname "$0")/.."
export PATH=$PWD/.venv/bin:$PATH
videokv bench make-needles --out bench-out/needles --minutes 1,5,30,60 --questions 8 --seed 0
run() { videokv bench run bench-out/needles/needles.json --model offline --fps 0.5 --frame-tokens 12 --evidence-kind text "$@"; }
# the papers' presets
run --out bench-out/needles-run --memory full,window,uniform,rekv,streamkv,mukv,x2l --videos needles-1min,needles-5min
run --out bench-out/needles-run --memory rekv,window,uniform,x2l --videos needles-60min
run --out bench-out/needles-run --memory full,window,uniform,rekv,streamkv,mukv,x2l --videos needles-30min
# with the subtitle lines matching the question's words
run --out bench-out/needles-text --memory-set text_k=4 --memory rekv,streamkv,mukv,x2l --videos needles-1min,needles-5min
run --out bench-out/needles-text --memory-set text_k=4 --memory rekv,mukv --videos needles-30min,needles-60min
# rekv + text_k with its resident store tier capped (the rest spills to disk)
run --out bench-out/needles-budget --memory-set text_k=4 --memory-set host_bytes=6900000 --memory rekv --videos needles-5min
videokv bench report bench-out/needles-run --docs docs --name needles
videokv bench report bench-out/needles-text --docs docs --name needles_text
