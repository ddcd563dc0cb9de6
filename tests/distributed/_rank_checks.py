"""Checks for the scripts that ``run_ranks`` starts on each MPI rank (importable there: the scripts run with
the repository on PYTHONPATH). A rank prints ``<OK name>`` per passing check; the test counts them."""

import sys


def ok(name: str) -> None:
    """Report that check ``name`` passed on this rank."""
    sys.stdout.write(f"<OK {name}>\n")  # one write: lines of different ranks may interleave, not tear
    sys.stdout.flush()


def raises(name: str, exc: type[BaseException], fn, *words: str) -> None:
    """Assert that ``fn()`` raises ``exc`` whose message contains every one of ``words``."""
    try:
        fn()
    except exc as e:
        for w in words:
            assert w in str(e), f"{name}: {w!r} not in {e}"
        return
    raise AssertionError(f"{name}: {exc.__name__} not raised")
