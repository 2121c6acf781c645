"""Python's own answer for each input line (JSON string per line on stdin): what Stably
Discordant's parser (shlex non-POSIX + argparse.parse_known_args) makes of it.

    reference.py [seed|extended] [--help]

`seed` (the default) is the seed's parser; `extended` adds the extended parser's options
(plugins/parser-extended). With --help, prints the parser's format_help() at 80 columns."""
import argparse
import contextlib
import io
import json
import os
import re
import shlex
import sys

mode = sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("-") else "seed"
os.environ["COLUMNS"] = "80"


def bounded_int(text):
    """int() within an i64 (easel's seeds are 64-bit)."""
    value = int(text)
    if not -(2**63) <= value < 2**63:
        raise ValueError(text)
    return value


bounded_int.__name__ = "int"


def size(text):
    """WxH: two positive ints that fit in 32 bits."""
    match = re.fullmatch(r"([0-9]+)[xX]([0-9]+)", text)
    if not match:
        raise ValueError(text)
    width, height = int(match[1]), int(match[2])
    if not (0 < width < 2**32 and 0 < height < 2**32):
        raise ValueError(text)
    return [width, height]


parser = argparse.ArgumentParser(prog="StableDiscord", add_help=False)
parser.add_argument(
    "prompt",
    nargs="*",
    help="The prompt is a positional argument meaning text not assigned to an argument is"
    " presumed to bethe prompt.",
)
parser.add_argument(
    "--cfg",
    type=float,
    default=7.5,
    help="A float value for the 'Context Free Guidance' parameter. Sometimes called 'style' in"
    " other models. (Defaults to 7.5)",
)
parser.add_argument(
    "--steps",
    type=int if mode == "seed" else bounded_int,
    default=50,
    help="The number of diffusion steps. More will take longer, but usually returns better"
    " results. (Defaults to 50)",
)
if mode == "extended":
    parser.add_argument(
        "--negative", default="", help="What to keep out of the picture. (Defaults to nothing)"
    )
    parser.add_argument(
        "--seed",
        type=bounded_int,
        default=-1,
        help="The random seed: the same seed, prompt and options draw the same picture again."
        " (Defaults to -1, a random seed)",
    )
    parser.add_argument(
        "--size",
        type=size,
        default=[0, 0],
        metavar="WxH",
        help="The picture's width and height in pixels, e.g. 512x768. (Defaults to the model's"
        " own size)",
    )
    parser.add_argument(
        "--model",
        default="",
        help="The model (checkpoint) to draw with. (Defaults to the server's default model)",
    )
    parser.add_argument(
        "--sampler",
        default="",
        help="The sampler to use. (Defaults to the server's default sampler)",
    )

if "--help" in sys.argv:
    sys.stdout.write(parser.format_help())
    sys.exit(0)

for line in sys.stdin:
    text = json.loads(line)
    try:
        words = shlex.split(text, posix=False)
    except ValueError as err:
        print(json.dumps({"error": "quote" if "No closing quotation" in str(err) else "value"}))
        continue
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            args, unknown = parser.parse_known_args(words)
    except SystemExit as exit:
        print(json.dumps({"error": "usage", "code": exit.code}))
        continue
    cfg = args.cfg
    if cfg != cfg:
        cfg = None
    elif cfg in (float("inf"), float("-inf")):
        cfg = repr(cfg)
    answer = {"prompt": args.prompt, "cfg": cfg, "steps": args.steps, "unknown": unknown}
    if mode == "extended":
        answer.update(
            negative=args.negative,
            seed=args.seed,
            size=args.size,
            model=args.model,
            sampler=args.sampler,
        )
    print(json.dumps(answer))
