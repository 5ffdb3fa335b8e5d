#!/usr/bin/env python3
"""Cairn and Prefect 3 side by side, on the same machine, the same work.

    python3 bench/peers.py                 # every workload, 3 rounds
    python3 bench/peers.py --rounds 5 --only chain-2000 fibo33x10
    python3 bench/peers.py --cairn-only    # no Prefect (no PyPI needed)

Before it: `cargo build --release -p cairn-engine` and the guest
components (the README's first command). Prefect is installed into
bench/.venv from PyPI on first use (`prefect>=3.4,<3.9`, with
`fastapi==0.139.0`, the pair that installs and runs here).

Every measurement is one whole process, as a user runs it, timed by the
wall clock, and the two engines take turns (Cairn, Prefect, Cairn, …) so
a slow minute of the machine hurts both. Cairn gets a fresh store each
run and `cache = "off"` (every step executes, and is journalled and made
durable), with the shared artifact cache warm (the components were
compiled once before; see the README); Prefect a fresh PREFECT_HOME.
Printed: each pair's medians and their ratio.

Workloads: a chain and a fan-out of a trivial task (echo) at 10, 200 and
2 000 steps, and Windmill's published pair, 40 sequential fibo(10) and
10 sequential fibo(33) tasks.
"""

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
VENV = BENCH / ".venv"
CAIRN = ROOT / "target" / "release" / "cairn"
COMPONENTS = ROOT / "guest-examples" / "target" / "wasm32-wasip2" / "release"
PREFECT_PINS = ["prefect>=3.4,<3.9", "fastapi==0.139.0"]


def workloads():
    for n in (10, 200, 2000):
        yield f"chain-{n}", ("chain", n)
        yield f"fanout-{n}", ("fanout", n)
    yield "fibo10x40", ("fibo", 10, 40)
    yield "fibo33x10", ("fibo", 33, 10)


def manifest(work):
    """The Cairn pipeline of a workload."""
    echo, fibo = COMPONENTS / "echo.wasm", COMPONENTS / "fibo.wasm"
    # cache = "off": steps of a chain with equal inputs would otherwise be
    # answered from the results of the steps before them, and Prefect
    # caches nothing here. Results are still stored and journalled.
    lines = [
        f'name = "{work[0]}"',
        "[defaults]",
        "fuel = 100_000_000_000",
        'timeout = "60s"',
        'cache = "off"',
    ]
    if work[0] == "chain":
        for i in range(work[1]):
            value = '{ i = 0 }' if i == 0 else f'"${{s{i - 1}.value}}"'
            lines += [f"[steps.s{i}]", f'component = "{echo}"', f"input = {{ value = {value} }}"]
    elif work[0] == "fanout":
        for i in range(work[1]):
            lines += [f"[steps.s{i}]", f'component = "{echo}"', f"input = {{ i = {i} }}"]
    else:
        n, count = work[1], work[2]
        for i in range(count):
            after = "" if i == 0 else f', after = "${{s{i - 1}.value}}"'
            lines += [f"[steps.s{i}]", f'component = "{fibo}"', f"input = {{ n = {n}{after} }}"]
    return "\n".join(lines) + "\n"


def timed(command, env, cwd=None):
    """Wall time of one whole process. It runs in a session of its own,
    and whatever it left running (Prefect's ephemeral API server outlives
    the flow for a while) is stopped before the next measurement, so one
    engine's leftovers do not slow the other down."""
    # Write back what the previous measurement left dirty first: with it
    # pending, the next run's fsyncs also wait for the other engine's data.
    os.sync()
    started = time.perf_counter()
    child = subprocess.Popen(
        command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True,
    )
    _, stderr = child.communicate()
    elapsed = time.perf_counter() - started
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if child.returncode != 0:
        sys.exit(f"{command[0]} failed ({child.returncode}):\n{stderr.decode(errors='replace')[-3000:]}")
    return elapsed


def ensure_prefect():
    python = VENV / "bin" / "python"
    if not python.exists():
        print("installing Prefect into bench/.venv …", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PREFECT_PINS], check=True)
    return python


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each engine per workload (default 3)")
    parser.add_argument("--only", nargs="*", help="workload names (default: all)")
    parser.add_argument("--cairn-only", action="store_true", help="leave Prefect out")
    args = parser.parse_args()

    if not CAIRN.exists():
        sys.exit(f"{CAIRN} is missing: cargo build --release -p cairn-engine")
    for name in ("echo", "fibo"):
        if not (COMPONENTS / f"{name}.wasm").exists():
            sys.exit(f"{name}.wasm is missing: build the guest examples (the README's first command)")
    python = None if args.cairn_only else ensure_prefect()

    scratch = Path(tempfile.mkdtemp(prefix="cairn-peers-"))
    cache = scratch / "artifact-cache"
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("CAIRN_", "PREFECT_"))}
    results = []
    try:
        for name, work in workloads():
            if args.only and name not in args.only:
                continue
            pipeline = scratch / name
            pipeline.mkdir()
            (pipeline / "pipeline.toml").write_text(manifest(work))
            cairn_times, prefect_times = [], []
            # A first, untimed run compiles the components into the shared cache.
            warm = dict(base_env, CAIRN_HOME=str(scratch / "warm"), CAIRN_ARTIFACT_CACHE=str(cache))
            timed([str(CAIRN), "run", str(pipeline), "-q"], warm)
            for round_ in range(args.rounds):
                store = scratch / f"store-{name}-{round_}"
                env = dict(base_env, CAIRN_HOME=str(store), CAIRN_ARTIFACT_CACHE=str(cache))
                cairn_times.append(timed([str(CAIRN), "run", str(pipeline), "-q"], env))
                shutil.rmtree(store, ignore_errors=True)
                if python:
                    home = scratch / f"prefect-{name}-{round_}"
                    env = dict(
                        base_env,
                        PREFECT_HOME=str(home),
                        PREFECT_LOGGING_LEVEL="WARNING",
                        PREFECT_SERVER_ANALYTICS_ENABLED="false",
                    )
                    command = [str(python), str(BENCH / "prefect_flows.py"), *map(str, work)]
                    prefect_times.append(timed(command, env))
                    shutil.rmtree(home, ignore_errors=True)
            c = statistics.median(cairn_times)
            p = statistics.median(prefect_times) if prefect_times else None
            results.append((name, c, p))
            ratio = f"{p / c:7.1f}×" if p else ""
            shown = f"{p:8.3f} s" if p else ""
            print(f"{name:<12} cairn {c:8.3f} s   prefect {shown:>10}   {ratio}", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print("\n| workload | Cairn (median) | Prefect 3 (median) | Prefect / Cairn |")
    print("| --- | --- | --- | --- |")
    for name, c, p in results:
        print(f"| {name} | {c:.3f} s | {f'{p:.2f} s' if p else '-'} | {f'{p / c:.0f}×' if p else '-'} |")


if __name__ == "__main__":
    main()
