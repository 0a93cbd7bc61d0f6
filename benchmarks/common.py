"""Shared helpers for the benchmarks: timing + peak RSS of a subprocess, a moto S3 server, tables.

Every benchmark measures each variant in its own process, so the peak RSS reported is that
process's own (servers and data generators stay in the parent and are not counted).

    from common import measure, moto_server, print_table

    m = measure(["duckdb", "-c", "SELECT 1"])             # a command: wall time + peak RSS
    m = measure(my_module_level_function, arg1, arg2,       # a Python callable, run in a fresh
                preload=("integration_hub.core.ingest",))   # (spawned) interpreter
    m.seconds, m.peak_rss_bytes, m.cpu_seconds, m.result

Callables run in a *spawned* child (never forked: a fork would inherit, and count, the parent's
memory, e.g. a moto server holding a 1 GB object). The callable must be importable by name
(a module-level function; the benchmark script itself is fine when it has a
``if __name__ == "__main__":`` guard) and its arguments and return value must pickle.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MB = 1024 * 1024
GB = 1024 * MB


@dataclass
class Measurement:
    """What one measured run cost."""

    seconds: float  # wall time (callable: of the call itself, after `preload`; command: the process)
    peak_rss_bytes: int  # the child's maximum resident set size
    result: Any = None  # the callable's return value (None for a command)
    cpu_seconds: float | None = None  # user + system CPU time of the child (all its threads) in that time


    @property
    def peak_rss_mb(self) -> float:
        return self.peak_rss_bytes / MB


def _maxrss_bytes(ru_maxrss: int) -> int:
    # Linux reports kilobytes, macOS bytes.
    return int(ru_maxrss) if sys.platform == "darwin" else int(ru_maxrss) * 1024


def _vm_hwm(pid: int | str = "self") -> int | None:
    """Linux: the peak RSS of a process's current address space (`VmHWM`), in bytes."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def peak_rss_self() -> int:
    """Peak RSS of the calling process so far, in bytes.

    On Linux this is `VmHWM`, not `getrusage().ru_maxrss`: the kernel carries the high-water
    mark of the address space a process had *before* exec into ru_maxrss, so a child forked
    from a big parent (here: the one running the moto server) would report at least the
    parent's size.
    """
    hwm = _vm_hwm()
    return hwm if hwm is not None else _maxrss_bytes(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _child(
    target: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    preload: Sequence[str],
    conn: Any,
) -> None:
    try:
        import importlib

        for module in preload:  # imports are not what we measure
            importlib.import_module(module)
        cpu = _cpu_seconds(resource.RUSAGE_SELF)
        started = time.perf_counter()
        result = target(*args, **kwargs)
        seconds = time.perf_counter() - started
        cpu = _cpu_seconds(resource.RUSAGE_SELF) - cpu
        conn.send(("ok", seconds, peak_rss_self(), result, cpu))
    except BaseException:  # report everything to the parent (which shows it), exit non-zero
        conn.send(("error", 0.0, peak_rss_self(), traceback.format_exc(), None))
        raise SystemExit(1) from None
    finally:
        conn.close()


class MeasuredFailure(RuntimeError):
    """The measured child failed; the message holds its traceback or exit status."""


def _tree_peak(pid: int, peaks: dict[int, int]) -> None:
    """Update each process's peak RSS in the tree under `pid` (VmHWM on Linux, else RSS now)."""
    import psutil

    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return
    for process in processes:
        try:
            peak = _vm_hwm(process.pid) or process.memory_info().rss
        except psutil.Error:
            continue
        peaks[process.pid] = max(peaks.get(process.pid, 0), peak)


def _measure_command(
    cmd: Sequence[str],
    timeout: float | None,
    env: dict[str, str] | None,
    stdout: Path | None = None,
    interval: float = 0.02,
) -> Measurement:
    # Sampled from here (wait4's ru_maxrss would include this process's size, see peak_rss_self):
    # the sum of the peaks of the command and its descendants; growth in the last `interval`
    # before a process exits can be missed.
    peaks: dict[int, int] = {}
    cpu = _cpu_seconds(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    output = open(stdout, "wb") if stdout is not None else None  # noqa: SIM115 - closed below
    try:
        process = subprocess.Popen(list(cmd), env=env, stdout=output, stderr=subprocess.STDOUT if output else None)
    finally:
        if output is not None:
            output.close()  # the child has its own copy
    while process.poll() is None:
        _tree_peak(process.pid, peaks)
        if timeout is not None and time.perf_counter() - started > timeout:
            process.kill()
            process.wait()
            raise MeasuredFailure(f"{' '.join(cmd)}: timed out after {timeout:.0f} s")
        time.sleep(interval)
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        tail = f"; its output ends: {_tail(stdout)}" if stdout is not None else ""
        raise MeasuredFailure(f"{' '.join(cmd)}: exit status {process.returncode}{tail}")
    # RUSAGE_CHILDREN: CPU time of the children waited for so far (this one and its descendants).
    return Measurement(seconds, sum(peaks.values()), cpu_seconds=_cpu_seconds(resource.RUSAGE_CHILDREN) - cpu)


def _tail(path: Path, lines: int = 3) -> str:
    try:
        return " | ".join(path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no output)"


def measure(
    target: Sequence[str] | Callable[..., Any],
    *args: Any,
    preload: Sequence[str] = (),
    timeout: float | None = None,
    env: dict[str, str] | None = None,
    stdout: Path | None = None,
    **kwargs: Any,
) -> Measurement:
    """Run `target` in its own process; return its wall time and peak RSS.

    `target` is either a command (a list of strings; `env` applies; its output goes to the file
    `stdout` if given; its peak RSS and that of its descendants is sampled from here) or a picklable callable, called as
    `target(*args, **kwargs)` in a spawned interpreter after importing `preload` (so import time
    is not measured; the memory of those imports is, as it is the process's), which reports its
    own peak RSS when it returns.
    """
    if not callable(target):
        return _measure_command(target, timeout, env, stdout)
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(target, args, kwargs, tuple(preload), sender))
    process.start()
    sender.close()
    try:
        if not receiver.poll(timeout):
            process.kill()
            raise MeasuredFailure(f"{getattr(target, '__name__', target)}: timed out after {timeout:.0f} s")
        try:
            status, seconds, rss, payload, cpu = receiver.recv()
        except EOFError:
            status, seconds, rss, payload, cpu = "error", 0.0, 0, "the child died without reporting (killed? out of memory?)", None
    finally:
        process.join()
        receiver.close()
    if status != "ok":
        raise MeasuredFailure(f"{getattr(target, '__name__', target)} failed (exit code {process.exitcode}):\n{payload}")
    return Measurement(seconds, rss, payload, cpu)


# ---------------------------------------------------------------------------- the lake

ROOT = Path(__file__).resolve().parent.parent


def lake_settings(folder: Path) -> dict[str, str]:
    """The catalog's `warehouse:` section for a lake kept in `folder`: catalog.sqlite + lake/."""
    return {"catalog": str(folder / "catalog.sqlite"), "data_path": str(folder / "lake") + "/"}


def copy_lake(source: Path, target: Path) -> None:
    """Copy the lake kept in folder `source` (see lake_settings) to folder `target`, ready to open there.

    The catalog records the absolute data path it was created with (and refuses another one
    unless told OVERRIDE_DATA_PATH for that session only); the data files' paths are relative
    to it. So the copy's catalog gets the copy's data path, as if created there. The catalog
    is copied with SQLite's backup API: a consistent copy even with a WAL beside it.
    """
    import sqlite3

    target.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(target / "lake", ignore_errors=True)
    shutil.copytree(source / "lake", target / "lake")
    (target / "catalog.sqlite").unlink(missing_ok=True)
    with sqlite3.connect(source / "catalog.sqlite") as src, sqlite3.connect(target / "catalog.sqlite") as dst:
        src.backup(dst)
        dst.execute(
            "UPDATE ducklake_metadata SET value = ? WHERE key = 'data_path'", [lake_settings(target)["data_path"]]
        )
    src.close()
    dst.close()


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def cli_command(*args: str) -> list[str]:
    """`integration-hub ARGS` as a command: the installed console script beside this Python, else `-m`."""
    script = shutil.which("integration-hub", path=str(Path(sys.executable).parent))
    return [script, *args] if script else [sys.executable, "-m", "integration_hub.cli.main", *args]


def cli_env(**extra: str) -> dict[str, str]:
    """The environment for our CLI as a subprocess: this checkout's code first on the path."""
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


# ---------------------------------------------------------------------------- moto


class MotoS3:
    """A running moto server: `endpoint_url`, `region` and `client()`."""

    access_key_id = "testing"  # moto accepts any credentials
    secret_access_key = "testing"  # noqa: S105 - moto's dummy credentials

    def __init__(self, endpoint_url: str, region: str) -> None:
        self.endpoint_url = endpoint_url
        self.region = region

    def client(self, service: str = "s3", **kwargs: Any) -> Any:
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            **kwargs,
        )


@contextmanager
def moto_server(host: str = "127.0.0.1", region: str = "us-east-1") -> Iterator[MotoS3]:
    """A moto server (in a thread of *this* process) on a free loopback port.

    It runs in the benchmark's parent process, so what it holds (uploaded objects) is not
    counted in the measured children's memory.
    """
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address=host, port=0, verbose=False)
    server.start()
    try:
        bound_host, port = server.get_host_and_port()
        yield MotoS3(f"http://{bound_host}:{port}", region)
    finally:
        server.stop()


# ---------------------------------------------------------------------------- output


def fmt_seconds(seconds: float) -> str:
    return f"{seconds:.2f}"


def fmt_rate(count: float, seconds: float) -> str:
    return f"{count / seconds:,.0f}" if seconds > 0 else "-"


def fmt_mb(size_bytes: float) -> str:
    return f"{size_bytes / MB:,.0f}"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> None:
    """A plain aligned text table (numbers right-aligned); cells are str()-ed."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]

    def numeric(text: str) -> bool:
        return text.replace(",", "").replace(".", "", 1).replace("x", "").replace("-", "", 1).strip().isdigit()

    def line(row: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if numeric(c) else c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()

    if title:
        print(f"\n{title}")
    print(line(list(headers)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print(line(row))
    sys.stdout.flush()


def target_line(description: str, actual: str, ok: bool) -> str:
    """`PASS  ours/floor <= 1.3 (actual 1.12x)`, for the targets under a table."""
    return f"{'PASS' if ok else 'FAIL'}  {description} (actual {actual})"
