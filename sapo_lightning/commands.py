"""The ``sapo-lightning`` command: one entry point for every subcommand."""

from __future__ import annotations

import sys
from importlib.metadata import version

#: subcommand -> what it does, as ``sapo-lightning --help`` lists it
SUBCOMMANDS = {
    "fit": "train a policy from a config (LightningCLI)",
    "validate": "evaluate a checkpoint on the validation queries",
    "test": "evaluate a checkpoint on held-out test queries",
    "compare": "run objectives x seeds x tasks from a study YAML and summarise them",
    "export": "write the trained policy as a transformers model and tokenizer",
}
USAGE = "usage: sapo-lightning {" + ",".join(SUBCOMMANDS) + "} ..."


def overview() -> str:
    """The usage line and the subcommands, each with what it does."""
    width = max(map(len, SUBCOMMANDS))
    lines = [f"  {name:<{width}}  {text}" for name, text in SUBCOMMANDS.items()]
    return "\n".join([USAGE, "", "subcommands:", *lines, "",
                      "sapo-lightning SUBCOMMAND --help shows its options; sapo-lightning --version its version."])


def main(args: list[str] | None = None) -> None:
    """Entry point of ``sapo-lightning`` and ``python -m sapo_lightning``."""
    argv = sys.argv[1:] if args is None else list(args)
    command = argv[0] if argv else None
    if command in ("-h", "--help"):
        print(overview())
        return
    if command == "--version":
        print(f"sapo-lightning {version('sapo-lightning')}")
        return
    if command is None:  # the overview, as for --help, but as an error: there is nothing to run
        print(overview(), file=sys.stderr)
        raise SystemExit(2)
    if command not in SUBCOMMANDS:
        print(f"sapo-lightning: error: the subcommand must be one of {', '.join(SUBCOMMANDS)}; got {command!r} "
              "(sapo-lightning --help lists them)", file=sys.stderr)
        raise SystemExit(2)
    if command == "compare":
        from sapo_lightning.compare import main as compare

        return compare(argv[1:])
    if command == "export":
        from sapo_lightning.export import main as export

        return export(argv[1:])
    from sapo_lightning.cli import main as lightning_cli

    return lightning_cli(args)
