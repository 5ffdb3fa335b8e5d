"""The peer benchmark's workloads as Prefect 3 flows (run by bench/peers.py).

    python prefect_flows.py chain 200     # 200 sequential trivial tasks
    python prefect_flows.py fanout 200    # 200 independent trivial tasks
    python prefect_flows.py fibo 10 40    # 40 sequential fibo(10) tasks

Each call is one whole process, as a user runs a flow: start-up, the
ephemeral API server Prefect 3 starts when no server is configured, the
flow, shut-down. The tasks do what Cairn's `echo` and `fibo` components do.
"""

import sys

from prefect import flow, task


@task
def echo(value):
    return value


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


@task
def fibo(n, after=None):
    return fib(n)


@flow
def chain(n: int):
    value = {"i": 0}
    for _ in range(n):
        value = echo(value)
    return value


@flow
def fanout(n: int):
    futures = echo.map([{"i": i} for i in range(n)])
    return [f.result() for f in futures]


@flow
def fibo_chain(n: int, count: int):
    value = None
    for _ in range(count):
        value = fibo(n, value)
    return value


if __name__ == "__main__":
    kind = sys.argv[1]
    if kind == "chain":
        chain(int(sys.argv[2]))
    elif kind == "fanout":
        fanout(int(sys.argv[2]))
    elif kind == "fibo":
        fibo_chain(int(sys.argv[2]), int(sys.argv[3]))
    else:
        sys.exit(f"unknown workload {kind!r}")
