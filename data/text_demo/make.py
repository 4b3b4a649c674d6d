"""Write the text demo's prompts: the first or the last letter of a random lowercase word.

    python data/text_demo/make.py            # writes train.jsonl and val.jsonl beside this file

Each row is ``{"prompt": "last: abc", "answer": "c", "op": "last"}``: an operation name, a colon
and a word of 1-5 letters from a-h; the answer is the word's first or last letter. Prompt lengths
vary with the operation and the word (7-12 characters).
The split is disjoint: no (operation, word) pair appears in both files. Seeded: rerunning it
writes the same files.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OPERATIONS = {"first": lambda word: word[0], "last": lambda word: word[-1]}
LETTERS = "abcdefgh"
TRAIN, VAL, SEED = 4000, 400, 0


def main() -> None:
    rng = random.Random(SEED)
    pairs: dict[tuple[str, str], None] = {}  # unique (operation, word), in the order drawn
    while len(pairs) < TRAIN + VAL:  # word lengths about uniform; length 1 has only 8 words per operation
        word = "".join(rng.choice(LETTERS) for _ in range(rng.randint(1, 5)))
        pairs[(rng.choice(list(OPERATIONS)), word)] = None
    pairs = list(pairs)
    here = Path(__file__).parent
    for name, rows in (("train.jsonl", pairs[:TRAIN]), ("val.jsonl", pairs[TRAIN:])):
        with open(here / name, "w") as f:
            for op, word in rows:
                f.write(json.dumps({"prompt": f"{op}: {word}", "answer": OPERATIONS[op](word), "op": op}) + "\n")
        print(f"wrote {len(rows)} prompts to {here / name}")


if __name__ == "__main__":
    main()
