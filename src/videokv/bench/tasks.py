"""Task families for needle streams (`make-needles --tasks`): questions that one retrieved line cannot answer.

`task_track(duration, n_questions, tasks, rng)` builds a subtitle track like `needles.subtitle_track`
(distractor lines every 2.5 to 5.5 s) and plants in it the lines of `n_questions` questions, dealt to the
families in `tasks` in turn:

- ``retrieval``: one planted fact, as `needles.subtitle_track` plants it ("What colour is the kite ...?").
- ``ordering``: 3 or 4 distinct events ("A brass band marches across the square."); which came first,
  which last, or in what order (multiple choice: permutations; open: the sequence).
- ``counting``: one kind of event ("A church bell rings.") 2 to 9 times, spread over the stream; how many
  times (open answers may give the digit or the word).
- ``temporal``: what happened just before or just after an event (three events planted on consecutive
  subtitle lines, so the neighbour is the line right before or after, and the other neighbour is one of the
  options), or at about what time an event happened (seconds from the start, as the stream shows text
  times; open answers are right within `metrics.TIME_TOLERANCE_S`).
- ``multihop``: two lines that only together answer ("The florist is called Aisha." ... "Aisha works at the
  harbour." -> "Where does the florist work?").

Every question is asked after all its lines (evidence: every needed line's span); each family's questions
are alternately open and multiple choice (so are the questions of one round of the families); no event,
role, name or place is planted twice in a stream (a counting line is repeated by design, and nothing else
says it), so each question has one answer; distractors name none of them.
Everything is determined by the rng.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass

from videokv.bench.needles import KINDS, NAMES, PLACES, ROLES, _needle, distractor_events
from videokv.errors import InputError
from videokv.video.subtitles import TextEvent

__all__ = ["COUNTS", "DOGS", "EVENTS", "FAMILIES", "Event", "task_track"]

#: The families `make-needles --tasks` can generate (the dataset also knows ``other``: `dataset.TASKS`).
FAMILIES = ("retrieval", "ordering", "counting", "temporal", "multihop")


@dataclass(frozen=True)
class Event:
    """A one-off event: how questions name it, its subtitle line, and a clause for "just before ...?"."""

    item: str  # "the brass band" (an option; items never contain one another as whole words)
    line: str  # "A brass band marches across the square."
    past: str  # "the brass band marched across the square"


EVENTS = (
    Event(
        "the brass band",
        "A brass band marches across the square.",
        "the brass band marched across the square",
    ),
    Event(
        "the horse-drawn carriage",
        "A horse-drawn carriage clatters down the road.",
        "the horse-drawn carriage clattered down the road",
    ),
    Event(
        "the mime artist",
        "A mime artist pretends to be trapped inside a glass box.",
        "the mime artist pretended to be trapped inside a glass box",
    ),
    Event(
        "the window cleaner",
        "A window cleaner is lowered down the side of the office tower.",
        "the window cleaner was lowered down the office tower",
    ),
    Event(
        "the juggler", "A juggler on a unicycle rides past the cafe.", "the juggler rode past on a unicycle"
    ),
    Event(
        "the parrot",
        "A parrot lands on a cafe table and steals a biscuit.",
        "the parrot landed on a cafe table",
    ),
    Event("the fireworks", "Fireworks burst above the rooftops.", "the fireworks burst above the rooftops"),
    Event(
        "the school choir",
        "A school choir starts singing on the church steps.",
        "the school choir started singing on the church steps",
    ),
    Event("the crane", "A crane lifts a steel beam onto the building site.", "the crane lifted a steel beam"),
    Event(
        "the vintage motorbike",
        "A vintage motorbike roars past with a sidecar.",
        "the vintage motorbike roared past",
    ),
    Event(
        "the flock of geese",
        "A flock of geese flies low over the square.",
        "the flock of geese flew over the square",
    ),
    Event(
        "the wedding car",
        "A wedding car covered in white ribbons drives past slowly.",
        "the wedding car drove past",
    ),
    Event(
        "the marathon runners",
        "Marathon runners stream past, cheered on by the crowd.",
        "the marathon runners streamed past",
    ),
    Event(
        "the chess game",
        "Two old men set up a chess game on a folding table.",
        "the two old men set up their chess game",
    ),
    Event(
        "the food truck",
        "A food truck opens its hatch and starts selling tacos.",
        "the food truck started selling tacos",
    ),
    Event(
        "the sand sculptor",
        "A sand sculptor finishes a dragon made of sand.",
        "the sand sculptor finished the sand dragon",
    ),
)

EVENTS += (
    Event(
        "the stilt walker",
        "A performer on stilts strides through the crowd.",
        "the stilt walker strode through the crowd",
    ),
    Event(
        "the ice cream van", "An ice cream van stops and plays its tune.", "the ice cream van played its tune"
    ),
    Event(
        "the cycle rickshaw",
        "A cycle rickshaw carries two passengers past.",
        "the cycle rickshaw carried two passengers past",
    ),
    Event(
        "the tractor", "A tractor towing hay bales rumbles through town.", "the tractor rumbled through town"
    ),
    Event(
        "the chalk artist",
        "A chalk artist finishes a portrait on the paving stones.",
        "the chalk artist finished a portrait",
    ),
    Event(
        "the drummer",
        "A drummer starts playing on upturned buckets.",
        "the drummer started playing on buckets",
    ),
    Event("the magpie", "A magpie steals a spoon from a terrace table.", "the magpie stole a spoon"),
    Event(
        "the hailstorm", "A short hailstorm rattles on the awnings.", "the hailstorm rattled on the awnings"
    ),
    Event("the rainbow", "A rainbow appears over the hills.", "the rainbow appeared over the hills"),
    Event("the mounted officer", "A police officer on horseback rides by.", "the mounted officer rode by"),
    Event(
        "the street lights",
        "The street lights flicker and go out for a moment.",
        "the street lights went out",
    ),
    Event(
        "the public piano",
        "Someone starts playing the public piano.",
        "someone started playing the public piano",
    ),
    Event(
        "the tightrope walker",
        "A tightrope walker balances high above the street.",
        "the tightrope walker balanced above the street",
    ),
    Event(
        "the goat",
        "A goat escapes from the petting zoo and trots by.",
        "the goat escaped from the petting zoo",
    ),
    Event(
        "the skydivers", "Skydivers with smoke trails drift down from the sky.", "the skydivers drifted down"
    ),
    Event("the bagpiper", "A bagpiper in a kilt plays a slow tune.", "the bagpiper played a slow tune"),
)

#: Repeated events for counting questions: (the line, planted verbatim each time; the question).
COUNTS = (
    ("A church bell rings.", "How many times did a church bell ring?"),
    ("A helicopter flies overhead.", "How many times did a helicopter fly overhead?"),
    ("A seagull screeches from a chimney.", "How many times did a seagull screech from a chimney?"),
    ("A steam train whistles in the valley.", "How many times did a steam train whistle in the valley?"),
    (
        "Someone drops a coin into the busker's hat.",
        "How many times did someone drop a coin into the busker's hat?",
    ),
    ("A delivery drone buzzes past.", "How many times did a delivery drone buzz past?"),
    ("A fire alarm goes off briefly.", "How many times did a fire alarm go off?"),
    ("A baby starts crying in a pram.", "How many times did a baby start crying in a pram?"),
)

DOGS = ("Biscuit", "Pepper", "Rocky", "Luna", "Bella", "Charlie", "Daisy", "Rufus", "Nala", "Ziggy")

WINDOW = (0.05, 0.8)  # planted lines go between these fractions of the stream (as in subtitle_track)


@dataclass
class _Plan:
    """One question before its slots are known: the lines to plant and how to ask about them."""

    family: str
    lines: list[str]
    run: bool = False  # the lines go on consecutive subtitle slots
    spread: bool = False  # the lines are spread over the window (counting)
    data: dict | None = None


class _Vocab:
    """Draws from the pools without reuse in one stream, so every question has a single answer."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.used: set[str] = set()

    def take(self, pool: Sequence, n: int = 1, key=lambda x: x) -> list:
        free = [x for x in pool if key(x) not in self.used]
        if len(free) < n:
            raise InputError("too many questions of one family for the templates; use fewer questions")
        picked = self.rng.sample(free, n)
        self.used.update(key(x) for x in picked)
        return picked


def _listing(items: Sequence[str]) -> str:
    return ", ".join(items[:-1]) + " or " + items[-1]


def _plan(family: str, vocab: _Vocab, kind: str | None = None) -> _Plan:
    rng = vocab.rng
    if family == "retrieval":
        needle = _needle(kind, rng, vocab.used)
        vocab.used.add(needle.answer)  # no other family plants the answer (a name, a place)
        return _Plan(family, [needle.line], data={"needle": needle})
    if family == "ordering":
        events = vocab.take(EVENTS, rng.choice((3, 4)), key=lambda e: e.item)
        form = rng.choice(("first", "last", "order"))
        return _Plan(family, [e.line for e in events], data={"events": events, "form": form})
    if family == "counting":
        ((line, question),) = vocab.take(COUNTS, key=lambda c: c[0])
        return _Plan(family, [line] * rng.randint(2, 9), spread=True, data={"question": question})
    if family == "temporal":
        form = rng.choice(("before", "after", "time"))
        if form == "time":
            (anchor,) = vocab.take(EVENTS, key=lambda e: e.item)
            return _Plan(family, [anchor.line], data={"events": [anchor], "form": form})
        events = vocab.take(EVENTS, 3, key=lambda e: e.item)  # before, anchor, after: consecutive lines
        return _Plan(family, [e.line for e in events], run=True, data={"events": events, "form": form})
    if family == "multihop":
        (role,) = vocab.take(ROLES)
        (name,) = vocab.take(NAMES)
        if rng.random() < 0.5:
            (place,) = vocab.take(PLACES)
            second, question, answer, pool = (
                f"{name} works at {place}.",
                f"Where does the {role} work?",
                place,
                PLACES,
            )
        else:
            (dog,) = vocab.take(DOGS)
            second, question, answer, pool = (
                f"{name} has a dog called {dog}.",
                f"What is the name of the {role}'s dog?",
                dog,
                DOGS,
            )
        lines = [f"The {role} is called {name}.", second]
        rng.shuffle(lines)  # either line may come first
        return _Plan(family, lines, data={"question": question, "answer": answer, "pool": pool})
    raise InputError(f"unknown task family {family!r}; known: {', '.join(FAMILIES)}")


def _time_answer(t: float) -> str:
    return f"{int(round(t))} seconds"


def _time_choices(right: float, asked: float, rng: random.Random) -> list[str]:
    """Three other times in [0, asked], spaced from the right one and from each other."""
    span = max(asked, 4.0)
    gap = min(30.0, span / 5)
    while True:
        grid = [t for t in range(int(span) + 1) if abs(t - round(right)) >= gap]
        rng.shuffle(grid)
        picked: list[int] = []
        for t in grid:
            if all(abs(t - p) >= gap for p in picked):
                picked.append(t)
            if len(picked) == 3:
                return [_time_answer(t) for t in picked]
        gap /= 2


def _ask(plan: _Plan, spans: list[tuple[float, float]], rng: random.Random) -> dict:
    """The question, answer, options pool (or fixed options) and question type of a placed plan."""
    family, d = plan.family, plan.data
    if family == "retrieval":
        needle = d["needle"]
        return {
            "question": needle.question,
            "answer": needle.answer,
            "pool": needle.options,
            "question_type": f"needle-{needle.kind}",
        }
    if family == "ordering":
        events, form = d["events"], d["form"]  # events in the order they were planted (= time order)
        items = [e.item for e in events]
        shown = items[:]
        while shown == items:  # never list them in the right order
            rng.shuffle(shown)
        if form == "order":
            perms = [", ".join(p) for p in itertools.permutations(items) if list(p) != items]
            return {
                "question": f"In what order did these happen: {', '.join(shown)}?",
                "answer": ", ".join(items),
                "options": [", ".join(items), *rng.sample(perms, 3)],
                "question_type": "ordering-order",
            }
        answer = items[0] if form == "first" else items[-1]
        return {
            "question": f"Which of these happened {form}: {_listing(shown)}?",
            "answer": answer,
            "options": shown,
            "question_type": f"ordering-{form}",
        }
    if family == "counting":
        n = len(plan.lines)
        pool = tuple(str(k) for k in range(1, 12) if abs(k - n) <= 3)
        return {"question": d["question"], "answer": str(n), "pool": pool, "question_type": "counting"}
    if family == "temporal":
        events, form = d["events"], d["form"]
        if form == "time":
            (anchor,) = events
            return {
                "question": f"At about what time, in seconds from the start, did this happen: {anchor.past}?",
                "answer": _time_answer(spans[0][0]),
                "time": spans[0][0],
                "question_type": "temporal-time",
            }
        before, anchor, after = events
        right, other = (before, after) if form == "before" else (after, before)
        rest = [e.item for e in EVENTS if e not in events]
        return {
            "question": f"What happened just {form} {anchor.past}?",
            "answer": right.item,
            "options": [right.item, other.item, *rng.sample(rest, 2)],
            "question_type": f"temporal-{form}",
            "needed": [1, 0 if form == "before" else 2],  # the anchor and the answer's line
        }
    if family == "multihop":
        kind = "place" if d["pool"] is PLACES else "dog"
        return {
            "question": d["question"],
            "answer": d["answer"],
            "pool": d["pool"],
            "question_type": f"multihop-{kind}",
        }
    raise AssertionError(family)


def _place(
    plans: list[_Plan], events: list[TextEvent], duration: float, rng: random.Random
) -> list[list[int]]:
    """Distinct subtitle slots for every plan's lines, in time order per plan."""
    lo, hi = WINDOW[0] * duration, WINDOW[1] * duration
    candidates = [i for i, e in enumerate(events) if lo <= e.start <= hi]
    need = sum(len(p.lines) for p in plans)
    if need > len(candidates):
        # counting questions give up occurrences first (down to 2 each)
        for p in plans:
            while p.spread and need > len(candidates) and len(p.lines) > 2:
                p.lines.pop()
                need -= 1
    if need > len(candidates):
        raise InputError(
            f"a {duration:.0f}s stream has room for {len(candidates)} planted lines and these questions need "
            f"{need}; ask for fewer questions or a longer stream"
        )
    free = set(candidates)
    slots: list[list[int] | None] = [None] * len(plans)
    order = sorted(range(len(plans)), key=lambda k: (not plans[k].run, not plans[k].spread))
    for k in order:
        p = plans[k]
        n = len(p.lines)
        if p.run:
            starts = [i for i in sorted(free) if all(i + d in free for d in range(n))]
            if not starts:
                raise InputError(
                    f"a {duration:.0f}s stream has no room left for {n} consecutive planted lines; ask for "
                    "fewer questions or a longer stream"
                )
            s = rng.choice(starts)
            chosen = list(range(s, s + n))
        elif p.spread:  # one slot in each of n equal stretches of the window where there is one
            pool = sorted(free)
            chosen = []
            for b in range(n):
                a, z = lo + (hi - lo) * b / n, lo + (hi - lo) * (b + 1) / n
                inside = [i for i in pool if a <= events[i].start < z and i not in chosen]
                chosen.append(rng.choice(inside or [i for i in pool if i not in chosen]))
            chosen.sort()
        else:
            chosen = sorted(rng.sample(sorted(free), n))
        free.difference_update(chosen)
        slots[k] = chosen
    return slots  # type: ignore[return-value]


def task_track(
    duration: float, n_questions: int, tasks: Sequence[str], rng: random.Random
) -> tuple[list[TextEvent], list[dict]]:
    """Distractor lines over [0, duration) with the planted lines of `n_questions` questions of the families
    in `tasks` (dealt in turn: question j is of family tasks[j % len(tasks)]): (events, conversations), the
    conversations in the dataset format (docs/DATASET.md), with their `task`, sorted by question time."""
    tasks = list(dict.fromkeys(tasks))
    unknown = [t for t in tasks if t not in FAMILIES]
    if not tasks or unknown:
        raise InputError(f"unknown task family {', '.join(map(repr, unknown))}; known: {', '.join(FAMILIES)}")
    if n_questions < len(tasks):
        raise InputError(
            f"questions ({n_questions}) must be at least the number of task families ({len(tasks)})"
        )
    events = distractor_events(duration, rng)
    families = [tasks[j % len(tasks)] for j in range(n_questions)]
    n_retrieval = families.count("retrieval")
    kinds = [KINDS[i % len(KINDS)] for i in range(n_retrieval)]
    rng.shuffle(kinds)
    vocab = _Vocab(rng)
    plans = []
    for family in sorted(families, key=lambda f: f != "retrieval"):  # retrieval first: it marks its answers
        plans.append(_plan(family, vocab, kinds.pop() if family == "retrieval" else None))
    by_family = {f: [p for p in plans if p.family == f] for f in tasks}
    plans = [by_family[f].pop(0) for f in families]  # back in the dealt order
    slots = _place(plans, events, duration, rng)
    gap = max(5.0, 0.1 * duration)
    conversations = []
    for j, (plan, chosen) in enumerate(zip(plans, slots)):
        for i, line in zip(chosen, plan.lines):
            e = events[i]
            events[i] = TextEvent(e.start, e.end, line)
        spans = [(events[i].start, events[i].end) for i in chosen]
        last = j == n_questions - 1
        end = max(t1 for _, t1 in spans)
        asked = duration if last else rng.uniform(min(end + gap, duration), duration)
        q = _ask(plan, spans, rng)
        needed = [spans[k] for k in q.get("needed", range(len(spans)))]
        conv = {
            "question": q["question"],
            "answer": q["answer"],
            "start_time": 0.0,
            "end_time": round(asked, 2),
            "question_type": q["question_type"],
            "task": plan.family,
            "evidence": [list(s) for s in sorted(needed)],
        }
        if (j // len(tasks) + j % len(tasks)) % 2 == 1:  # each family alternately open and multiple choice
            if "time" in q:
                choices = [q["answer"], *_time_choices(q["time"], asked, rng)]
            elif "options" in q:
                choices = list(q["options"])
            else:
                choices = [q["answer"], *rng.sample([o for o in q["pool"] if o != q["answer"]], 3)]
            rng.shuffle(choices)
            conv["choices"] = choices
        conversations.append(conv)
    conversations.sort(key=lambda c: c["end_time"])
    return events, conversations


def retime(conv: dict) -> None:
    """After the lines of a time question moved (spoken narration starts a line late when the one before is
    still being spoken), its answer follows its evidence: the right option's text too."""
    if conv.get("question_type") != "temporal-time":
        return
    new = _time_answer(conv["evidence"][0][0])
    if "choices" in conv:
        choices = conv["choices"]
        if new in choices and choices[choices.index(new)] != conv["answer"]:
            return  # keep it unambiguous: the answer stays (within the tolerance of the spoken start)
        choices[choices.index(conv["answer"])] = new
    conv["answer"] = new
