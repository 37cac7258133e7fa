"""The ``steerlab`` command: one module per command group (report and its alias demo, capture,
store, view, steer and vector, sae). Options come from config dataclasses
(:mod:`steerlab.config`), so every option has help text and its default, and a bad value is
refused before anything is written.

Errors the user can fix (a missing file, a bad site, an unknown model or corpus, a folder that
cannot be written) are printed as one line on stderr with exit status 1; ``--debug`` shows the
traceback instead. Usage errors exit with status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from safetensors import SafetensorError

from steerlab import __version__
from steerlab.cli import capture, report, sae, steer, store, view
from steerlab.cli.common import EXIT_ERROR, CliError, HelpFormatter, add_common_flags

__all__ = ["build_parser", "main"]

DESCRIPTION = """Capture the activations of a transformer language model, look at them, train
sparse autoencoders on them, and steer the model with vectors fitted from contrast pairs.
Works offline with the embedded SmolLM2-135M-Instruct model; any local Hugging Face model
directory (or hub id, with network) works too."""

EPILOG = """examples:
  steerlab report --out runs/report                 # every method, one offline HTML page
  steerlab demo                                     # the same (what make demo runs)
  steerlab capture --sites resid_post.6 --tokens 200000 --out runs/prose-l6
  steerlab store info runs/prose-l6
  steerlab view pca runs/prose-l6 --out runs/prose-l6.html
  steerlab sae train --store runs/prose-l6 --site resid_post.6 --width 4608 --out runs/sae
  steerlab vector fit --pairs data/steering/sentiment.jsonl --sites resid_post.9 --chat \\
      --out runs/vec-sentiment
  steerlab steer --vector runs/vec-sentiment --alpha 0.1 --prompt "Tell me about your weekend."

Run `steerlab COMMAND --help` for a command's options. Exit status: 0 done, 1 the command
failed (one line on stderr; --debug shows the traceback), 2 bad usage."""

# errors whose message is the whole story; anything else is a bug and says so
_USER_ERRORS = (CliError, ValueError, KeyError, OSError, ImportError, SafetensorError)


def build_parser() -> argparse.ArgumentParser:
    """The ``steerlab`` argument parser with every command group."""
    p = argparse.ArgumentParser(prog="steerlab", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=HelpFormatter)  # fmt: skip
    p.add_argument("--version", action="version", version=f"steerlab {__version__}")
    add_common_flags(p, top=True)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (report, capture, store, view, steer, sae):
        group.register(sub)
    return p


def _message(e: BaseException) -> str:
    if isinstance(e, KeyError) and e.args:
        return str(e.args[0])
    if isinstance(e, OSError) and e.strerror and e.filename:
        return f"{e.strerror}: {e.filename}"
    return str(e) or type(e).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``steerlab`` command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")  # fmt: skip
    for noisy in ("httpx", "httpcore", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        print("steerlab: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            raise
        # a message on one line: some library errors span several
        text = " ".join(_message(e).split())
        if isinstance(e, _USER_ERRORS):
            print(f"steerlab: error: {text}", file=sys.stderr)
        else:
            print(f"steerlab: internal error ({type(e).__name__}: {text}); rerun with --debug "
                  "for the traceback and please report it", file=sys.stderr)  # fmt: skip
        return EXIT_ERROR
