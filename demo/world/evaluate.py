"""Moved to `demo.eval.pocket` (the pocket world's table is a benchmark of `python -m demo.eval`);
re-exported here for `demo.world.build` and older imports."""

from ..eval.pocket import GREEDY, NEVER_WITH_TEXT, Evaluation, evaluate

__all__ = ["GREEDY", "NEVER_WITH_TEXT", "Evaluation", "evaluate"]
