"""Write the text demo's prompts: the first or the last letter of a random lowercase word.

    python data/text_demo/make.py            # writes train.jsonl and val.jsonl beside this file

Each row is ``{"prompt": "last: abc", "answer": "c", "op": "last"}``: an operation name, a colon
and a word of 1-5 letters from a-h; the answer is the word's first or last letter. Prompt lengths
vary with the operation and the word (7-12 characters).
The split is disjoint: no (operation, word) pair appears in both files. It is stratified by word
length: each length holds out its share of the VAL validation pairs (largest remainders round), the
pairs picked by a seeded shuffle, so short words, rare because length 1 has only 8 words per
operation, are in validation too. Seeded: rerunning it writes the same files.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path

OPERATIONS = {"first": lambda word: word[0], "last": lambda word: word[-1]}
LETTERS = "abcdefgh"
TRAIN, VAL, SEED = 4000, 400, 0


def split(pairs: list[tuple[str, str]], rng: random.Random) -> tuple[list, list]:
    """Training and validation pairs, each in the order drawn:
    every word length gives VAL / (TRAIN + VAL) of its pairs."""
    by_length: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for pair in pairs:
        by_length[len(pair[1])].append(pair)
    quota = {n: len(group) * VAL / len(pairs) for n, group in sorted(by_length.items())}
    held = {n: int(q) for n, q in quota.items()}
    for n in sorted(quota, key=lambda n: quota[n] - held[n], reverse=True)[: VAL - sum(held.values())]:
        held[n] += 1  # the largest remainders round up, so the shares add up to VAL
    picked = {pair for n, group in by_length.items() for pair in rng.sample(group, held[n])}
    return [p for p in pairs if p not in picked], [p for p in pairs if p in picked]


def main() -> None:
    rng = random.Random(SEED)
    pairs: dict[tuple[str, str], None] = {}  # unique (operation, word), in the order drawn
    while len(pairs) < TRAIN + VAL:  # word lengths about uniform; length 1 has only 8 words per operation
        word = "".join(rng.choice(LETTERS) for _ in range(rng.randint(1, 5)))
        pairs[(rng.choice(list(OPERATIONS)), word)] = None
    train, val = split(list(pairs), rng)
    here = Path(__file__).parent
    for name, rows in (("train.jsonl", train), ("val.jsonl", val)):
        with open(here / name, "w") as f:
            for op, word in rows:
                f.write(json.dumps({"prompt": f"{op}: {word}", "answer": OPERATIONS[op](word), "op": op}) + "\n")
        print(f"wrote {len(rows)} prompts to {here / name}")


if __name__ == "__main__":
    main()
