"""Run the fuzz targets with atheris, or rebuild their seed corpus.

    python -m tests.fuzz list
    python -m tests.fuzz run TARGET [--seconds N] [--keep]   # one target (--keep: new inputs into the repo corpus)
    python -m tests.fuzz all [--seconds N] [--jobs J]        # every target, time-bounded; fails on any finding
    python -m tests.fuzz seed                                # rebuild the seed files from simulators and goldens

The corpus lives in ``tests/fuzz/corpus/<target>/`` and is replayed by ``tests/test_fuzz.py`` on
every test run; ``all`` (which the test suite also runs, ``CGW_FUZZ_SECONDS`` per target) explores
from it for a bounded time. A finding is written to ``$CGW_FUZZ_ARTIFACTS`` (default a temporary
directory) and printed in base64, so a CI log is enough to reproduce it; once fixed, its input
belongs in the corpus.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import structlog

CORPUS = Path(__file__).resolve().parent / "corpus"
DICTIONARY = Path(__file__).resolve().parent / "tokens.dict"
LIBFUZZER_OPTIONS = [
    "-timeout=10",
    "-rss_limit_mb=3072",
    "-max_len=65536",
    "-print_final_stats=1",
    f"-dict={DICTIONARY}",
]


def _quiet_logs() -> None:
    structlog.configure(logger_factory=structlog.ReturnLoggerFactory(), cache_logger_on_first_use=True)


def run(target: str, seconds: int, *, keep: bool, artifacts: Path) -> None:
    """Fuzz one target in this process (libFuzzer exits the process when done)."""
    import atheris  # noqa: PLC0415 - only the fuzzing process needs it

    with atheris.instrument_imports(include=["adapters", "gateway", "uplink", "tests.fuzz.targets"]):
        from tests.fuzz.targets import CANARY, TARGETS  # noqa: PLC0415 - imported to be instrumented
    _quiet_logs()
    chosen = CANARY if target == CANARY.name else TARGETS[target]
    # the canary's inputs prove nothing worth keeping
    corpus = Path(tempfile.mkdtemp()) if chosen is CANARY else CORPUS / chosen.name
    corpus.mkdir(parents=True, exist_ok=True)
    dirs = [str(corpus)] if keep else [tempfile.mkdtemp(prefix=f"cgw-fuzz-{chosen.name}-"), str(corpus)]
    artifacts.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.argv[0],
        *LIBFUZZER_OPTIONS,
        f"-max_total_time={seconds}",
        f"-artifact_prefix={artifacts}/{chosen.name}-",
        *dirs,
    ]
    atheris.Setup(argv, chosen.run)
    atheris.Fuzz()


@dataclass
class Result:
    target: str
    returncode: int
    seconds: float
    runs: int
    output: str


def run_all(names: list[str], seconds: int, jobs: int, artifacts: Path) -> list[Result]:
    """Each target in its own process, ``jobs`` at a time."""

    def one(name: str) -> Result:
        started = time.monotonic()
        process = subprocess.run(
            [sys.executable, "-m", "tests.fuzz", "run", name, "--seconds", str(seconds)],
            capture_output=True,
            text=True,
            errors="replace",
            env={**os.environ, "CGW_FUZZ_ARTIFACTS": str(artifacts)},
            timeout=seconds * 4 + 120,
            check=False,
        )
        output = process.stdout + process.stderr
        runs = re.search(r"stat::number_of_executed_units:\s*(\d+)", output)
        return Result(
            name, process.returncode, time.monotonic() - started, int(runs[1]) if runs else 0, output
        )

    with ThreadPoolExecutor(jobs) as pool:
        return list(pool.map(one, names))


def report(results: list[Result], artifacts: Path) -> int:
    """A line per target; the full output and the inputs of any finding."""
    failed = [r for r in results if r.returncode != 0]
    for r in results:
        status = "ok" if r.returncode == 0 else f"FINDING (exit {r.returncode})"
        print(f"{r.target:28} {r.runs:>9,} inputs in {r.seconds:5.1f} s  {status}")
    for r in failed:
        print(f"\n===== {r.target} =====\n{r.output[-6000:]}")
        for crash in sorted(artifacts.glob(f"{r.target}-*")):
            print(f"{crash.name} (base64): {base64.b64encode(crash.read_bytes()).decode()}")
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list")
    sub.add_parser("seed")
    one = sub.add_parser("run")
    one.add_argument("target")
    one.add_argument("--seconds", type=int, default=60)
    one.add_argument("--keep", action="store_true", help="add new inputs to the repo corpus")
    every = sub.add_parser("all")
    every.add_argument("--seconds", type=int, default=int(os.environ.get("CGW_FUZZ_SECONDS", "10")))
    every.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    artifacts = Path(os.environ.get("CGW_FUZZ_ARTIFACTS") or tempfile.mkdtemp(prefix="cgw-fuzz-artifacts-"))
    if args.command == "run":
        run(args.target, args.seconds, keep=args.keep, artifacts=artifacts)
        return 0
    from tests.fuzz.targets import TARGETS  # noqa: PLC0415 - after `run`, which instruments it

    if args.command == "list":
        print("\n".join(TARGETS))
        return 0
    if args.command == "seed":
        from tests.fuzz.seeds import write_seeds  # noqa: PLC0415 - needs the test helpers

        for name, count in write_seeds(CORPUS).items():
            print(f"{name:28} {count} seeds")
        return 0
    return report(run_all(list(TARGETS), args.seconds, args.jobs, artifacts), artifacts)


if __name__ == "__main__":
    sys.exit(main())
