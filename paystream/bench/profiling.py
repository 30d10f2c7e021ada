"""Where the worker's CPU goes: sample it with py-spy during a phase and summarise.

``PySpy`` attaches to the running worker (``py-spy record --pid``) only for the measured
phase, so startup and idle polling do not dilute the picture, and stops it with SIGINT
(py-spy then writes its output). Only on-CPU samples are kept (py-spy's default: idle
threads are dropped), in py-spy's "raw" collapsed-stack format, one line per distinct
stack: ``frame;frame;...;leaf count`` with frames ``function (file)``.

``summarise`` turns the samples into:

* **stages**: each sample is charged to the *outermost* pipeline step on its stack
  (decode, validate, idempotency, gateway, table writes, outcome encode, produce, ...)
  or, outside every step, to the library it is in (Faust stream machinery, aiokafka,
  the event loop), and converted to CPU microseconds per command;
* **cross-cutting**: inclusive share of samples that touch pydantic, JSON, redis-py,
  the CloudEvents SDK, Faust table ``__setitem__`` (changelog sends), logging, metrics;
* **top functions** by self and by inclusive samples.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["PySpy", "find_py_spy", "parse_raw", "render_profile", "summarise"]


def find_py_spy() -> str | None:
    """py-spy beside this interpreter (the venv), else on PATH."""
    local = Path(sys.executable).parent / "py-spy"
    if local.exists():
        return str(local)
    return shutil.which("py-spy")


class PySpy:
    """``py-spy record`` attached to ``pid`` until :meth:`stop`."""

    def __init__(self, pid: int, out: Path, rate: int = 250) -> None:
        exe = find_py_spy()
        if exe is None:
            raise RuntimeError("py-spy is not installed (pip install py-spy)")
        self.out = out
        self.rate = rate
        self._log = out.with_suffix(".log").open("wb")
        self.proc = subprocess.Popen(
            [
                exe,
                "record",
                "--pid",
                str(pid),
                "--rate",
                str(rate),
                "--nolineno",
                "--format",
                "raw",
                "--output",
                str(out),
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def stop(self, timeout: float = 20) -> Path:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.out


_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*)\)$")


@dataclass(frozen=True)
class Frame:
    func: str
    file: str

    @property
    def label(self) -> str:
        return f"{self.func} ({self.file})"


def parse_raw(text: str) -> list[tuple[list[Frame], int]]:
    """py-spy raw output → [(frames root→leaf, samples)]."""
    out: list[tuple[list[Frame], int]] = []
    for line in text.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = []
        for part in stack.split(";"):
            m = _FRAME.match(part)
            frames.append(Frame(m["func"], m["file"]) if m else Frame(part, ""))
        out.append((frames, int(count)))
    return out


# Pipeline stages, by priority: a sample is charged to the first stage (in this order)
# that any frame on its stack matches. (stage, file substring, bare function names or
# None = any function in that file.)
_STAGES: tuple[tuple[str, str, frozenset[str] | None], ...] = (
    ("gateway: simulator store (Redis round trips)", "paystream/gateways/simulator/store", None),
    ("gateway: simulator logic", "paystream/gateways/simulator", None),
    ("gateway: retry/breaker/policy", "paystream/gateways/retry", None),
    ("gateway: retry/breaker/policy", "paystream/tenancy/policy", None),
    ("gateway: retry/breaker/policy", "paystream/tenancy/gateways", None),
    (
        "table writes (Faust __setitem__ + changelog send)",
        "faust/tables/",
        frozenset({"__setitem__", "on_key_set", "send_changelog"}),
    ),
    (
        "table writes (Faust __setitem__ + changelog send)",
        "mode/utils/collections",
        frozenset({"__setitem__"}),
    ),
    ("table reads", "faust/tables/", None),
    ("table reads", "faust/stores/", None),
    ("decode command (CloudEvents)", "paystream/streams/codec", frozenset({"decode_record"})),
    ("card-number scan", "paystream/streams/pan", None),
    (
        "outcome build + encode",
        "paystream/agents/pipeline",
        frozenset({"_outcome", "_reject", "_dead_letter"}),
    ),
    (
        "idempotency records",
        "paystream/agents/pipeline",
        frozenset({"_finish", "_request_hash"}),
    ),
    ("idempotency records", "paystream/agents/idempotency_keeping", None),
    (
        "entity records (_apply: versions, snapshots)",
        "paystream/agents/pipeline",
        frozenset({"_apply"}),
    ),
    ("handler logic", "paystream/agents/handlers", None),
    ("validation (pydantic, tenant/command models)", "pydantic", None),
    (
        "produce outcomes (Faust producer.send)",
        "paystream/agents/commands",
        frozenset({"process_batch", "deliver_batch", "<listcomp>"}),
    ),
    ("pipeline/agent glue", "paystream/agents/", None),
)
# Outside every stage: the innermost library on the stack.
_LIBS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("redis-py (reading replies, callbacks)", ("redis/",)),
    ("aiokafka (producer sender, fetch parsing)", ("aiokafka/",)),
    ("Faust/mode stream + agent machinery", ("faust/", "mode/")),
    ("aiohttp (web server)", ("aiohttp/",)),
    ("asyncio event loop", ("asyncio/", "selectors")),
)
# Process entry frames every main-thread sample carries: never a stage.
_ENTRY = ("paystream/__main__", "paystream/cli/", "paystream/worker.py")
_CONSUMER_THREAD = "mode/threads"
_IDLE_LEAVES = frozenset({"select", "poll", "wait", "_worker"})
_CROSS: tuple[tuple[str, tuple[str, ...], frozenset[str] | None], ...] = (
    ("pydantic (validate + dump)", ("pydantic",), None),
    ("json (dumps/loads)", ("json/",), None),
    ("redis-py client", ("redis/",), None),
    ("cloudevents SDK", ("cloudevents/",), None),
    (
        "Faust changelog sends (Topic.send_soon)",
        ("faust/",),
        frozenset({"send_changelog", "send_soon"}),
    ),
    ("aiokafka producer", ("aiokafka/producer",), None),
    ("logging", ("logging/",), None),
    ("prometheus metrics", ("prometheus_client/",), None),
    ("datetime/uuid/hashlib", ("datetime", "uuid", "hashlib"), None),
    ("Faust consumer thread (fetching)", (_CONSUMER_THREAD,), None),
)


def _bare(func: str) -> str:
    return func.rpartition(".")[2]


def _matches(frame: Frame, path: str, funcs: frozenset[str] | None) -> bool:
    return path in frame.file and (funcs is None or _bare(frame.func) in funcs)


def is_idle(frames: list[Frame]) -> bool:
    """A thread parked in epoll/poll: py-spy may report it as active; it is not CPU.

    Faust's consumer thread runs its own (uvloop) loop, whose poll is C code with no
    Python frame of its own: parked, its innermost frame is the thread's start function.
    Its real CPU (~6% of the worker's, read from /proc) shows in the frames under it.
    """
    if not frames:
        return False
    leaf = frames[-1]
    if _bare(leaf.func) == "_start_thread" and _CONSUMER_THREAD in leaf.file:
        return True
    return _bare(leaf.func) in _IDLE_LEAVES and (
        "selectors" in leaf.file or "threading" in leaf.file
    )


def _stage_of(frames: list[Frame]) -> str:
    if any(_CONSUMER_THREAD in f.file for f in frames):
        return "Faust consumer thread (fetch, on its own loop)"
    for stage, path, funcs in _STAGES:
        if any(_matches(f, path, funcs) for f in frames if not f.file.startswith(_ENTRY)):
            return stage
    for frame in reversed(frames):  # innermost library we know
        for lib, paths in _LIBS:
            if any(p in frame.file for p in paths):
                return lib
    return f"other ({frames[-1].label if frames else '?'})"


def _touches(frames: Iterable[Frame], paths: tuple[str, ...], funcs: frozenset[str] | None) -> bool:
    return any(any(_matches(f, p, funcs) for p in paths) for f in frames)


def summarise(text: str, *, rate: int, commands: int, top: int = 15) -> dict[str, Any]:
    """Stage breakdown, cross-cutting shares and top functions; CPU µs per command."""
    samples = parse_raw(text)
    total = sum(n for frames, n in samples if not is_idle(frames))
    if total == 0:
        return {
            "samples": 0,
            "commands": commands,
            "stages": [],
            "cross_cutting": [],
            "top_self": [],
            "top_inclusive": [],
        }
    per_cmd_us = 1e6 / rate / max(commands, 1)
    stages: Counter[str] = Counter()
    cross: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    idle = 0
    for frames, n in samples:
        if is_idle(frames):
            idle += n
            continue
        stages[_stage_of(frames)] += n
        for name, paths, funcs in _CROSS:
            if _touches(frames, paths, funcs):
                cross[name] += n
        if frames:
            self_time[frames[-1].label] += n
        for label in {f.label for f in frames}:
            inclusive[label] += n

    def rows(counter: Counter[str], limit: int | None = None) -> list[dict[str, Any]]:
        return [
            {
                "name": name,
                "samples": n,
                "pct": round(100 * n / total, 1),
                "us_per_command": round(n * per_cmd_us, 1),
            }
            for name, n in counter.most_common(limit)
        ]

    return {
        "samples": total,
        "idle_samples": idle,
        "rate_hz": rate,
        "commands": commands,
        "cpu_seconds": round(total / rate, 3),
        "cpu_us_per_command": round(total * per_cmd_us, 1),
        "stages": rows(stages),
        "cross_cutting": rows(cross),
        "top_self": rows(self_time, top),
        "top_inclusive": rows(inclusive, top),
    }


def render_profile(summary: dict[str, Any]) -> str:
    """Text tables for the summary (stdout)."""
    if not summary.get("samples"):
        return "profile: no samples (py-spy could not attach?)"
    lines = [
        f"worker CPU profile: {summary['samples']} samples at {summary['rate_hz']} Hz = "
        f"{summary['cpu_seconds']} CPU-s for {summary['commands']} commands "
        f"({summary['cpu_us_per_command']} µs CPU per command)",
        "note: py-spy stops the worker to sample it, and on a VM the stop often lands at its "
        "next system call: a function making one (a socket write; asyncio.get_running_loop, "
        "which calls getpid on Python 3.11) is charged for code run before it (README: "
        "Reading the profile)",
    ]
    for title, key in (
        ("by pipeline stage (outermost step on the stack)", "stages"),
        ("cross-cutting (inclusive; overlaps)", "cross_cutting"),
        ("top functions, self", "top_self"),
        ("top functions, inclusive", "top_inclusive"),
    ):
        lines += ["", f"{title}:", f"  {'%':>6} {'µs/cmd':>8}  name"]
        for row in summary[key]:
            lines.append(f"  {row['pct']:>6.1f} {row['us_per_command']:>8.1f}  {row['name']}")
    return "\n".join(lines)
