"""Shared command-line plumbing: parsing, logging set-up and one-line error reporting."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import typing
import warnings
from collections.abc import Callable

from pipeline.data import schema
from pipeline.errors import SemoreError, first_line
from semore.checks import INT64_MAX, Float, Int, show

log = logging.getLogger(__name__)

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
# A stage's console script is named after its package: semore-collect runs pipeline.collect.run.
SCRIPT_PREFIX = "semore-"


def stage_name(module: str) -> str:
    """``pipeline.collect.run`` -> ``collect``: the stage whose command module ``module`` is."""
    package, _, rest = module.partition(".")
    if package != "pipeline" or not rest:
        raise ValueError(f"{module} is not a stage's module: expected pipeline.STAGE.MODULE")
    return rest.split(".")[0]


def script_name(module: str) -> str:
    """``pipeline.collect.run`` -> ``semore-collect``: the console script of a stage's ``run``
    module (what a user types for ``python -m MODULE``)."""
    return SCRIPT_PREFIX + stage_name(module)


def make_parser(
    prog: str, description: str, config_overrides: bool = True
) -> argparse.ArgumentParser:
    """A parser with the flags every stage shares (``--debug``, ``--quiet``)."""
    epilog = (
        "Any config field can be overridden as --section.field VALUE (e.g. --trainer.max_steps 10)."
        if config_overrides
        else None
    )
    parser = OneLineParser(prog=prog, description=description, epilog=epilog)
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("--quiet", action="store_true", help="only warnings and errors")
    return parser


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (``prog: error: ...``), like the stages'."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def int_in(low: int, high: int) -> Callable[[str], int]:
    """argparse type: an int in ``[low, high]``; a refusal names the range."""
    spec = Int(low, high)

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:  # not an integer (or longer than Python converts)
            raise argparse.ArgumentTypeError(f"{show(text)} is not {spec.describe()}") from None
        if not spec.accepts(value):
            raise argparse.ArgumentTypeError(f"{show(value)} is not {spec.describe()}")
        return value

    parse.__name__ = f"int in [{low}, {high}]"  # what argparse names the type in errors
    return parse


def float_in(low: float, high: float, low_open: bool = False) -> Callable[[str], float]:
    """argparse type: a finite number in ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    spec = Float(low, high, low_open)

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = None
        if value is None or not spec.accepts(value):
            raise argparse.ArgumentTypeError(f"{show(text)} is not {spec.describe()}")
        return value

    parse.__name__ = spec.describe()
    return parse


positive_int = int_in(1, INT64_MAX)  # counts that must be >= 1 (a flag's own range is better)
non_negative_int = int_in(0, INT64_MAX)  # indices that must be >= 0


def add_slice_args(parser: argparse.ArgumentParser, unit: str) -> None:
    """``--worker-index/--num-workers``: this invocation's slice of a multi-node job."""
    parser.add_argument(
        "--worker-index",
        type=int_in(0, schema.MAX_NODES - 1),
        default=None,
        help=f"this node's slice of the {unit} (default: $RANK or 0)",
    )
    parser.add_argument(
        "--num-workers",
        type=int_in(1, schema.MAX_NODES),
        default=None,
        help="number of slices (default: $WORLD_SIZE or 1)",
    )


def node_slice(worker_index: int | None, num_workers: int | None) -> tuple[int, int]:
    """``--worker-index/--num-workers``, else torch.distributed's ``RANK/WORLD_SIZE``."""
    index = worker_index if worker_index is not None else _env_int("RANK", 0)
    count = num_workers if num_workers is not None else _env_int("WORLD_SIZE", 1)
    if not 1 <= count <= schema.MAX_NODES:
        raise SemoreError(
            f"--num-workers {show(count)} is out of range: expected an int in [1, "
            f"{schema.MAX_NODES}] (sample keys hold the slice in two digits)"
        )
    if not 0 <= index < count:
        raise SemoreError(
            f"--worker-index {show(index)} is out of range: expected 0 <= index < --num-workers {count}"
        )
    return index, count


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise SemoreError(f"${name} is {show(text)}: expected an integer") from None


# Frameworks whose INFO lines (device banners, tips, "seed set to") are noise to a user of
# the pipeline; their warnings and errors still show.
FRAMEWORK_LOGGERS = (
    "lightning",
    "lightning.pytorch",
    "lightning.fabric",
    "pytorch_lightning",
    "sentence_transformers",
    "transformers",
)
# Framework warnings that say nothing a user can act on: the loaders know their length on
# purpose (equal batch counts per rank), and pytree deprecations come from library internals.
NOISY_WARNINGS = (
    r".*IterableDataset.*has `__len__`.*",
    r".*pytree.*",
    r".*_register_pytree_node.*",
)


def _hide_framework_progress_bars() -> None:
    """The Hub's and transformers' own tqdm bars ("Loading weights", downloads) off: the
    stages draw one bar of their own. The environment variable covers libraries imported
    later (and subprocesses); the calls cover those already imported."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "huggingface_hub" in sys.modules:
        sys.modules["huggingface_hub"].utils.disable_progress_bars()
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()


def quiet_frameworks(debug: bool = False) -> None:
    """One line per event: frameworks log through the root handler only, and (unless
    ``debug``) only their warnings, without known noise warnings."""
    for name in FRAMEWORK_LOGGERS:
        framework = logging.getLogger(name)
        for handler in list(framework.handlers):  # Lightning adds its own stream handler
            framework.removeHandler(handler)
        framework.propagate = True
        framework.setLevel(logging.NOTSET if debug else logging.WARNING)
    if not debug:
        _hide_framework_progress_bars()
        for pattern in NOISY_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        warnings.filterwarnings("ignore", category=FutureWarning)
        # Lightning's advice ("fewer batches than the logging interval", "dataloader is not
        # resumable") is about its own loops, which the stages configure on purpose.
        warnings.filterwarnings("ignore", module=r"lightning(\.|$)")


def is_out_of_memory(err: BaseException) -> bool:
    """A failed allocation: Python's MemoryError, or torch's (a RuntimeError on CPU,
    ``torch.OutOfMemoryError`` on an accelerator)."""
    if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError":
        return True
    text = str(err)
    return "not enough memory" in text or "can't allocate memory" in text


def raise_interrupt(signum, frame) -> None:
    """SIGTERM handler: unwind like Ctrl-C, so atomic writers remove their temporary files."""
    raise KeyboardInterrupt


def run_cli(
    parser: argparse.ArgumentParser,
    argv: list[str] | None,
    body: Callable[[argparse.Namespace, list[str]], object],
    config_overrides: bool = True,
) -> int:
    """Parse ``argv``, set up logging and run ``body(args, overrides)``.

    ``SemoreError`` and other expected failures print ``prog: error: message`` on one line
    and return a non-zero code; ``--debug`` re-raises them with the traceback.
    """
    if config_overrides:
        args, overrides = parser.parse_known_args(argv)
    else:
        args, overrides = parser.parse_args(argv), []
    level = logging.DEBUG if args.debug else logging.WARNING if args.quiet else logging.INFO
    # A stage's main may run inside another command (semore-run, semore-compare); its level
    # holds while it runs, then the caller's comes back, so the caller's progress lines show.
    caller_level = logging.getLogger().level
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    quiet_frameworks(debug=args.debug)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        body(args, overrides)
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted; completed shards/checkpoints are kept", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (SemoreError, ValueError, FileNotFoundError, PermissionError, OSError) as err:
        if args.debug:
            raise
        message = first_line(err)
        if not isinstance(err, SemoreError):
            message = f"{type(err).__name__}: {message}"
        print(f"{parser.prog}: error: {message}", file=sys.stderr)
        return EXIT_ERROR
    except (MemoryError, RuntimeError) as err:
        # Sizes are checked against the machine before work starts; an allocation that still
        # fails (other processes took the memory) is reported on one line too.
        if args.debug or not is_out_of_memory(err):
            raise
        print(
            f"{parser.prog}: error: out of memory ({first_line(err)}): expected smaller "
            "batches, buffers or models, or more free memory (--debug shows where)",
            file=sys.stderr,
        )
        return EXIT_ERROR
    finally:
        logging.getLogger().setLevel(caller_level)
    return 0
