"""Episodes of several turns: token in / token out, masks, stateful environments, endings, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from echo_envs import Counting  # tests/ is on sys.path under pytest
from sapo_lightning.checks import ConfigError, RunFailed
from sapo_lightning.envs import EnvTask, Step
from sapo_lightning.envs.examples import Retry
from sapo_lightning.lm.policy import CausalLMPolicy
from sapo_lightning.lm.turns import TurnDecoder
from sapo_lightning.rollout import Episodes

ROOT = Path(__file__).resolve().parents[1]
ASCII = str(ROOT / "assets" / "tokenizers" / "ascii")
NEWLINE = 5  # closes an assistant message in the ASCII tokenizer's chat template
LLAMA = {"model_type": "llama", "vocab_size": 101, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 256, "bos_token_id": 2,
         "eos_token_id": 1, "pad_token_id": 0, "attention_dropout": 0.0}


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("rows") / "rows.jsonl"
    with path.open("w") as f:
        for i in range(16):  # episodes that end by done after 1, 2 or 3 turns, or never
            f.write(json.dumps({"topic": f"t{i}", "turns": [1, 2, 3, None][i % 4]}) + "\n")
    return str(path)


def make_task(rows: str, env: str = "echo_envs.Counting", **kwargs) -> EnvTask:
    args = {"max_turns": 4, "max_new_tokens": 10, "max_episode_tokens": 200, "stop_token_ids": [NEWLINE],
            "val_fraction": 0.25} | kwargs
    return EnvTask({"class_path": env}, rows, ASCII, **args)


def make_policy(task: EnvTask, **kwargs) -> CausalLMPolicy:
    torch.manual_seed(0)
    return CausalLMPolicy(task, model_config=LLAMA | kwargs).eval()


def episodes(task, policy, seed=0, n=4, group=2):
    queries = task.collate(task.data.train_rows[:n]).repeat_interleave(group)
    return task.sample(policy, queries, torch.Generator().manual_seed(seed))


def segments(flags: torch.Tensor) -> list[tuple[int, int]]:
    """The runs [start, end) where ``flags`` [T] is True."""
    out, start = [], None
    for i, flag in enumerate(flags.tolist() + [False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            out.append((start, i))
            start = None
    return out


@pytest.mark.parametrize("reuse_cache", [True, False])
def test_on_policy_log_ratio_is_zero_over_every_policy_token(rows, reuse_cache):
    task = make_task(rows, reuse_cache=reuse_cache)
    policy = make_policy(task)
    prompts, rollout = episodes(task, policy)
    assert (rollout.episodes.turns > 1).any()  # multi-turn episodes
    with torch.no_grad():
        scores = policy.score(prompts, rollout.responses, attention=rollout.attention)
    log_ratio = (scores.log_probs - rollout.log_probs)[rollout.mask]
    assert log_ratio.numel() > 50 and log_ratio.abs().max() <= 1e-5


def test_reusing_the_kv_cache_draws_what_rerunning_the_transcript_draws(rows):
    task = make_task(rows)
    policy = make_policy(task)
    _, reused = episodes(task, policy)
    task.reuse_cache = False
    _, rerun = episodes(task, policy)
    assert torch.equal(reused.responses, rerun.responses) and torch.equal(reused.mask, rerun.mask)
    torch.testing.assert_close(reused.log_probs, rerun.log_probs, atol=1e-5, rtol=0)


def test_environment_tokens_are_the_template_replies_and_carry_no_mask_no_log_prob(rows):
    task = make_task(rows)
    prompts, rollout = episodes(task, make_policy(task))
    assert not (rollout.mask & ~rollout.attention).any() and (rollout.log_probs[~rollout.mask] == 0).all()
    for row in range(len(rollout.responses)):
        tokens, mask = rollout.responses[row][rollout.attention[row]], rollout.mask[row][rollout.attention[row]]
        turns = segments(mask)
        env_runs = segments(~mask)
        transcript = rollout.episodes.transcripts[row]
        replies = [m for m in transcript[1:] if m["role"] == "user"]
        assert len(env_runs) == len(replies) == len(turns) - 1  # a reply between two turns, none after the last
        for (start, end), reply, (_, turn_end) in zip(env_runs, replies, turns):
            stopped = tokens[turn_end - 1].item() in task.stop_token_ids
            assert tokens[start:end].tolist() == task.reply_tokens(reply["content"], "user", stopped)


def test_a_stateful_environment_sees_exactly_its_own_episodes_turns(rows):
    task = make_task(rows)
    _, rollout = episodes(task, make_policy(task))
    for row, env in enumerate(rollout.episodes.environments):
        assert isinstance(env, Counting) and env.row["topic"] == f"t{row // 2}"
        tokens, mask = rollout.responses[row][rollout.attention[row]], rollout.mask[row][rollout.attention[row]]
        turns = [tokens[a:b].tolist() for a, b in segments(mask)]
        said = [task.tokenizer.decode(t[:-1] if t[-1] == NEWLINE else t, skip_special_tokens=True) for t in turns]
        assert env.heard == said[: len(env.heard)] and len(env.heard) >= len(said) - 1  # a truncated turn is unheard
        assert env.heard == [m["content"] for m in rollout.episodes.transcripts[row] if m["role"] == "assistant"]


def test_trained_token_ids_are_the_sampled_ones_even_where_reencoding_would_change_them(rows, monkeypatch):
    sampled = []  # each turn's sampled tokens, per row, as the decoder drew them
    turn = TurnDecoder.turn

    def recording(self, *args, **kwargs):
        out = turn(self, *args, **kwargs)
        sampled.append([t[m].tolist() for t, m in zip(out.tokens, out.mask)])
        return out

    monkeypatch.setattr(TurnDecoder, "turn", recording)
    task = make_task(rows)
    _, rollout = episodes(task, make_policy(task))
    for row in range(len(rollout.responses)):
        trained = rollout.responses[row][rollout.mask[row]].tolist()
        assert trained == [token for step in sampled for token in step[row]]
    changed = [tokens for step in sampled for tokens in step
               if tokens and task.tokenizer.encode(task.tokenizer.decode(tokens, skip_special_tokens=True),
                                                   add_special_tokens=False) != tokens]
    assert changed  # decoding and re-encoding would have changed some turns (special tokens sampled mid-turn)


def test_episodes_end_by_done_max_turns_or_truncation_and_never_pass_the_token_budget(rows):
    task = make_task(rows, max_turns=3, max_episode_tokens=90)
    prompts, rollout = episodes(task, make_policy(task), n=8)
    e = rollout.episodes
    planned = torch.tensor([env.row["turns"] or 99 for env in e.environments])  # the turn each row says done at
    lengths = prompts.attention_mask.sum(-1) + rollout.attention.sum(-1)
    assert (lengths <= 90).all()
    done, max_turns, truncated = (e.ended == Episodes.ENDINGS.index(name) for name in Episodes.ENDINGS)
    assert torch.equal(done, (e.turns == planned) & ~truncated)  # done exactly at the row's planned turn
    assert (e.turns[max_turns] == 3).all() and (planned[max_turns] > 3).all()
    assert truncated.any() and torch.equal(rollout.truncated, truncated)
    assert torch.equal(e.turn_rewards[:, :3].isnan(), torch.arange(3) >= e.turns[:, None])  # a reward per turn taken


def test_step_rewards_sum_into_the_episode_reward_and_reward_functions_add_to_it(rows, tmp_path):
    task = make_task(rows, rewards=[{"function": "echo_envs.turns_heard", "weight": 2.0}])
    prompts, rollout = episodes(task, make_policy(task))
    rewards = task.rewards(prompts, rollout)
    e = rollout.episodes
    torch.testing.assert_close(e.step_reward, torch.stack([r.nansum() for r in e.turn_rewards]))
    heard = torch.tensor([float(len(env.heard)) for env in e.environments])
    torch.testing.assert_close(rewards.terms["turns_heard"], heard)
    torch.testing.assert_close(rewards.total, e.step_reward + 2.0 * heard)


def test_retry_rewards_the_right_answer_at_any_turn_and_ends_there():
    env = Retry(feedback="no")
    assert env.reset({"prompt": "What is 2 + 3?", "answer": 5}) == "What is 2 + 3?"
    assert env.step("It is 6") == Step("no")
    assert env.step("2 + 3 = 5") == Step(reward=1.0, done=True)


@pytest.mark.parametrize("env, match", [
    ("echo_envs.Nowhere", r"env.class_path must be an importable path"),
    ("echo_envs.NoStep", r"env.class_path must be an environment class with reset\(row\) and step\(completion\) "
                         r"methods \(sapo_lightning.envs.Environment\); it lacks step"),
])
def test_a_bad_environment_class_is_a_one_line_config_error(rows, env, match):
    with pytest.raises(ConfigError, match=match):
        make_task(rows, env=env)


@pytest.mark.parametrize("env, match", [
    ("echo_envs.Raising", r"echo_envs.Raising.step raised ValueError: the environment broke \(row \{'topic': 't0', "
                          r"'turns': 1\}, turn 1\)"),
    ("echo_envs.WrongType", r"echo_envs.WrongType.step must return a Step; got dict \{'observation': 'x'\} \(row "),
])
def test_an_environment_that_fails_mid_run_is_one_line_naming_it_the_row_and_the_turn(rows, env, match):
    task = make_task(rows, env=env)
    with pytest.raises(RunFailed, match=match):
        episodes(task, make_policy(task))


def test_episodes_longer_than_the_models_context_are_refused(rows):
    task = make_task(rows, max_episode_tokens=300)
    with pytest.raises(ConfigError, match=r"max_episode_tokens must be at most the model's "
                                          r"max_position_embeddings=256; got 300"):
        make_policy(task)


def test_a_chat_template_whose_turn_end_is_no_stop_token_is_refused(rows):
    with pytest.raises(ConfigError, match=r"stop_token_ids must hold the token that closes an assistant message"):
        make_task(rows, stop_token_ids=None)


class ScriptedDecoder:
    """A policy's turns read from a script: every live row says the script's next line, then the newline."""

    def __init__(self, tokenizer, script: list[str], ids: torch.Tensor, attention: torch.Tensor) -> None:
        self.tokenizer, self.script, self.ids, self.attention = tokenizer, list(script), ids, attention.long()

    def turn(self, live, budget, generator, greedy):
        from sapo_lightning.lm.turns import Turn

        tokens = torch.tensor(self.tokenizer.encode(self.script.pop(0), add_special_tokens=False) + [NEWLINE])
        n, t = len(live), len(tokens)
        grid, mask = tokens.repeat(n, 1), live[:, None].expand(n, t).clone()
        self.ids = torch.cat([self.ids, torch.where(mask, grid, 0)], 1)
        self.attention = torch.cat([self.attention, mask.long()], 1)
        return Turn(torch.where(mask, grid, 0), torch.where(mask, -1.0, 0.0), mask, live.clone())

    def extend(self, blocks):
        width = max(map(len, blocks))
        for name, fill in (("ids", 0), ("attention", 0)):
            rows = [[fill] * (width - len(b)) + (b if name == "ids" else [1] * len(b)) for b in blocks]
            setattr(self, name, torch.cat([getattr(self, name), torch.tensor(rows, dtype=torch.long)], 1))


class ScriptedPolicy:
    pad_token = 0

    def __init__(self, tokenizer, script: list[str]) -> None:
        self.tokenizer, self.script = tokenizer, script

    def turns(self, ids, attention, reuse_cache=True):
        return ScriptedDecoder(self.tokenizer, self.script, ids, attention)


def test_a_tool_environment_runs_the_called_tool_and_answers_in_the_tool_role(tmp_path):
    rows = tmp_path / "tools.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"What is 2 + {b}?", "answer": 2 + b}) + "\n" for b in (3, 5)))
    env = {"class_path": "sapo_lightning.envs.tools.ToolEnv", "init_args": {"environment": "tool_envs.Calculator"}}
    task = EnvTask(env, str(rows), ASCII, val_file=str(rows), max_turns=3, max_new_tokens=80,
                   max_episode_tokens=1000, stop_token_ids=[NEWLINE])
    call = '<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>'
    policy = ScriptedPolicy(task.tokenizer, [call, "The answer is 5."])
    prompts, rollout = task.sample(policy, task.collate(task.data.train_rows[:1]))
    transcript = rollout.episodes.transcripts[0]
    assert [(m["role"], m["content"]) for m in transcript[-3:]] == [
        ("assistant", call), ("tool", "5"), ("assistant", "The answer is 5.")]
    assert (rollout.episodes.ended.tolist() == [Episodes.ENDINGS.index("done")]
            and rollout.episodes.turns.tolist() == [2])
    assert task.rewards(prompts, rollout).total.tolist() == [1.0]  # Calculator.reward: the answer is in the last turn
    tokens, mask = rollout.responses[0][rollout.attention[0]], rollout.mask[0][rollout.attention[0]]
    (start, end), = segments(~mask)
    assert tokens[start:end].tolist() == task.reply_tokens("5", "tool", True)
    assert task.tokenizer.decode(tokens[start:end]) == "tool: 5\nassistant: "  # the ASCII template's tool role
