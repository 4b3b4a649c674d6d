"""Write the SmolLM2 recipe's prompts: the sum of two two-digit numbers.

    python data/arithmetic/make.py           # writes train.jsonl and val.jsonl beside this file

Each row is ``{"prompt": "What is 27 + 82? Reply with only the number.", "answer": 109}``: a and b
from 10 to 99, so neither operand can equal the sum (which a completion that restates the
question would otherwise get credit for). The 8,100 ordered pairs are shuffled with a fixed seed;
the first 256 are validation, the next 4,096 training: disjoint, and rerunning writes the same files.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

PROMPT = "What is {a} + {b}? Reply with only the number."
VAL, TRAIN, SEED = 256, 4096, 0


def main() -> None:
    pairs = [(a, b) for a in range(10, 100) for b in range(10, 100)]
    random.Random(SEED).shuffle(pairs)
    here = Path(__file__).parent
    for name, rows in (("val.jsonl", pairs[:VAL]), ("train.jsonl", pairs[VAL:VAL + TRAIN])):
        with open(here / name, "w") as f:
            for a, b in rows:
                f.write(json.dumps({"prompt": PROMPT.format(a=a, b=b), "answer": a + b}) + "\n")
        print(f"wrote {len(rows)} prompts to {here / name}")


if __name__ == "__main__":
    main()
