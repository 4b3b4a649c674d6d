"""CausalLMPolicy on token tasks, tiny random models built from a config or loaded from a directory (no download)."""

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
import huggingface_hub.constants  # a dependency of transformers
import transformers

from sapo_lightning.checks import ConfigError
from sapo_lightning.cli import main
from sapo_lightning.lm.policy import CausalLMPolicy
from sapo_lightning.tasks import Copy, ModularAddition, Reverse

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "hf_tiny.yaml"

# a tiny Llama with a 16-token vocabulary, as CausalLMPolicy's model_config
LLAMA = {"model_type": "llama", "vocab_size": 16, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 64}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No test may reach the hub: HF_HUB_OFFLINE=1, also for a huggingface_hub imported earlier (by torchmetrics)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny Llama and a tiny GPT-2, both with a 16-token vocabulary, saved with save_pretrained."""
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    fields = {k: v for k, v in LLAMA.items() if k != "model_type"}
    transformers.LlamaForCausalLM(transformers.LlamaConfig(**fields)).save_pretrained(root / "llama")
    gpt2 = transformers.GPT2Config(vocab_size=16, n_positions=32, n_embd=32, n_layer=2, n_head=2)
    transformers.GPT2LMHeadModel(gpt2).save_pretrained(root / "gpt2")
    return {"llama": str(root / "llama"), "gpt2": str(root / "gpt2")}


def model_log_softmax(policy, queries, responses, vocab, temperature):
    """The model's own log-softmax of its logits at the response positions, restricted to ``vocab``."""
    tokens = vocab[torch.cat([queries, responses[:, :-1]], 1)]
    logits = policy.model(tokens).logits[:, queries.shape[1] - 1 :, vocab]  # [N, T, V]
    return torch.log_softmax(logits.float() / temperature, -1).gather(-1, responses.unsqueeze(-1)).squeeze(-1)


def assert_scored_as_the_model(scores, expected, mask):
    """The policy's log-probs are the model's on each response up to its EOS, and 0 after it."""
    torch.testing.assert_close(scores.log_probs[mask], expected[mask], atol=1e-5, rtol=1e-5)
    assert (scores.log_probs[~mask] == 0).all()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_log_probs_round_trip_against_the_models_forward(models, arch):
    task = ModularAddition(num_digits=2)  # 13 task tokens: a restricted vocabulary of the 16-token model
    token_ids = [15, 0, 1] + list(range(2, 12))  # EOS is model token 15
    policy = CausalLMPolicy(task, models[arch], token_ids=token_ids, temperature=0.8).eval()
    queries = task.sample_queries(32, torch.Generator().manual_seed(0))
    out = policy.sample(queries, torch.Generator().manual_seed(0))
    scores = policy.score(queries, out.responses)
    with torch.no_grad():
        expected = model_log_softmax(policy, queries, out.responses, torch.tensor(token_ids), 0.8)
    assert (~out.mask).any()  # some responses ended early
    assert_scored_as_the_model(scores, expected, out.mask)
    # the cached decode's log-probs are the scored ones, token for token
    torch.testing.assert_close(out.log_probs[out.mask], scores.log_probs[out.mask], atol=1e-5, rtol=1e-5)
    assert (out.log_probs[~out.mask] == 0).all()
    assert (out.responses[~out.mask] == task.eos_token).all()


def test_identity_map_is_the_full_model_distribution(models):
    task = Reverse(length=3, num_symbols=13)  # 16 task tokens = the model's vocabulary
    policy = CausalLMPolicy(task, models["llama"]).eval()
    queries = task.sample_queries(8, torch.Generator().manual_seed(0))
    out = policy.sample(queries, torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model_log_softmax(policy, queries, out.responses, torch.arange(16), 1.0)
    assert_scored_as_the_model(policy.score(queries, out.responses), expected, out.mask)


def test_tokenizer_maps_task_tokens_by_text(models, tmp_path):
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers import models as tok_models

    words = ["<eos>", "x", "+", "="] + [str(d) for d in range(10)] + ["12", "y"]  # ids 0..15
    backend = Tokenizer(tok_models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="x"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>")
    tokenizer.save_pretrained(tmp_path)
    task = ModularAddition(num_digits=1)
    policy = CausalLMPolicy(task, models["llama"], tokenizer=str(tmp_path)).eval()
    # task tokens EOS, SEP "=", PLUS "+", digits "0".."9" are the words <eos>, =, +, 0..9
    by_text = torch.tensor([0, 3, 2] + list(range(4, 14)))
    queries = task.sample_queries(16, torch.Generator().manual_seed(0))
    out = policy.sample(queries, torch.Generator().manual_seed(0))
    assert out.responses.min() >= 0 and out.responses.max() < task.vocab_size  # task token ids
    with torch.no_grad():
        expected = model_log_softmax(policy, queries, out.responses, by_text, 1.0)
    assert_scored_as_the_model(policy.score(queries, out.responses), expected, out.mask)


def test_model_config_builds_a_random_model_from_the_seed(tmp_path):
    task = Copy(length=3, num_symbols=8)  # 11 task tokens of the 16-token model
    torch.manual_seed(1)
    policy = CausalLMPolicy(task, model_config={**LLAMA, "eos_token_id": 0}).eval()
    torch.manual_seed(1)
    again = CausalLMPolicy(task, model_config=LLAMA)
    torch.manual_seed(2)
    other = CausalLMPolicy(task, model_config=LLAMA)
    weights = [torch.cat([p.flatten() for p in m.model.parameters()]) for m in (policy, again, other)]
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])
    config = policy.model.config
    assert ((type(config).__name__, config.vocab_size, config.hidden_size, config.eos_token_id)
            == ("LlamaConfig", 16, 32, 0))
    # saved and loaded back with path, it is the same policy
    policy.model.save_pretrained(tmp_path)
    loaded = CausalLMPolicy(task, path=str(tmp_path)).eval()
    queries = task.sample_queries(8, torch.Generator().manual_seed(0))
    out = policy.sample(queries, torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded.score(queries, out.responses).log_probs,
                                   policy.score(queries, out.responses).log_probs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"token_ids": [0, 1, 2]}, r"token_ids must be 13 distinct ids, one per task token; got \[0, 1, 2\]"),
        ({"token_ids": [0] * 13}, "token_ids must be 13 distinct ids"),
        ({"token_ids": list(range(4, 17))}, r"token_ids must be integers in \[0, 16\); got \[4, "),
        ({"dtype": "float64"}, "dtype must be one of float32, bfloat16, float16; got 'float64'"),
        ({"temperature": -1.0}, "temperature must be a finite number > 0; got -1.0"),
        ({"tokenizer": "/no/such/tokenizer"}, "tokenizer: no such directory /no/such/tokenizer$"),
    ],
)
def test_bad_arguments(models, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        CausalLMPolicy(ModularAddition(num_digits=1), models["llama"], **kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({}, "exactly one of path and model_config must be given; got path=None, model_config=None"),
        ({"path": "DIR", "model_config": LLAMA}, "exactly one of path and model_config must be given; got path='DIR'"),
        ({"path": "/no/such/model"}, "path: no such directory /no/such/model$"),
        ({"path": "meta-llama/Llama-3.2-1B"},
         r"path must be .*the hub is offline \(HF_HUB_OFFLINE=1\) and this one is not cached"),
        ({"model_config": {"vocab_size": 16}}, "model_config must be a mapping with a model_type"),
        ({"model_config": {"model_type": "nope"}},
         "model_config.model_type must be a transformers model type .*; got 'nope'"),
        ({"model_config": {**LLAMA, "hiden_size": 8}},
         r"model_config fields must be fields of a llama config; got \['hiden_size'\]"),
        ({"model_config": {**LLAMA, "hidden_size": 33}}, "model_config must be a valid llama config .*not a multiple"),
    ],
    ids=["neither", "both", "missing-dir", "hub-id", "no-model-type", "unknown-type", "misspelt-field", "invalid"],
)
def test_bad_model_source(models, kwargs, match):
    kwargs = {k: models["llama"] if v == "DIR" else v for k, v in kwargs.items()}
    match = match.replace("'DIR'", repr(models["llama"]))
    with pytest.raises(ConfigError, match=match):
        CausalLMPolicy(Reverse(num_symbols=8), **kwargs)


def test_task_vocabulary_larger_than_the_model_is_refused(models):
    with pytest.raises(ConfigError, match=r"task vocab_size must be <= the model's vocabulary \(16\) .*; got 17"):
        CausalLMPolicy(Reverse(num_symbols=14), models["llama"])


def test_missing_model_directory_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["sapo-lightning"])
    missing = tmp_path / "no-model"
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(CONFIG), "--model.policy.init_args.model_config=null",
              f"--model.policy.init_args.path={missing}", "--trainer.default_root_dir", str(tmp_path / "run")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"sapo-lightning: error: path: no such directory {missing}\n"), err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_a_group_shares_its_prompt_with_the_results_of_one_row_each(models):
    """Copy's G responses per query are scored on the query's cache, computed once: the log-probs and
    gradients of the same rows scored apart (shuffled so that no two equal queries are neighbours)."""
    task = Copy(length=3)
    policy = CausalLMPolicy(task, models["llama"], temperature=1.5)
    queries = task.sample_queries(3, torch.Generator().manual_seed(0)).repeat_interleave(4, 0)  # [12, D]
    rollout = policy.sample(queries, torch.Generator().manual_seed(0))
    weight = policy.model.get_input_embeddings().weight
    grouped = policy.score(queries, rollout.responses)
    (grads_grouped,) = torch.autograd.grad(grouped.log_probs.sum(), weight)
    order = torch.arange(12).view(3, 4).T.flatten()
    apart = policy.score(queries[order], rollout.responses[order])
    (grads_apart,) = torch.autograd.grad(apart.log_probs.sum(), weight)
    torch.testing.assert_close(grouped.log_probs[order], apart.log_probs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads_grouped, grads_apart, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("config, old", [("hf_tiny", "sapo_lightning.hf.HFCausalLMPolicy"),
                                         ("text_tiny", "sapo_lightning.text.policy.CausalLMPolicy")])
def test_a_config_naming_a_removed_policy_class_is_one_line_naming_the_new_one(
        tmp_path, capsys, monkeypatch, config, old):
    monkeypatch.setattr(sys, "argv", ["sapo-lightning"])
    monkeypatch.chdir(CONFIG.parents[1])  # text_tiny's data paths are relative to the repository root
    written = (CONFIG.parent / f"{config}.yaml").read_text()
    assert "class_path: sapo_lightning.lm.policy.CausalLMPolicy" in written
    (tmp_path / "old.yaml").write_text(written.replace("sapo_lightning.lm.policy.CausalLMPolicy", old))
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(tmp_path / "old.yaml"), "--trainer.default_root_dir", str(tmp_path / "run")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err == (f'sapo-lightning: error: Parser key "model.policy": {old} is removed '
                   "(the name goes away in sapo-lightning 0.2.0): use "
                   "sapo_lightning.lm.policy.CausalLMPolicy, the one policy for token and text tasks, with the same "
                   "init_args\n")
    assert not (tmp_path / "run").exists()


def test_attention_picks_the_kernel_of_a_saved_model_and_scores_the_same(tmp_path):
    task = Copy(length=3, num_symbols=8)
    torch.manual_seed(1)
    CausalLMPolicy(task, model_config=LLAMA).model.save_pretrained(tmp_path)
    default, eager = (CausalLMPolicy(task, path=str(tmp_path), attention=a).eval() for a in (None, "eager"))
    assert default.model.config._attn_implementation == "sdpa"
    assert eager.model.config._attn_implementation == "eager"
    queries = task.sample_queries(8, torch.Generator().manual_seed(0))
    out = default.sample(queries, torch.Generator().manual_seed(0))
    again = eager.sample(queries, torch.Generator().manual_seed(0))
    assert torch.equal(out.responses, again.responses)  # float32: the same distribution, the same draws
    with torch.no_grad():
        torch.testing.assert_close(eager.score(queries, out.responses).log_probs,
                                   default.score(queries, out.responses).log_probs, atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match=r"^attention must be one of sdpa, eager, grouped; got 'flash'$"):
        CausalLMPolicy(task, path=str(tmp_path), attention="flash")


@pytest.mark.parametrize("autocast", [False, True], ids=["float32", "bf16-autocast"])
def test_grouped_attention_samples_and_scores_as_eager_bit_for_bit(autocast):
    """Grouped-query attention (4 query heads on 2 key/value heads) without repeat_kv's copies: the same tokens and
    log-probs as eager attention, exactly, and the same gradients up to the order of a sum."""
    task = Reverse(length=6)
    config = {**LLAMA, "num_attention_heads": 4, "num_key_value_heads": 2}
    policies = {}
    for attention in ("eager", "grouped"):
        torch.manual_seed(0)
        policies[attention] = CausalLMPolicy(task, model_config=config, attention=attention)
    assert policies["grouped"].model.config._attn_implementation == "grouped"
    queries = task.sample_queries(8, torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        eager, grouped = (p.sample(queries, torch.Generator().manual_seed(1)) for p in policies.values())
        assert torch.equal(eager.responses, grouped.responses) and torch.equal(eager.log_probs, grouped.log_probs)
        scores = {name: p.score(queries, eager.responses) for name, p in policies.items()}
    assert torch.equal(scores["eager"].log_probs, scores["grouped"].log_probs)
    for s in scores.values():
        s.log_probs.sum().backward()
    for (name, a), b in zip(policies["eager"].named_parameters(), policies["grouped"].parameters()):
        scale = a.grad.abs().max()  # the sums over each group's heads run in another order: float32 or bf16 rounding
        assert (b.grad - a.grad).abs().max() <= (1e-2 if autocast else 1e-6) * scale, name  # bf16: ~1 ulp (2^-7)


def test_grouped_attention_refuses_a_model_with_softcapped_scores():
    task = Reverse(length=6)
    gemma2 = {"model_type": "gemma2", "vocab_size": 16, "hidden_size": 32, "intermediate_size": 64, "head_dim": 16,
              "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
              "max_position_embeddings": 64, "attn_logit_softcapping": 50.0}
    with pytest.raises(ConfigError, match=r"^attention must be sdpa or eager for a model that softcaps its attention "
                                          r"scores \(attn_logit_softcapping=50.0\); got 'grouped'$"):
        CausalLMPolicy(task, model_config=gemma2, attention="grouped")
