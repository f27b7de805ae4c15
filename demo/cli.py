"""One command line for the project: `ibllm COMMAND [OPTIONS]` (`python -m demo COMMAND` without installing).

Each command is one stage's own `main(argv)`, called as a function with the rest of the line:
`ibllm COMMAND --help` prints that stage's options, and the command shown beside each below runs
the same function. `pip install -e .` (scripts/setup.sh does it) puts `ibllm` on the PATH.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    """One command: where its `main(argv) -> int | None` lives and what it does."""

    module: str  # imported only when the command runs, so `ibllm --help` loads no torch or gradio
    summary: str
    same_as: str  # the command that runs the same function without the console script

    def main(self) -> Callable[[list[str]], int | None]:
        return importlib.import_module(self.module).main


STAGES: dict[str, Stage] = {
    "app": Stage("app", "the web app (Gradio): chat about images, sounds, videos, 3D shapes...", "python app.py"),
    "serve": Stage("demo.serve.__main__", "the OpenAI-compatible HTTP API (uvicorn or Ray Serve)", "python -m demo.serve"),
    "download": Stage("demo.weights_tools.download", "download the released files, resumably", "python -m demo.weights_tools.download"),
    "convert": Stage("demo.weights_tools.convert", "convert the released files into a folder the app loads", "python -m demo.weights_tools.convert"),
    "cache": Stage("demo.weights_tools.cache", "build a visual cache from images or embeddings, or compact one", "python -m demo.weights_tools.cache"),
    "train": Stage("demo.train.cli", "train the adapter: features, stage1, stage2, export", "python -m demo.train"),
    "eval": Stage("demo.eval.__main__", "benchmarks through the pipeline: mme, captions, pocket", "python -m demo.eval"),
    "world": Stage("demo.world.__main__", "build or evaluate the pocket world's model", "python -m demo.world"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ibllm", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `ibllm COMMAND --help` for a command's options. The same commands without the console script:\n"
        + "\n".join(f"  ibllm {name:9s} = {stage.same_as}" for name, stage in STAGES.items()),
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, stage in STAGES.items():
        commands.add_parser(name, help=stage.summary, add_help=False)  # the stage's own parser answers --help
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The `ibllm` console script: the first word picks the stage, the rest goes to its `main`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = build_parser().parse_args(argv[:1]).command  # --help, or an unknown command: argparse answers and exits
    return STAGES[command].main()(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
