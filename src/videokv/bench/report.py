"""`videokv bench report`: a Markdown table and plots from a `bench run` folder.

Rows are presets, column groups are the dataset's videos (for needle streams: one per stream length). A
cell's accuracy counts answered questions only; questions a preset skipped (e.g. `full` past the model's
context) are shown as "n/a" with the reason in a note. A second table breaks accuracy and evidence recall
down by task family (the questions' `task`: retrieval, ordering, counting, temporal, multihop, other;
records written before the field existed count as retrieval).
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

from videokv.bench.dataset import TASKS
from videokv.bench.runner import read_records
from videokv.errors import InputError

PRESET_ORDER = ("full", "window", "uniform", "rekv", "streamkv", "mukv", "x2l", "videokv")


def _mean(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


def _median(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarize(folder: str | Path) -> tuple[dict, list[dict]]:
    """(run.json, one summary row per (preset, video)) of a run folder."""
    folder = Path(folder)
    run_file = folder / "run.json"
    if not run_file.exists():
        raise InputError(f"{folder} is not a `videokv bench run` folder (no run.json)")
    run = json.loads(run_file.read_text())
    rows = []
    files = sorted((folder / "results").glob("*.jsonl"))
    if not files:
        raise InputError(f"{folder}/results holds no results yet; run `videokv bench run` first")
    for f in files:
        by_video: dict[str, list[dict]] = defaultdict(list)
        for r in read_records(f):
            by_video[r["video_id"]].append(r)
        for video, recs in by_video.items():
            answered = [r for r in recs if "skipped" not in r]
            skipped = [r for r in recs if "skipped" in r]
            rows.append(
                {
                    "preset": f.stem,
                    "video_id": video,
                    "questions": len(recs),
                    "answered": len(answered),
                    "skipped": len(skipped),
                    "skip_reason": skipped[0]["skipped"] if skipped else None,
                    "accuracy": _mean([float(r["correct"]) for r in answered]),
                    "evidence_recall": _mean([r["evidence_recall"] for r in answered]),
                    "resident_mib": _mean([r["resident_bytes"] / 2**20 for r in answered]),
                    "max_resident_mib": max((r["resident_bytes"] / 2**20 for r in answered), default=None),
                    "offloaded_mib": _mean([r["offloaded_bytes"] / 2**20 for r in answered]),
                    "stream_tokens": max((r["stream_tokens"] for r in answered), default=None),
                    "stream_seconds": max(
                        (r["stream_seconds"] for r in recs if "stream_seconds" in r), default=None
                    ),
                    "context_tokens": _median([r["context_tokens"] for r in answered]),
                    "ttft_s": _median([r["ttft_s"] for r in answered]),
                    "answer_s": _median([r["answer_s"] for r in answered]),
                    "retrieval_s": _median([r["retrieval_s"] for r in answered]),
                    "ingest_fps": _median([r["ingest_fps"] for r in answered]),
                    "peak_rss_mib": max((r["peak_rss_bytes"] / 2**20 for r in answered), default=None),
                }
            )
    order = {p: i for i, p in enumerate(PRESET_ORDER)}
    rows.sort(key=lambda r: (order.get(r["preset"], 99), r["preset"], r["video_id"]))
    return run, rows


def _video_seconds(rows: list[dict]) -> dict[str, float]:
    """Each video's stream length in the per-family rows: the latest question's clock over its rows."""
    seconds: dict[str, float] = defaultdict(float)
    for r in rows:
        seconds[r["video_id"]] = max(seconds[r["video_id"]], r.get("stream_seconds") or 0.0)
    return seconds


def summarize_tasks(folder: str | Path) -> list[dict]:
    """One row per (preset, video, task family) of a run folder: questions, answered, accuracy, evidence
    recall, tokens attended (median) and resident / offloaded KV (MiB, mean at question time)."""
    rows = []
    for f in sorted((Path(folder) / "results").glob("*.jsonl")):
        groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
        for r in read_records(f):
            groups[(r["video_id"], r.get("task") or "retrieval")].append(r)
        for (video, task), recs in groups.items():
            answered = [r for r in recs if "skipped" not in r]
            rows.append(
                {
                    "preset": f.stem,
                    "video_id": video,
                    "task": task,
                    "questions": len(recs),
                    "answered": len(answered),
                    "accuracy": _mean([float(r["correct"]) for r in answered]),
                    "evidence_recall": _mean([r["evidence_recall"] for r in answered]),
                    "context_tokens": _median([r.get("context_tokens") for r in answered]),
                    "resident_mib": _mean(
                        [r["resident_bytes"] / 2**20 for r in answered if "resident_bytes" in r]
                    ),
                    "offloaded_mib": _mean(
                        [r["offloaded_bytes"] / 2**20 for r in answered if "offloaded_bytes" in r]
                    ),
                    "stream_seconds": max(
                        (r["stream_seconds"] for r in recs if "stream_seconds" in r), default=0.0
                    ),
                }
            )
    order = {p: i for i, p in enumerate(PRESET_ORDER)}
    tasks = {t: i for i, t in enumerate(TASKS)}
    length = _video_seconds(rows)
    rows.sort(
        key=lambda r: (
            order.get(r["preset"], 99),
            r["preset"],
            length[r["video_id"]],
            r["video_id"],
            tasks.get(r["task"], 99),
            r["task"],
        )
    )
    return rows


def tasks_markdown(rows: list[dict]) -> str:
    """The per-family tables, one per video (stream length): presets as rows, task families as columns,
    then the tokens the answers attended to (median) and the resident / offloaded KV (mean)."""
    known = {t: i for i, t in enumerate(TASKS)}
    tasks = sorted({r["task"] for r in rows}, key=lambda t: (known.get(t, 99), t))
    seconds = _video_seconds(rows)
    videos = sorted(seconds, key=lambda v: (seconds[v], v))
    cell = {(r["preset"], r["video_id"], r["task"]): r for r in rows}
    lines = [
        "**By task family**: accuracy (correct / answered) and evidence recall (share of the evidence spans "
        "the answer attended to, mean); tokens attended (median of the families' medians) and "
        "resident / offloaded KV (MiB, mean at question time):",
    ]
    for v in videos:
        presets = list(dict.fromkeys(r["preset"] for r in rows if r["video_id"] == v))
        lines += [
            "",
            f"*{v}*",
            "",
            "| preset | " + " | ".join(tasks) + " | attended tokens | resident / offloaded MiB |",
            "|---|" + "---|" * (len(tasks) + 2),
        ]
        for p in presets:
            cells, mine = [], []
            for t in tasks:
                r = cell.get((p, v, t))
                if r is None:
                    cells.append("-")
                    continue
                mine.append(r)
                if r["answered"] == 0:
                    cells.append("n/a")
                else:
                    ok = round(r["accuracy"] * r["answered"])
                    recall = _fmt(r["evidence_recall"] and 100 * r["evidence_recall"], ".0f")
                    cells.append(f"{100 * r['accuracy']:.0f}% ({ok}/{r['answered']}), recall {recall}%")
            attended = _median([r["context_tokens"] for r in mine])
            resident = _mean([r["resident_mib"] for r in mine])
            offloaded = _mean([r["offloaded_mib"] for r in mine])
            cells.append(_fmt(attended, ".0f"))
            cells.append(f"{_fmt(resident, '.1f')} / {_fmt(offloaded, '.1f')}")
            lines.append(f"| `{p}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(x: float | None, spec: str, na: str = "n/a") -> str:
    return na if x is None else format(x, spec)


def _video_order(rows: list[dict]) -> list[str]:
    seconds = defaultdict(float)
    for r in rows:
        seconds[r["video_id"]] = max(seconds[r["video_id"]], r["stream_seconds"] or 0.0)
    return sorted(seconds, key=lambda v: (seconds[v], v))


def markdown(
    run: dict, rows: list[dict], command: str | None = None, task_rows: list[dict] | None = None
) -> str:
    """The results as Markdown: an accuracy table, the per-family table (`task_rows`, from
    `summarize_tasks`), then per-video detail (memory, recall, latency)."""
    videos = _video_order(rows)
    presets = list(dict.fromkeys(r["preset"] for r in rows))
    cell = {(r["preset"], r["video_id"]): r for r in rows}
    s = run["settings"]
    lines = [
        f"Model `{s['model']}`, {s['fps']} fps, `--frame-tokens {s['frame_tokens']}` (visual tokens per "
        f"temporal patch of 2 frames, Qwen2-VL family), dataset "
        f"`{Path(s['dataset']).name}`; machine: {run['machine']['processor']}, {run['machine']['cpus']} CPUs "
        f"({run['machine']['platform']}); started {run['started']}.",
        "",
    ]
    if s.get("memory_set"):
        overrides = " ".join(f"`{pair}`" for pair in s["memory_set"])
        lines += [f"Every preset with the memory overrides (`--memory-set`) {overrides}.", ""]
    if command:
        lines += ["```bash", command, "```", ""]
    lines += [
        "**Accuracy** (correct / answered; n/a: skipped) and **resident KV** (MiB, mean at question time):",
        "",
        "| preset | " + " | ".join(videos) + " |",
        "|---|" + "---|" * len(videos),
    ]
    notes = []
    for p in presets:
        cells = []
        for v in videos:
            r = cell.get((p, v))
            if r is None:
                cells.append("-")
            elif r["answered"] == 0:
                cells.append("n/a")
                notes.append(f"`{p}` on {v}: {r['skip_reason']}")
            else:
                ok = round(r["accuracy"] * r["answered"])
                cells.append(
                    f"{100 * r['accuracy']:.0f}% ({ok}/{r['answered']}), {r['resident_mib']:.1f} MiB"
                )
        lines.append(f"| `{p}` | " + " | ".join(cells) + " |")
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    if task_rows:
        lines += ["", tasks_markdown(task_rows).rstrip("\n")]
    lines += [
        "",
        "**Detail** per preset and video: evidence recall (share of evidence spans the answer attended to), "
        "resident / offloaded KV (the store: every block kept, in memory or spilled to disk), stream tokens, "
        "tokens the answer attended to (median: sinks + retrieved blocks, or the whole context), "
        "time to first answer token and whole answer (median), "
        "retrieval time (median), ingest frames per second, peak process memory.",
        "",
        "| preset | video | acc | recall | resident MiB | offloaded MiB | stream tokens | attended tokens "
        "| TTFT s | answer s | retrieval s | ingest fps | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| `{r['preset']}` | {r['video_id']} | {_fmt(r['accuracy'] and 100 * r['accuracy'], '.0f')} "
            f"| {_fmt(r['evidence_recall'] and 100 * r['evidence_recall'], '.0f')} "
            f"| {_fmt(r['resident_mib'], '.1f')} | {_fmt(r['offloaded_mib'], '.1f')} "
            f"| {_fmt(r['stream_tokens'], 'd')} | {_fmt(r['context_tokens'], '.0f')} "
            f"| {_fmt(r['ttft_s'], '.2f')} | {_fmt(r['answer_s'], '.2f')} "
            f"| {_fmt(r['retrieval_s'], '.3f')} | {_fmt(r['ingest_fps'], '.1f')} "
            f"| {_fmt(r['peak_rss_mib'], '.0f')} |"
        )
    return "\n".join(lines) + "\n"


def plots(rows: list[dict], out: Path, name: str) -> list[Path]:
    """accuracy vs resident memory, and answer latency vs stream length; PNG files in `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    presets = list(dict.fromkeys(r["preset"] for r in rows))
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for p in presets:
        pts = [(r["resident_mib"], 100 * r["accuracy"]) for r in rows if r["preset"] == p and r["answered"]]
        if pts:
            xs, ys = zip(*pts)
            ax.scatter(xs, ys, label=p)
    ax.set_xscale("log")
    ax.set_xlabel("resident KV memory at question time (MiB, log)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-5, 105)
    ax.set_title("Accuracy vs resident memory (one point per stream)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths.append(out / f"{name}_accuracy_vs_memory.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for p in presets:
        pts = sorted(
            (r["stream_seconds"] / 60, r["ttft_s"]) for r in rows if r["preset"] == p and r["answered"]
        )
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o", label=p)
    ax.set_xlabel("stream length at question time (minutes)")
    ax.set_ylabel("time to first answer token (s, median)")
    ax.set_title("Answer latency vs stream length")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths.append(out / f"{name}_latency_vs_length.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def report_files(docs: str | Path, name: str) -> list[Path]:
    """The files `write_report` writes for `name` into `docs`: the Markdown, its two plots, the JSON."""
    docs = Path(docs)
    return [
        docs / f"{name}.md",
        docs / f"{name}_accuracy_vs_memory.png",
        docs / f"{name}_latency_vs_length.png",
        docs / f"{name}.json",
    ]


def write_report(
    folder: str | Path, docs: str | Path = "docs/reports", name: str | None = None, force: bool = False
) -> list[Path]:
    """Write `<docs>/<name>.md`, its plots and `<docs>/<name>.json` from run `folder`; returns the files
    written. A file of that name already there (a committed report, another run's) is an InputError before
    anything is written, unless `force`."""
    folder = Path(folder)
    run, rows = summarize(folder)
    name = name or folder.name
    docs = Path(docs)
    existing = [p for p in report_files(docs, name) if p.exists()]
    if existing and not force:
        raise InputError(
            f"the report would overwrite {', '.join(map(str, existing))}: give another --name or --docs "
            "folder, or --force to replace them"
        )
    docs.mkdir(parents=True, exist_ok=True)
    md = docs / f"{name}.md"
    pngs = plots(rows, docs, name)
    task_rows = summarize_tasks(folder)
    body = f"# Benchmark: {name}\n\n" + markdown(run, rows, run_commands(run), task_rows)
    body += "\n" + "\n".join(f"![{p.stem}]({p.name})" for p in pngs) + "\n"
    md.write_text(body)
    (docs / f"{name}.json").write_text(json.dumps({"run": run, "rows": rows, "tasks": task_rows}, indent=1))
    return [md, *pngs, docs / f"{name}.json"]


def run_commands(run: dict) -> str | None:
    """Every `videokv bench run` command that wrote into the folder (run.json's `command`, then the
    `resumed` ones), one a line; None if none was recorded (a run started from Python)."""
    commands = [c for c in [run.get("command"), *run.get("resumed", [])] if c]
    return "\n".join(dict.fromkeys(commands)) or None
