"""Unexpected failures end in one line; the whole story goes to OUTPUT/_logs/<run id>.log.

An exception that escapes a worker reaches the launcher wrapped by the runner (on
FnApiRunner: "OSError: ... [while running 'WriteUserTables']"), after Beam has logged the
worker's traceback. While a run goes on, the launcher keeps Beam's error log records
instead of printing them (`KeptBeamErrors`; warnings still print); when the run fails it
writes them and its own traceback to the log file and raises `RunFailed`, whose text is
the one line the terminal gets: the step, the error and where the log is. `--verbose`
keeps Beam's logging as it is and prints the traceback too.
"""
from __future__ import annotations

import logging
import re
import traceback

from apache_beam.io.filesystems import FileSystems

from pipeline.output_probe import reason
from pipeline.records import MAX_ERROR_LENGTH
from pipeline.tables import write_text

LOGS = "_logs"
_STEP = re.compile(r"\[while running '([^']+)'\]")
_ERROR_LINE = re.compile(r"^(\w+\.)*\w*(Error|Exception)(:|$)")


class RunFailed(RuntimeError):
    """A run failed unexpectedly; str() is the one line for the terminal."""

    def __init__(self, step: str, error: str, log: str | None, log_problem: str | None = None) -> None:
        where = f"traceback in {log}" if log else f"traceback not written ({log_problem}); rerun with --verbose"
        super().__init__(f"error in step {step}: {error} ({where})")


def failed_step(exc: BaseException) -> str | None:
    """The Beam step named in the exception's message (the runner adds it), if any."""
    found = _STEP.search(str(exc))
    return found.group(1) if found else None


def error_line(exc: BaseException) -> str:
    """One line saying what went wrong, without the step: the last error line the message
    quotes (a runner quotes the worker's "OSError: ..." or its whole traceback), else the
    exception's type and message."""
    lines = [line.strip() for line in _STEP.sub("", str(exc)).splitlines() if line.strip()]
    quoted = [line for line in lines if _ERROR_LINE.match(line)]
    line = quoted[-1] if quoted else f"{type(exc).__name__}: {' '.join(lines)}"
    return line if len(line) <= MAX_ERROR_LENGTH else line[:MAX_ERROR_LENGTH - 3] + "..."


class KeptBeamErrors(logging.Handler):
    """While installed (a context manager), Beam's ERROR records are kept here instead of
    printed; its other records go on to the root logger's handlers as before."""

    def __init__(self, keep: bool = True) -> None:
        super().__init__()
        self.keep = keep
        self.records: list[str] = []
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self._beam = logging.getLogger("apache_beam")

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR:
            self.records.append(self.format(record))
        else:
            logging.getLogger().handle(record)

    def __enter__(self) -> "KeptBeamErrors":
        if self.keep:
            self._beam.addHandler(self)
            self._beam.propagate = False
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.keep:
            self._beam.removeHandler(self)
            self._beam.propagate = True


def write_log(output: str, run_id: str, sections: list[str]) -> tuple[str | None, str | None]:
    """Write the run's log file under OUTPUT/_logs/; (its path, None) or (None, why not)."""
    path = FileSystems.join(output, LOGS, f"{run_id}.log")
    try:
        write_text(path, "\n\n".join(sections) + "\n")
    except Exception as exc:  # the output may be what failed: say so instead of raising
        return None, reason(exc)
    return path, None


def run_failed(exc: BaseException, step: str, output: str, run_id: str, beam_errors: list[str]) -> RunFailed:
    """The RunFailed of `exc` in launcher step `step` (or the Beam step it names), after
    writing Beam's kept error records and the traceback to the run's log file."""
    step = failed_step(exc) or step
    tb = "".join(traceback.format_exception(exc))
    log, problem = write_log(output, run_id, [f"facegroup run {run_id}: error in step {step}", *beam_errors, tb])
    return RunFailed(step, error_line(exc), log, problem)
