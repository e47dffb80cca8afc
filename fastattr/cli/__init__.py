"""The ``fastattr`` command line (``fastattr audit ...`` or ``python -m fastattr audit ...``)."""
from __future__ import annotations

import importlib.util
import sys
from typing import Optional, Sequence

_USAGE = "usage: fastattr audit [options]   (fastattr audit --help for the options)"
# The modules of the `audit` extra (pyproject.toml), checked before any work:
# without one the audit would compute and then fail writing its results.
_AUDIT_EXTRA = ("sklearn", "pandas", "pyarrow", "matplotlib", "PIL")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run a ``fastattr`` subcommand; the process exit status (2 for bad input)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_USAGE)
        return 0 if args else 2
    if args[0] != "audit":
        print(f"fastattr: unknown command {args[0]!r}\n{_USAGE}", file=sys.stderr)
        return 2
    missing = [name for name in _AUDIT_EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        print(f"fastattr audit: needs the audit extra, pip install 'fastattr[audit]' (missing: "
              f"{', '.join(missing)})", file=sys.stderr)
        return 2
    from .audit import run_audit
    from .config import AuditError

    try:
        return run_audit(args[1:])
    except AuditError as e:
        print(f"fastattr audit: error: {e}", file=sys.stderr)
        return 2


def console_main() -> int:
    """Entry point of the ``fastattr`` command and ``python -m fastattr``:
    :func:`main` in a process that keeps the memory it frees (``fastattr/heap.py``)."""
    from ..heap import keep_freed_memory

    keep_freed_memory()
    return main()
