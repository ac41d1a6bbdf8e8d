"""Shared machinery of the `wattscale` command: the parser class, value types, store resolution, errors.

Exit codes: 0 success; 2 bad input or a broken environment (one-line message naming the field or
file and the fix; nothing in the store changes); 3 the run diverged (recorded in the store as
`diverged`); 4 a sweep ended with failed runs (re-run to retry them); 130 interrupted (resume by
re-running the same command); 1 an internal error (a bug: the message says how to report it, and
WATTSCALE_DEBUG=1 shows the traceback).
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wattscale.errors import ConfigError, WattscaleError
from wattscale.footprint import FootprintSettings, load_intensity_csv, resolve_footprint
from wattscale.interrupts import recorded_interrupts
from wattscale.limits import MAX_INT64

DEFAULT_STORE = "./wattscale.db"
EXIT_DIVERGED = 3
EXIT_RUNS_FAILED = 4
EXIT_INTERNAL_ERROR = 1
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a writer whose reader left

STORE_HELP = ("results database: a path (SQLite) or SQLAlchemy URL; precedence: --store, then $WATTSCALE_STORE, "
              f"then the experiment file's store, then {DEFAULT_STORE}")
# OS errors that are the environment's, not wattscale's: reported in one line with the file, exit 2.
_ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT,
                                 errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.ENAMETOOLONG, errno.EMFILE,
                                 errno.EIO})


class MissingStoreError(WattscaleError):
    """A read-only command pointed at a SQLite file that does not exist (reported with the command's name)."""


class WattscaleArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors, and int/float flags that refuse what no setting can hold.

    Every `type=int` flag refuses integers beyond 64 bits (the store's BIGINT) and every `type=float` flag
    refuses nan and inf, by registering checked converters under the built-in types' names.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register("type", int, _int64)
        self.register("type", float, _finite_float)

    def error(self, message: str) -> None:  # type: ignore[override]
        """One line naming the flag, and where the full usage is, instead of the whole usage text."""
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _int64(text: str) -> int:
    value = int(text)
    if abs(value) > MAX_INT64:
        raise argparse.ArgumentTypeError(f"{text} does not fit in 64 bits (at most 2**63 - 1)")
    return value


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_rate_hz(text: str) -> float:
    """One sampling rate in Hz (a positive finite number)."""
    try:
        rate = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text.strip()!r} is not a number; give rates in Hz, "
                                         "e.g. --rates 1000 100 10") from None
    if not (math.isfinite(rate) and rate > 0):
        raise argparse.ArgumentTypeError(f"{text.strip()!r} is not a positive sampling rate in Hz")
    return rate


class SplitExtend(argparse.Action):
    """`--flag a b --flag c` extends one list; each value may also be the old comma-separated form `a,b`.

    ``item`` (set through ``add_list_argument``) converts each item; its ArgumentTypeError becomes argparse's
    one-line error naming the flag.
    """

    item: Callable[[str], Any] = str

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        items = list(getattr(namespace, self.dest, None) or [])
        for value in values:
            for part in value.split(","):
                try:
                    items.append(self.item(part.strip()))
                except (argparse.ArgumentTypeError, ValueError) as exc:
                    raise argparse.ArgumentError(self, str(exc) or f"invalid value {part!r}") from None
        setattr(namespace, self.dest, items)


def add_list_argument(p: argparse.ArgumentParser, *flags: str, item: Callable[[str], Any] = str,
                      **kwargs: Any) -> argparse.Action:
    """A list flag: space-separated values, repeatable, old comma-separated spelling accepted."""
    action = type("SplitExtend_" + item.__name__, (SplitExtend,), {"item": staticmethod(item)})
    return p.add_argument(*flags, nargs="+", action=action, **kwargs)


def add_command(sub: Any, name: str, help: str, examples: Sequence[str], **kwargs: Any) -> argparse.ArgumentParser:
    """A sub-command whose --help ends with example command lines."""
    epilog = "examples:\n" + "\n".join(f"  {line}" for line in examples)
    if "description" not in kwargs:
        kwargs["description"] = help[0].upper() + help[1:] + "."
    return sub.add_parser(name, help=help, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter,
                          **kwargs)


def add_json_flag(p: argparse.ArgumentParser, what: str = "the result") -> None:
    p.add_argument("--json", action="store_true", help=f"print {what}" + ("" if "JSON" in what else " as JSON"))


def add_output_flag(p: argparse.ArgumentParser, help: str, *, default: str | None = None,
                    old: Sequence[str] = ()) -> None:
    """`-o/--output PATH`, with old spellings as hidden aliases (kept for one release)."""
    p.add_argument("-o", "--output", default=default, metavar="PATH", help=help)
    for flag in old:
        p.add_argument(flag, dest="output", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def add_file_flags(p: argparse.ArgumentParser) -> None:
    """An optional experiment FILE (and --variant) naming the store and the experiment."""
    p.add_argument("file", nargs="?", metavar="FILE",
                   help="an experiment TOML file: its store and experiment name are used (flags win)")
    p.add_argument("--variant", help="with FILE: a [variants.NAME] table of the file, e.g. smoke")


# ---- the store -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileTarget:
    """What an experiment file says about where its runs are: the store (or None) and the experiment's name."""

    store: str | None
    experiment: str
    footprint: dict[str, Any] = field(default_factory=dict)  # the file's [footprint] table (ExperimentSpec.footprint)


def file_target(args: argparse.Namespace) -> FileTarget | None:
    """The experiment FILE's store and name, or None without a FILE (--variant alone is refused)."""
    path = getattr(args, "file", None)
    variant = getattr(args, "variant", None)
    if path is None:
        if variant is not None:
            raise ConfigError("--variant: only with an experiment FILE, e.g. `wattscale runs study.toml --variant "
                              "smoke`")
        return None
    from wattscale.experiment import load_experiment

    spec = load_experiment(Path(path), variant=variant)
    return FileTarget(spec.design.store, spec.name, spec.footprint)


def footprint_settings(args: argparse.Namespace) -> FootprintSettings:
    """Carbon and cost settings: flags (`add_footprint_flags`), then WATTSCALE_* variables, then the FILE's table."""
    target = file_target(args)
    settings = resolve_footprint(args, target.footprint if target else None)
    if settings.carbon_intensity_csv is not None:
        try:
            load_intensity_csv(settings.carbon_intensity_csv)  # refuse a bad CSV before any work (cached for later)
        except ConfigError as exc:
            if target is None or target.footprint.get("carbon_intensity_csv") != settings.carbon_intensity_csv:
                raise
            raise ConfigError(f"{exc} (from the [footprint] table of {args.file})") from None
    return settings


def store_url(args: argparse.Namespace, file_store: str | None = None) -> str:
    """--store beats $WATTSCALE_STORE beats the experiment file's store beats ./wattscale.db."""
    given = getattr(args, "store", None)
    if given is not None and not given.strip():
        raise WattscaleError("--store: empty; give a SQLite path or a SQLAlchemy URL (or leave --store out for "
                             f"$WATTSCALE_STORE or {DEFAULT_STORE})")
    return given or os.environ.get("WATTSCALE_STORE") or file_store or DEFAULT_STORE


def experiment_and_store(args: argparse.Namespace) -> tuple[str | None, str]:
    """(--experiment or the FILE's experiment, the store by the one precedence) for runs/report/analyze/fit."""
    target = file_target(args)
    experiment = getattr(args, "experiment", None) or (target.experiment if target else None)
    return experiment, store_url(args, target.store if target else None)


def store_exists(url: str) -> bool:
    """False for a SQLite file that does not exist yet (server databases are taken to exist)."""
    if "://" in url:
        return not url.startswith("sqlite") or Path(url.split(":///", 1)[-1]).exists()
    return Path(url).expanduser().exists()


def existing_store(url: str) -> str:
    """The URL of a store that must already exist (read-only commands never create one)."""
    if not store_exists(url):
        shown = url[2:] if url.startswith("./") else url
        raise MissingStoreError(f"no store at {shown} (train or run an experiment first, or pass --store)")
    return url


# ---- small helpers shared by command modules --------------------------------------------------------------------


def fmt_loss(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def run_command(args: argparse.Namespace) -> int:
    """Call the command; turn user errors into one line and exit 2, an interrupt into 130, a bug into 1."""
    # SIGTERM (e.g. a cluster scheduler) is handled like Ctrl-C: the run is marked interrupted.
    try:
        with recorded_interrupts():
            return args.func(args)
    except MissingStoreError as exc:
        print(f"wattscale {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except WattscaleError as exc:
        print(f"wattscale: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("wattscale: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:
        raise  # the reader of stdout left: main() stops quietly
    except Exception as exc:  # the environment's fault in one line; otherwise a bug, with the traceback on request
        if os.environ.get("WATTSCALE_DEBUG"):
            raise
        if isinstance(exc, OSError) and exc.errno in _ENVIRONMENT_ERRNOS:
            print(f"wattscale: error: {_os_error_line(exc)}", file=sys.stderr)
            return 2
        first_line = (str(exc).splitlines() or [""])[0]
        print(f"wattscale: internal error: {type(exc).__name__}: {first_line} -- a bug in wattscale; please report "
              "it with the command (WATTSCALE_DEBUG=1 shows the traceback)", file=sys.stderr)
        return EXIT_INTERNAL_ERROR


_POSITIONALS = frozenset({"file", "path", "run_id", "run_ids"})


def first_empty_value(args: argparse.Namespace) -> str | None:
    """The flag (as --name) of the first empty or blank string value; no wattscale setting means anything by ''."""
    for dest, value in vars(args).items():
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, str) and not v.strip() for v in values):
            return dest if dest in _POSITIONALS else "--" + dest.replace("_", "-")
    return None


def _os_error_line(exc: OSError) -> str:
    """An OS error as one line naming the file and what to do."""
    where = f" {exc.filename}" if exc.filename else ""
    fix = {errno.ENOSPC: "free space there, or use another folder (e.g. --run-root)",
           errno.EDQUOT: "free space there, or use another folder (e.g. --run-root)",
           errno.EROFS: "the file system is read-only; use a writable folder",
           errno.EACCES: "check its permissions", errno.EPERM: "check its permissions"}.get(exc.errno, "check the path")
    return f"{exc.strerror or exc}:{where}; {fix}"
