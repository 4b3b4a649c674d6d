"""Wall time of ``sapo-lightning fit`` under ``--threads auto`` against a fixed thread count, with and without load.

    python benchmarks/threads.py                      # every case, as the machine is, then with 2 busy loops
    python benchmarks/threads.py --cases seed text --load busy --repeats 3

Each run is a fresh process that runs ``sapo-lightning fit`` with ``OMP_NUM_THREADS`` removed from
its environment, so ``auto`` decides; the other side passes ``--threads N``: torch's default (the
physical cores) for the demos and a 2.1M-parameter Llama, which ``auto`` runs on one thread; 1 for a
33.6M one. The sides alternate (A B B A ...) so that other load falls on both. "Ambient" adds no load
(the machine as it is: idle only if nothing else runs); "busy" starts ``--busy`` ``while True: pass``
processes (each ends by itself after 15 minutes, and is killed when the measurement ends). Prints every
run, then per case and load the mean seconds of the whole command and of ``fit`` alone (start-up
excluded), and the load average.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN = r"""
import sys, time
from sapo_lightning.cli import main
start = time.perf_counter()
main({args!r})
print("FIT_SECONDS", time.perf_counter() - start)
"""
SPIN = "import time\nend = time.time() + 900\nwhile time.time() < end: pass"
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.logger=false"]
#: hf_tiny.yaml's Llama (its task and vocabulary of 11) at another width and depth
LLAMA = """model:
  policy:
    init_args:
      model_config: {{model_type: llama, vocab_size: 11, hidden_size: {width}, intermediate_size: {mlp},
        num_hidden_layers: {layers}, num_attention_heads: 8, num_key_value_heads: 8, max_position_embeddings: 128,
        tie_word_embeddings: true, attention_dropout: 0.0, bos_token_id: null, eos_token_id: 0, pad_token_id: null}}
"""
#: name -> (width, layers, fit arguments): 2.1M parameters (one thread under auto), 33.6M (torch's count)
LLAMAS = {
    "mid": (256, 2, ["--trainer.max_steps=20"]),
    "large": (512, 8, ["--trainer.max_steps=2", "--data.batch_size=4"]),
}
FEW_STEPS = ["--trainer.num_sanity_val_steps=0", "--trainer.enable_checkpointing=false", "--data.val_size=8"]


def default_threads() -> int:
    """torch's intra-op thread count in a fresh process with no OMP_NUM_THREADS."""
    code = "import torch; print(torch.get_num_threads())"
    return int(subprocess.run([sys.executable, "-c", code], env=child_env(), capture_output=True, text=True,
                              check=True).stdout)


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    return dict(env, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")


def cases(folder: str, default: int) -> dict[str, tuple[list[str], dict[str, list[str]]]]:
    """name -> (fit arguments, side -> extra arguments); writes the Llama overlays into ``folder``."""
    auto_or_default = {"auto": [], f"--threads {default}": [f"--threads={default}"]}
    table = {
        "seed": (["--config", "configs/sapo.yaml", "--trainer.max_steps=200"], auto_or_default),
        "text": (["--config", "configs/text_tiny.yaml", "--trainer.max_steps=50"], auto_or_default),
    }
    for name, (width, layers, args) in LLAMAS.items():
        overlay = Path(folder, f"{name}.yaml")
        overlay.write_text(LLAMA.format(width=width, mlp=4 * width, layers=layers))
        other = auto_or_default if name == "mid" else {"auto": [], "--threads 1": ["--threads=1"]}
        table[name] = (["--config", "configs/hf_tiny.yaml", "--config", str(overlay), *FEW_STEPS, *args], other)
    return table


def run(args: list[str]) -> tuple[float, float]:
    """(seconds of the whole command, seconds of fit alone)."""
    with tempfile.TemporaryDirectory() as root:
        code = RUN.format(args=["fit", *args, *QUIET, "--trainer.default_root_dir", root])
        start = os.times().elapsed
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=child_env(), capture_output=True, text=True)
        total = os.times().elapsed - start
    fit = [float(line.split()[1]) for line in out.stdout.splitlines() if line.startswith("FIT_SECONDS")]
    if out.returncode or not fit:
        raise SystemExit(f"fit {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return total, fit[0]


def measure(name: str, args: list[str], sides: dict[str, list[str]], repeats: int, load: str) -> None:
    times: dict[str, list[tuple[float, float]]] = {side: [] for side in sides}
    for i in range(repeats):
        for side in list(sides) if i % 2 == 0 else list(reversed(sides)):
            times[side].append(run(args + sides[side]))
            total, fit = times[side][-1]
            print(f"  {name} {load} {side}: {total:.1f} s ({fit:.1f} s fit), load {os.getloadavg()[0]:.1f}",
                  flush=True)
    for side, values in times.items():
        total, fit = (statistics.mean(v[j] for v in values) for j in (0, 1))
        print(f"{name} {load} {side}: mean {total:.1f} s ({fit:.1f} s fit) over {repeats} runs", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    names = ["seed", "text", *LLAMAS]
    parser.add_argument("--cases", nargs="+", default=names, choices=names)
    parser.add_argument("--load", default="both", choices=["ambient", "busy", "both"])
    parser.add_argument("--busy", type=int, default=2, help="busy-loop processes beside the runs under load")
    parser.add_argument("--repeats", type=int, default=2, help="runs per side, alternating")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # a `timeout` still kills the busy loops (finally)
    default = default_threads()
    print(f"{os.cpu_count()} CPUs, torch's default {default} threads", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        table = cases(folder, default)
        for load in ("ambient", "busy") if args.load == "both" else (args.load,):
            spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(args.busy * (load == "busy"))]
            try:
                for name in args.cases:
                    measure(name, *table[name], args.repeats, load)
            finally:
                for spinner in spinners:
                    spinner.kill()
                    spinner.wait()


if __name__ == "__main__":
    main()
