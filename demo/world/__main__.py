"""python -m demo.world: build (and ship) the pocket model, or evaluate a built one.

  python -m demo.world build --ship     # everything, ~20 min on 2 CPU cores, in ~/.cache/imagebind-llm/
                                        # pocket-build; --ship copies the result to weights/pocket
  python -m demo.world evaluate                         # the claims table for weights/pocket
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

from ..pipeline import default_home

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "weights" / "pocket"  # the folder the `pocket` preset loads
SHIPPED_EXAMPLES = ROOT / "examples" / "world"
WORK = default_home() / "pocket-build"  # outside the repository: ~/.cache/imagebind-llm unless $IBLLM_HOME


def ship(folder: Path) -> None:
    """Copy a built folder to weights/pocket (without examples/) and its examples to examples/world."""
    shutil.rmtree(SHIPPED, ignore_errors=True)
    shutil.copytree(folder, SHIPPED, ignore=shutil.ignore_patterns("examples"))
    shutil.rmtree(SHIPPED_EXAMPLES, ignore_errors=True)
    shutil.copytree(folder / "examples", SHIPPED_EXAMPLES)


def main(argv: list[str] | None = None) -> int:
    from .build import Recipe, build, evaluate_folder
    from .scene import generate_world, read_world

    parser = argparse.ArgumentParser(prog="python -m demo.world", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    build_cmd = commands.add_parser("build", help="generate the world and train everything")
    build_cmd.add_argument("--out", type=Path, default=WORK, help="work folder (default: %(default)s)")
    build_cmd.add_argument("--quick", action="store_true", help="the shortened recipe of the test (small world, few steps)")
    build_cmd.add_argument("--ship", action="store_true", help=f"copy the result to {SHIPPED.relative_to(ROOT)} and {SHIPPED_EXAMPLES.relative_to(ROOT)}")
    evaluate_cmd = commands.add_parser("evaluate", help="print the claims table for a built folder")
    evaluate_cmd.add_argument("--weights", type=Path, default=SHIPPED, help="built folder (default: %(default)s)")
    evaluate_cmd.add_argument("--world", type=Path, default=WORK / "world",
                              help="world folder; generated (about 1 min) when missing (default: %(default)s)")
    evaluate_cmd.add_argument("--objects", type=int, help="held-out objects to use (default: all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.command == "build":
        recipe = Recipe.quick() if args.quick else Recipe()
        folder = build(args.out, recipe)
        if args.ship:
            ship(folder)
    else:
        generate_world(args.world, Recipe().world)  # a no-op when the folder holds this world
        print(evaluate_folder(args.weights, read_world(args.world, "test")[: args.objects], read_world(args.world, "train"))[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
