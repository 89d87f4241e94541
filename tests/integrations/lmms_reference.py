"""Run in the lmms-eval environment by test_lmms_eval.py: the answers and option scores of the tasks
written by `write_lmms_tasks`, computed with videokv's public API alone (no lmms-eval), one fresh session
per question. Usage: python lmms_reference.py DATA.jsonl PRETRAINED MEMORY FPS FRAME_TOKENS MAX_NEW_TOKENS
(FRAME_TOKENS "" for the checkpoint's own); prints JSON."""

from __future__ import annotations

import json
import sys

from videokv import VideoQA
from videokv.integrations.lmms_tasks import doc_to_mc_text, doc_to_text


def main(data: str, pretrained: str, memory: str, fps: str, frame_tokens: str, max_new_tokens: str) -> None:
    qa = VideoQA.from_pretrained(
        pretrained, memory=memory, frame_tokens=int(frame_tokens) if frame_tokens else None
    )
    out = []
    for line in open(data):
        doc = json.loads(line)
        session = qa.session(fps=float(fps))
        session.add_video(doc["video"], subtitles=doc["subtitles"] or None)
        if doc["choices"]:
            scores = [session.loglikelihood(doc_to_mc_text(doc), c) for c in doc["choices"]]
            out.append({"id": doc["id"], "loglikelihoods": scores})
        else:
            answer = session.ask(doc_to_text(doc), max_new_tokens=int(max_new_tokens)).text
            out.append({"id": doc["id"], "answer": answer})
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main(*sys.argv[1:])
