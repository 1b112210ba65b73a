"""User-facing errors.

Every error a researcher can cause with bad input derives from :class:`BenchmarkError`.
The command line prints these as one clear message (no traceback) and exits with status 2;
anything else is a bug and keeps its traceback.
"""


class BenchmarkError(Exception):
    """Bad input or an unavailable resource; the message names the problem and the fix."""


class ConfigError(BenchmarkError):
    """An unknown or ill-typed configuration key, preset or value."""


class DataError(BenchmarkError):
    """A dataset that cannot be found, read or split as asked."""


class DiskFullError(BenchmarkError):
    """A write found the disk full; the message is "no space left on device: <path>" (exit status 1:
    the input was good, the machine was not)."""


class MetricError(BenchmarkError):
    """A metric that cannot be computed on the given samples (it says why)."""


class TrainingError(BenchmarkError):
    """Training cannot go on (for example a non-finite loss)."""


def failure_note(err: BaseException) -> str:
    """The ``note`` of a number that could not be computed: a MetricError says why; anything else
    (a library failing on odd input) is named with its type, so the row is NaN and never 0."""
    if isinstance(err, MetricError):
        return f"skipped: {err}"
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"skipped: failed with {type(err).__name__}: {text}"
