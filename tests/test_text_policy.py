"""CausalLMPolicy on a text task: a tiny random Llama or GPT-2 over the shipped ASCII tokenizer (no download)."""

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
import huggingface_hub.constants  # a dependency of transformers
import transformers

from sapo_lightning.checks import ConfigError
from sapo_lightning.lm.policy import CausalLMPolicy
from sapo_lightning.lm.sampling import sampling_logits
from sapo_lightning.rollout import Prompts
from sapo_lightning.text.prompts import pad_left
from sapo_lightning.text.task import PromptTask

ROOT = Path(__file__).resolve().parents[1]
ASCII = str(ROOT / "assets" / "tokenizers" / "ascii")
EOS, NEWLINE, PAD = 1, 5, 0  # ids of the ASCII tokenizer; the tests' task also stops at a newline
# a tiny Llama over the 101 ASCII ids; special tokens set explicitly (Llama's defaults are bos=1, eos=2)
LLAMA = {"model_type": "llama", "vocab_size": 101, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 256, "bos_token_id": 2,
         "eos_token_id": EOS, "pad_token_id": PAD, "attention_dropout": 0.0}
# a tiny GPT-2 without dropout: learned absolute positions, where left padding must not shift them (RoPE is relative)
GPT2 = {"model_type": "gpt2", "vocab_size": 101, "n_positions": 256, "n_embd": 32, "n_layer": 2, "n_head": 2,
        "bos_token_id": 2, "eos_token_id": EOS, "pad_token_id": PAD, "resid_pdrop": 0.0, "embd_pdrop": 0.0,
        "attn_pdrop": 0.0}
CONFIGS = {"llama": LLAMA, "gpt2": GPT2}
TEXTS = ["12+3=", "7=", "100+200+300=", "What is 4 times 5? ", "x", "9-1="]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def write_prompts(path: Path) -> str:
    with path.open("w") as f:
        for i in range(12):
            f.write(json.dumps({"prompt": f"{i}+{i}=", "answer": str(2 * i)}) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    train = write_prompts(tmp_path_factory.mktemp("prompts") / "train.jsonl")
    return PromptTask(train, ASCII, [{"function": "sapo_lightning.text.rewards.numeric_answer"}],
                      max_new_tokens=12, stop_token_ids=[NEWLINE])


def make_policy(task, seed=0, arch="llama", **kwargs) -> CausalLMPolicy:
    torch.manual_seed(seed)
    return CausalLMPolicy(task, model_config=CONFIGS[arch], **kwargs).eval()


def prompts(task, texts) -> Prompts:
    ids, mask = pad_left([task.tokenizer.encode(t, add_special_tokens=False) for t in texts],
                         task.tokenizer.pad_token_id)
    return Prompts(ids, mask, list(texts), {})


def model_logits(policy, queries, responses) -> torch.Tensor:
    """Logits ``[N, T, V]`` of the model at the response positions, one full forward without cache."""
    ids = torch.cat([queries.input_ids, responses[:, :-1]], 1)
    mask = torch.cat([queries.attention_mask, torch.ones_like(responses[:, :-1])], 1)
    with torch.no_grad():
        logits = policy.model(ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
    return logits[:, queries.input_ids.shape[1] - 1 :].float()


@pytest.mark.parametrize("arch", CONFIGS)
def test_a_prompt_alone_and_left_padded_in_a_batch_scores_and_decodes_the_same(task, arch):
    policy = make_policy(task, arch=arch)
    alone, batch = prompts(task, ["7="]), prompts(task, ["7=", *TEXTS])  # "7=" padded by 18 in the batch
    assert batch.attention_mask[0].sum() < batch.attention_mask.shape[1]
    greedy_alone, greedy_batch = policy.sample(alone, greedy=True), policy.sample(batch, greedy=True)
    assert torch.equal(greedy_alone.responses[0], greedy_batch.responses[0])
    torch.testing.assert_close(greedy_alone.log_probs[0], greedy_batch.log_probs[0], atol=1e-5, rtol=0)
    sampled = policy.sample(batch, torch.Generator().manual_seed(0)).responses
    with torch.no_grad():
        scored_alone = policy.score(alone, sampled[:1]).log_probs
        scored_batch = policy.score(batch, sampled).log_probs[:1]
    torch.testing.assert_close(scored_alone, scored_batch, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kwargs", [{}, {"temperature": 0.7}, {"temperature": 0.7, "top_k": 10},
                                    {"top_p": 0.8}, {"temperature": 1.3, "top_k": 20, "top_p": 0.9}])
@pytest.mark.parametrize("texts", [TEXTS, ["12+3=", "45+6=", "78+9="]], ids=["padded", "unpadded"])
@pytest.mark.parametrize("arch", CONFIGS)
def test_on_policy_log_ratio_is_zero(task, kwargs, texts, arch):
    policy = make_policy(task, arch=arch, **kwargs)
    queries = prompts(task, texts).repeat_interleave(8)
    rollout = policy.sample(queries, torch.Generator().manual_seed(0))
    scores = policy.train().score(queries, rollout.responses)  # the module scores in train mode
    log_ratio = (scores.log_probs - rollout.log_probs).detach()
    assert log_ratio.abs().max() <= 1e-5
    assert (rollout.log_probs[~rollout.mask] == 0).all() and (scores.log_probs[~rollout.mask] == 0).all()
    assert rollout.mask.sum() > len(queries)  # responses longer than one token were compared
    scores.log_probs[rollout.mask].sum().backward()  # finite gradients through the truncation
    assert all(p.grad is None or p.grad.isfinite().all() for p in policy.parameters())


@pytest.mark.parametrize("arch", CONFIGS)
def test_kv_cache_draws_what_recomputing_the_prefix_draws(task, arch):
    policy = make_policy(task, arch=arch, temperature=0.8, top_k=30)
    queries = prompts(task, TEXTS)
    rollout = policy.sample(queries, torch.Generator().manual_seed(3))
    generator, responses = torch.Generator().manual_seed(3), torch.zeros(len(TEXTS), 0, dtype=torch.long)
    for _ in range(rollout.responses.shape[1]):  # every step recomputes prompt ⧺ tokens so far, no cache
        padded = torch.cat([responses, torch.zeros(len(TEXTS), 1, dtype=torch.long)], 1)
        logits = policy.sampling_logits(model_logits(policy, queries, padded)[:, -1])
        noise = torch.rand(logits.shape, generator=generator)  # the uniforms sample_from_logits draws
        gumbel = -torch.log(-torch.log(noise.clamp_min(torch.finfo(noise.dtype).tiny)))
        responses = torch.cat([responses, (torch.log_softmax(logits, -1) + gumbel).argmax(-1, keepdim=True)], 1)
    assert torch.equal(rollout.responses[rollout.mask], responses[rollout.mask])


def test_completions_stop_at_eos_or_an_extra_stop_id_and_pad_after_it(task):
    policy = make_policy(task, temperature=4.0)  # near-uniform: stop tokens come early in some rows
    rollout = policy.sample(prompts(task, TEXTS).repeat_interleave(16), torch.Generator().manual_seed(0))
    kinds = set()
    for tokens, log_probs, mask, truncated in zip(*rollout[:4]):
        stops = [i for i, token in enumerate(tokens.tolist()) if token in (EOS, NEWLINE)]
        end = stops[0] + 1 if stops and mask[stops[0]] else len(tokens)  # the first stop token inside the mask
        assert mask.tolist() == [True] * end + [False] * (len(tokens) - end)
        assert (tokens[end:] == PAD).all() and (log_probs[end:] == 0).all() and (log_probs[:end] < 0).all()
        assert bool(truncated) == (tokens[end - 1].item() not in (EOS, NEWLINE))
        kinds.add(tokens[end - 1].item() if not truncated else "truncated")
    assert kinds == {EOS, NEWLINE, "truncated"}  # each way of ending happened


@pytest.mark.parametrize("stop_when_done, forwards", [(True, 1), (False, 12)])
def test_decoding_ends_once_every_completion_stopped(task, stop_when_done, forwards):
    policy = make_policy(task, stop_when_done=stop_when_done)
    eos_first = torch.zeros(101)
    eos_first[EOS] = 100.0  # added to the head's output: every completion ends at once
    policy.model.get_output_embeddings().register_forward_hook(lambda module, inputs, out: out + eos_first)
    calls = []
    policy.model.register_forward_pre_hook(lambda module, inputs: calls.append(1))
    rollout = policy.sample(prompts(task, TEXTS), torch.Generator().manual_seed(0))
    assert len(calls) == forwards  # the prefill, then one step per further token unless all stopped
    assert (rollout.responses[:, 0] == EOS).all() and (rollout.responses[:, 1:] == PAD).all()
    assert rollout.mask.sum(-1).tolist() == [1] * len(TEXTS) and not rollout.truncated.any()


def test_sampling_logits_keep_the_top_k_then_the_nucleus():
    logits = torch.randn(64, 50, generator=torch.Generator().manual_seed(0)) * 3
    for temperature, top_k, top_p in [(1.0, 5, 1.0), (0.7, 0, 0.6), (1.5, 20, 0.9), (1.0, 0, 1e-6)]:
        kept = sampling_logits(logits, temperature, top_k, top_p).isfinite()
        for row, keep in zip(logits / temperature, kept):
            order = row.argsort(descending=True).tolist()[: top_k or None]
            probs = row[order].softmax(-1).tolist()
            mass, expected = 0.0, []
            for token, p in zip(order, probs):  # smallest prefix whose mass reaches top_p
                expected.append(token)
                mass += p
                if mass >= top_p:
                    break
            assert sorted(keep.nonzero().flatten().tolist()) == sorted(expected)


def test_sampled_tokens_lie_in_the_truncated_set_and_their_log_probs_are_renormalised(task):
    temperature, top_k, top_p = 0.7, 8, 0.5
    policy = make_policy(task, temperature=temperature, top_k=top_k, top_p=top_p)
    queries = prompts(task, TEXTS).repeat_interleave(4)
    rollout = policy.sample(queries, torch.Generator().manual_seed(1))
    logits = model_logits(policy, queries, rollout.responses)
    kept = policy.sampling_logits(logits).isfinite()  # [N, T, V]
    assert (kept.sum(-1) <= top_k).all() and (kept.sum(-1) < top_k).any()  # the nucleus cut inside the top k
    assert kept.gather(-1, rollout.responses.unsqueeze(-1)).squeeze(-1)[rollout.mask].all()
    tempered = torch.log_softmax(logits / temperature, -1)
    kept_mass = tempered.exp().masked_fill(~kept, 0).sum(-1)  # [N, T]
    untruncated = tempered.gather(-1, rollout.responses.unsqueeze(-1)).squeeze(-1)  # [N, T]
    expected = untruncated - kept_mass.log()
    torch.testing.assert_close(rollout.log_probs[rollout.mask], expected[rollout.mask], atol=1e-5, rtol=0)
    # not the untruncated softmax's, above it by -log(kept mass): a full-vocabulary score would carry that factor into
    # every ratio (trl#6789; trl#7269 replays vLLM's kept sets, vllm#49577, to remove it)
    assert ((rollout.log_probs - untruncated)[rollout.mask] > 0.05).all()
    probs = torch.log_softmax(policy.sampling_logits(logits), -1).exp()
    torch.testing.assert_close(probs.masked_fill(~kept, 0).sum(-1), torch.ones(kept.shape[:2]))


def test_greedy_takes_the_argmax_with_its_log_prob_under_the_sampling_distribution(task):
    policy = make_policy(task, temperature=0.5, top_k=5)
    queries = prompts(task, TEXTS)
    rollout = policy.sample(queries, greedy=True)
    logits = model_logits(policy, queries, rollout.responses)
    assert torch.equal(rollout.responses[rollout.mask], logits.argmax(-1)[rollout.mask])
    expected = torch.log_softmax(logits / 0.5, -1).topk(5).values  # [N, T, 5]
    expected = expected[..., 0] - expected.logsumexp(-1)
    torch.testing.assert_close(rollout.log_probs[rollout.mask], expected[rollout.mask], atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"top_p": 0.0}, r"top_p must be a finite number in \(0, 1\]; got 0.0"),
        ({"top_p": 1.5}, r"top_p must be a finite number in \(0, 1\]; got 1.5"),
        ({"top_k": -1}, "top_k must be an integer >= 0; got -1"),
        ({"temperature": 0.0}, "temperature must be a finite number > 0; got 0.0"),
        ({"model_config": None, "path": "/no/such/model"}, "path: no such directory /no/such/model$"),
        ({"model_config": {**LLAMA, "vocab_size": 50}},
         r"the model's vocabulary must be >= the tokenizer's 101 ids \(data.task.tokenizer\), one logit per token id; "
         "got 50"),
    ],
    ids=["top_p-0", "top_p-1.5", "top_k", "temperature", "missing-dir", "small-vocab"],
)
def test_bad_arguments_are_one_line_config_errors(task, kwargs, match):
    with pytest.raises(ConfigError, match=match) as err:
        CausalLMPolicy(task, **{"model_config": LLAMA, **kwargs})
    assert "\n" not in str(err.value)


def test_state_query_tasks_and_a_token_map_on_a_text_task_are_refused(task):
    from sapo_lightning.tasks import FixedTarget

    with pytest.raises(ConfigError, match="model.policy must be a policy for state queries with task FixedTarget; "
                                          "got 'CausalLMPolicy'"):
        CausalLMPolicy(FixedTarget([2, 5, 7]), model_config=LLAMA)
    with pytest.raises(ConfigError, match=r"tokenizer and token_ids must be null for a text task, whose tokens are "
                                          r"its tokenizer's \(data.task.init_args.tokenizer\); "
                                          r"got \{'tokenizer': None, 'token_ids': \[0, 1\]\}"):
        CausalLMPolicy(task, model_config=LLAMA, token_ids=[0, 1])


def test_export_loads_with_plain_transformers_and_generates_the_policys_greedy_completions(task, tmp_path):
    policy = make_policy(task, temperature=0.7, top_k=40, top_p=0.95)
    policy.export(str(tmp_path))
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert tokenizer.encode("12+3=\n") == task.tokenizer.encode("12+3=\n") and tokenizer.padding_side == "left"
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True, add_special_tokens=False)
    queries = Prompts(batch["input_ids"], batch["attention_mask"], TEXTS, {})
    rollout = policy.sample(queries, greedy=True)
    generated = model.generate(**batch, do_sample=False, max_new_tokens=12, eos_token_id=[EOS, NEWLINE],
                               pad_token_id=PAD)[:, queries.input_ids.shape[1] :]
    assert torch.equal(generated, rollout.responses[:, : generated.shape[1]])
    assert (rollout.responses[:, generated.shape[1] :] == PAD).all()
    config = model.generation_config  # generate() defaults to the policy's sampling distribution
    assert (config.do_sample, config.temperature, config.top_k, config.top_p) == (True, 0.7, 40, 0.95)
    assert (config.eos_token_id, config.pad_token_id, config.max_new_tokens) == ([EOS, NEWLINE], PAD, 12)


def test_a_bfloat16_model_samples_and_scores_in_float32(task):
    policy = make_policy(task, dtype="bfloat16", top_p=0.9)
    assert policy.model.dtype == torch.bfloat16
    queries = prompts(task, TEXTS)
    rollout = policy.sample(queries, torch.Generator().manual_seed(0))
    scores = policy.score(queries, rollout.responses)
    assert rollout.log_probs.dtype == scores.log_probs.dtype == scores.entropy.dtype == torch.float32
    assert rollout.log_probs[rollout.mask].isfinite().all()  # score's may not be: see the truncation boundary


def test_shared_prompts_detects_groups_of_equal_consecutive_rows():
    from sapo_lightning.lm.prefill import shared_prompts

    rows = torch.tensor([[1, 2], [3, 4], [5, 6]])
    assert shared_prompts(rows.repeat_interleave(4, 0)) == 4
    assert shared_prompts(rows) == 1
    assert shared_prompts(rows.repeat(2, 1)) == 1  # a b c a b c: no consecutive groups
    assert shared_prompts(torch.tensor([[1], [1], [1], [2], [2], [3]])) == 1  # uneven runs


@pytest.mark.parametrize("arch", CONFIGS)
def test_a_group_shares_its_prompt_with_the_results_of_one_row_each(task, arch):
    """Responses of a repeated prompt are scored on the prompt's cache, computed once: the log-probs and
    gradients of rows scored apart (their order shuffled, so no two equal prompts are neighbours)."""
    policy = make_policy(task, arch=arch).train()
    queries = prompts(task, ["7=", "100+200+300=", "x"]).repeat_interleave(4)  # left-padded, 3 groups of 4
    rollout = policy.sample(queries, torch.Generator().manual_seed(0))
    grouped = policy.score(queries, rollout.responses)
    (grads_grouped,) = [torch.autograd.grad(grouped.log_probs.sum(), policy.model.get_input_embeddings().weight)]
    order = torch.arange(12).view(3, 4).T.flatten()  # 0 4 8 1 5 9 ...: every neighbour has another prompt
    shuffled = Prompts(queries.input_ids[order], queries.attention_mask[order], [queries.texts[i] for i in order], {})
    apart = policy.score(shuffled, rollout.responses[order])
    (grads_apart,) = [torch.autograd.grad(apart.log_probs.sum(), policy.model.get_input_embeddings().weight)]
    torch.testing.assert_close(grouped.log_probs[order], apart.log_probs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads_grouped, grads_apart, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(rollout.log_probs[rollout.mask], grouped.log_probs[rollout.mask], atol=1e-5, rtol=1e-5)


def test_a_model_with_dropout_or_checkpointing_scores_every_row_whole_in_training():
    from transformers import AutoConfig, AutoModelForCausalLM

    from sapo_lightning.lm.prefill import can_share_prompts_in_training

    def model(**fields):
        return AutoModelForCausalLM.from_config(AutoConfig.for_model(**{**LLAMA, **fields}))

    assert can_share_prompts_in_training(model())
    assert not can_share_prompts_in_training(model(attention_dropout=0.1))  # a config rate, not a layer
    checkpointed = model()
    checkpointed.gradient_checkpointing_enable()
    assert not can_share_prompts_in_training(checkpointed)
    assert not can_share_prompts_in_training(
        AutoModelForCausalLM.from_config(AutoConfig.for_model(**{**GPT2, "resid_pdrop": 0.1})))
