"""HFCausalLMPolicy on tiny random models saved to disk and loaded with from_pretrained (no download)."""

from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
import huggingface_hub.constants  # a dependency of transformers

from sapo_lightning.checks import ConfigError
from sapo_lightning.hf import HFCausalLMPolicy
from sapo_lightning.hf import main as hf_main
from sapo_lightning.tasks import ModularAddition, Reverse

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "hf_tiny.yaml"


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No test may reach the hub: HF_HUB_OFFLINE=1, also for a huggingface_hub imported earlier (by torchmetrics)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny Llama (via the make-tiny helper) and a tiny GPT-2, both with a 16-token vocabulary."""
    root = tmp_path_factory.mktemp("hf")
    hf_main(["make-tiny", str(root / "llama"), "--vocab-size", "16", "--d-model", "32"])
    torch.manual_seed(0)
    gpt2 = transformers.GPT2Config(vocab_size=16, n_positions=32, n_embd=32, n_layer=2, n_head=2)
    transformers.GPT2LMHeadModel(gpt2).save_pretrained(root / "gpt2")
    return {"llama": str(root / "llama"), "gpt2": str(root / "gpt2")}


def model_log_softmax(policy, queries, responses, vocab, temperature):
    """The model's own log-softmax of its logits at the response positions, restricted to ``vocab``."""
    tokens = vocab[torch.cat([queries, responses[:, :-1]], 1)]
    logits = policy.model(tokens).logits[:, queries.shape[1] - 1 :, vocab]  # [N, T, V]
    return torch.log_softmax(logits.float() / temperature, -1).gather(-1, responses.unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_log_probs_round_trip_against_the_models_forward(models, arch):
    task = ModularAddition(num_digits=2)  # 13 task tokens: a restricted vocabulary of the 16-token model
    token_ids = [15, 0, 1] + list(range(2, 12))  # EOS is model token 15
    policy = HFCausalLMPolicy(task, models[arch], token_ids=token_ids, temperature=0.8).eval()
    queries = task.sample_queries(32, torch.Generator().manual_seed(0))
    out = policy.sample(queries, torch.Generator().manual_seed(0))
    scores = policy.score(queries, out.responses)
    with torch.no_grad():
        expected = model_log_softmax(policy, queries, out.responses, torch.tensor(token_ids), 0.8)
    torch.testing.assert_close(scores.log_probs, expected, atol=1e-5, rtol=1e-5)
    # the cached decode's log-probs are the scored ones, token for token
    torch.testing.assert_close(out.log_probs[out.mask], scores.log_probs[out.mask], atol=1e-5, rtol=1e-5)
    assert (out.log_probs[~out.mask] == 0).all() and (out.responses[~out.mask] == task.eos_token).all()


def test_identity_map_is_the_full_model_distribution(models):
    task = Reverse(length=3, num_symbols=13)  # 16 task tokens = the model's vocabulary
    policy = HFCausalLMPolicy(task, models["llama"]).eval()
    assert policy.vocab is None
    queries = task.sample_queries(8, torch.Generator().manual_seed(0))
    out = policy.sample(queries, torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model_log_softmax(policy, queries, out.responses, torch.arange(16), 1.0)
    torch.testing.assert_close(policy.score(queries, out.responses).log_probs, expected, atol=1e-5, rtol=1e-5)


def test_tokenizer_maps_task_tokens_by_text(models, tmp_path):
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers import models as tok_models

    words = ["<eos>", "x", "+", "="] + [str(d) for d in range(10)] + ["12", "y"]  # ids 0..15
    backend = Tokenizer(tok_models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="x"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>")
    tokenizer.save_pretrained(tmp_path)
    policy = HFCausalLMPolicy(ModularAddition(num_digits=1), models["llama"], tokenizer=str(tmp_path))
    # task tokens: EOS, SEP "=", PLUS "+", digits "0".."9"
    assert policy.vocab.tolist() == [0, 3, 2] + list(range(4, 14))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"token_ids": [0, 1, 2]}, "token_ids must hold task vocab_size=13 distinct ids"),
        ({"token_ids": [0] * 13}, "distinct"),
        ({"token_ids": list(range(4, 17))}, r"token_ids must be integers in \[0, 16\)"),
        ({"dtype": "float64"}, "dtype must be one of"),
        ({"temperature": -1.0}, "temperature must be"),
    ],
)
def test_bad_arguments(models, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        HFCausalLMPolicy(ModularAddition(num_digits=1), models["llama"], **kwargs)


def test_task_vocabulary_larger_than_the_model_is_refused(models):
    with pytest.raises(ConfigError, match=r"vocab_size must be <= the model's vocabulary \(16\)"):
        HFCausalLMPolicy(Reverse(num_symbols=14), models["llama"])


def test_hf_tiny_config_trains_through_the_cli(tmp_path):
    from sapo_lightning.cli import main

    hf_main(["make-tiny", str(tmp_path / "model")])
    main(["fit", "--config", str(CONFIG), f"--model.policy.init_args.path={tmp_path / 'model'}",
          "--trainer.max_steps=2", "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar=false",
          "--trainer.val_check_interval=2", "--data.val_size=16", "--data.batch_size=4"])
    state = torch.load(tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt", weights_only=True)
    assert state["global_step"] == 2
    assert "policy.model.model.embed_tokens.weight" in state["state_dict"]
