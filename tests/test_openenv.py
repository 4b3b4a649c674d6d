"""OpenEnvEnvironment driven by hand over the number-guessing OpenEnv environment of tests/guess_env.py."""

from __future__ import annotations

import random

import pytest

pytest.importorskip("openenv")

from sapo_lightning.checks import ConfigError
from sapo_lightning.envs import Environment, Step
from sapo_lightning.envs.openenv import OpenEnvEnvironment

GUESS = "guess_env.GuessEnvironment"


def guessing(**kwargs) -> OpenEnvEnvironment:
    """A guessing episode: the text's last number is the guess, the row's answer column the target."""
    args = {"environment": GUESS, "action": "guess_env.parse_guess", "observation": "message",
            "reset_args": {"answer": "target"}}
    return OpenEnvEnvironment(**{**args, **kwargs})


def test_is_an_environment():
    assert isinstance(guessing(), Environment)


def test_an_episode_of_hints_ends_with_reward_one_on_the_hit():
    env = guessing(environment_args={"high": 10}, instructions="Answer with a number.")
    assert env.reset({"answer": 7, "prompt": "unused"}) == "Answer with a number.\n\nGuess a number from 1 to 10."
    assert env.step("I guess 5") == Step("5 is wrong: go higher.", 0.0, False)
    assert env.step("then 9") == Step("9 is wrong: go lower.", 0.0, False)
    assert env.step("7") == Step("Correct!", 1.0, True)
    assert env.state.step_count == 3 and env.state.guesses == [5, 9, 7]


def test_a_turn_that_is_no_action_goes_back_as_the_observation_and_the_episode_goes_on():
    env = guessing()
    env.reset({"answer": 3})
    assert env.step("no idea") == Step("Invalid action: no number in the answer", 0.0, False)
    assert env.state.step_count == 0  # the environment never saw it
    assert env.step("3").done


def test_episodes_keep_their_own_state():
    low, high = guessing(), guessing()
    low.reset({"answer": 30})
    high.reset({"answer": 70})
    assert low.step("50").observation == "50 is wrong: go lower."
    assert high.step("50").observation == "50 is wrong: go higher."
    assert low.step("30") == Step("Correct!", 1.0, True)
    assert high.step("60").observation == "60 is wrong: go higher."
    assert (low.state.guesses, high.state.guesses) == ([50, 30], [50, 60])
    assert low.state.episode_id != high.state.episode_id


def test_a_seed_column_gives_the_episodes_of_a_group_the_same_target():
    seeds = (1, 2)
    targets = [random.Random(seed).randint(1, 100) for seed in seeds]
    assert targets[0] != targets[1]
    group = [guessing(reset_args=["seed"]) for _ in range(3)] + [guessing(reset_args=["seed"])]
    for i, env in enumerate(group):
        env.reset({"seed": seeds[i == 3]})
    assert [env.state.target for env in group] == [targets[0]] * 3 + [targets[1]]
    assert group[0].step(str(targets[0])) == Step("Correct!", 1.0, True)


def test_defaults_put_the_text_in_the_action_class_only_field_and_read_the_observation_only_field():
    # GuessEnvironment names its Action class in its generic base; pydantic turns "42" into 42
    env = OpenEnvEnvironment(GUESS, reset_args={"answer": "target"})
    assert env.reset({"answer": 42}) == "Guess a number from 1 to 100."
    assert env.step("41") == Step("41 is wrong: go higher.", 0.0, False)
    assert env.step("forty-two").observation.startswith("Invalid action: guess: Input should be a valid integer")
    assert env.step("42").done
    # EchoEnvironment has no generic base: its Action class comes from step's annotation
    echo = OpenEnvEnvironment("guess_env.EchoEnvironment", {"turns": 2})
    assert echo.reset({}) == "ready"
    assert echo.step("hello") == Step("hello", 0.5, False)
    assert echo.step("bye!") == Step("bye!", 0.4, True)


def test_an_action_class_and_an_observation_function_by_import_path():
    env = OpenEnvEnvironment(GUESS, action="guess_env.GuessAction", observation="guess_env.shout",
                             reset_args={"answer": "target"})
    assert env.reset({"answer": 2}) == "GUESS A NUMBER FROM 1 TO 100."
    assert env.step("1") == Step("1 IS WRONG: GO HIGHER.", 0.0, False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"environment": "guess_env.Nope"}, ("environment must be an importable path 'module.attribute'; "
                                             "got 'guess_env.Nope': guess_env has no attribute 'Nope'")),
        ({"environment": "no_such_module.Env"}, "no module named 'no_such_module'"),
        ({"environment": "guess_env.NotAnEnvironment"}, "environment must be an OpenEnv Environment subclass"),
        ({"environment_args": {"size": 3}}, "environment_args: guess_env.GuessEnvironment cannot be built: "),
        ({"action": "guess_env.GuessObservation"}, "action must be an OpenEnv Action class or a function"),
        ({"reset_args": "answer"}, "reset_args must be a list of column names, a mapping"),
    ],
)
def test_bad_configs_fail_in_one_line_when_built(kwargs, message):
    with pytest.raises(ConfigError) as err:
        guessing(**kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_mappings_of_the_wrong_type_fail_in_one_line():
    with pytest.raises(ConfigError, match=r"^observation: guess_env.hint_length must give text; it gave a int"):
        guessing(observation="guess_env.hint_length").reset({"answer": 1})
    with pytest.raises(ConfigError, match=r"^observation must be a field of GuessObservation \(its fields: "):
        guessing(observation="hint").reset({"answer": 1})
    env = guessing(action="guess_env.not_an_action")
    env.reset({"answer": 1})
    with pytest.raises(ConfigError, match=r"^action: guess_env.not_an_action must return an OpenEnv Action; "
                                          r"it returned a str$"):
        env.step("1")
    with pytest.raises(ConfigError, match=r"^reset_args must be columns of the row \(its columns: seed\); "
                                          r"got 'answer'"):
        guessing().reset({"seed": 1})
