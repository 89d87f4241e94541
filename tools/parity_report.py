"""Print how closely videokv's streamed `full` memory matches the official processor fixtures.

For every fixture case (tests/fixtures/parity, written by tools/parity_fixtures.py with the official
processors in the reference environment) and chunk size, it streams the case's frames (and text) through
`VideoQA.from_pretrained(<fixture checkpoint>)` and reports: whether the token ids and M-RoPE position ids
equal the processor's / `get_rope_index`'s, and the max abs difference of the first answer token's logits
from HF's forward on the processor output. Run from the repository root:

    .venv/bin/python tools/parity_report.py [--chunks 1,2,3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.models.test_preprocess import CASES, _case  # noqa: E402
from tests.test_official_layout import streamed  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", default="1,2,3", help="chunk sizes in frames (default 1,2,3)")
    args = parser.parse_args()
    chunks = [int(c) for c in args.chunks.split(",")]
    print("| family | case | chunk frames | tokens | ids equal | positions equal | logits max abs diff |")
    print("|---|---|---|---|---|---|---|")
    for family, case in CASES:
        _, tensors, _, _ = _case(family, case)
        for chunk in chunks:
            session, question, ids, positions = streamed(family, case, chunk)
            eng = session.engine
            ids_ok = ids == tensors["input_ids"][0].tolist()
            pos_ok = "n/a (1-D)"
            if "position_ids" in tensors:
                pos_ok = str(torch.equal(positions, tensors["position_ids"][:, 0]))
            lead = eng.question_pieces(question)
            with torch.no_grad():
                logits = eng.adapter.forward(
                    torch.cat([p.embeds for p in lead]),
                    torch.cat([p.positions for p in lead], dim=1),
                    eng.cache.fork(),
                )[-1]
            diff = (logits - tensors["last_logits"]).abs().max().item()
            print(f"| {family} | {case} | {chunk} | {len(ids)} | {ids_ok} | {pos_ok} | {diff:.2e} |")


if __name__ == "__main__":
    main()
