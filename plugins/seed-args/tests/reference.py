"""Python's own answer for each input line (JSON string per line on stdin): what Stably
Discordant's parser (shlex non-POSIX + argparse.parse_known_args) makes of it."""
import argparse
import contextlib
import io
import json
import shlex
import sys

parser = argparse.ArgumentParser(prog="StableDiscord", add_help=False)
parser.add_argument("prompt", nargs="*")
parser.add_argument("--cfg", type=float, default=7.5)
parser.add_argument("--steps", type=int, default=50)

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
    print(json.dumps({"prompt": args.prompt, "cfg": cfg, "steps": args.steps, "unknown": unknown}))
