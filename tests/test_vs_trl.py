"""benchmarks/vs_trl.py gives both tools the same prompts, token ids and reward (trl itself is not needed)."""

import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("datasets")
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import vs_trl  # noqa: E402

from sapo_lightning.lm.policy import CausalLMPolicy  # noqa: E402


@pytest.fixture(scope="module")
def copy_model(tmp_path_factory):
    return vs_trl.write_assets("copy", tmp_path_factory.mktemp("assets"))


def test_copy_prompts_tokenize_to_our_queries_and_our_policy_maps_tokens_one_to_one(copy_model):
    from transformers import AutoTokenizer

    task = vs_trl.copy_task()
    tokenizer = AutoTokenizer.from_pretrained(copy_model)  # what TRL loads
    rows = vs_trl.prompt_rows("copy", 3)
    ours = torch.cat([task.train_batch(i, vs_trl.COMMON["batch"], vs_trl.COMMON["seed"], 0, 1) for i in range(3)])
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
    rows = vs_trl.prompt_rows("text", 2)
    tokenizer = AutoTokenizer.from_pretrained(vs_trl.ASCII)
    for index in range(2):
        batch = task.train_batch(index, vs_trl.COMMON["batch"], vs_trl.COMMON["seed"], 0, 1)
        mine = rows[index * 16 : (index + 1) * 16]
        assert [row["prompt"] for row in mine] == batch.texts
        assert [row["answer"] for row in mine] == batch.columns["answer"]
        ours = [ids[keep.bool()].tolist() for ids, keep in zip(batch.input_ids, batch.attention_mask)]
        assert tokenizer([row["prompt"] for row in mine])["input_ids"] == ours
