"""CPU seconds of a process tree, from /proc (Linux): what a server spent, whatever its shape.

A server's own line in /proc/<pid>/stat covers all its threads; worker processes (`vaeserve serve
--workers N`) and helper processes (PyTriton's tritonserver and its Python backend stub) have their
own, so the figure is the sum over the process and every descendant alive when sampled.
"""

from __future__ import annotations

import os
from pathlib import Path

TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, utime + stime in seconds) of a live process, None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its last ')'
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICKS_PER_S


def tree_cpu_s(root: int) -> float:
    """utime + stime of `root` and all its live descendants, in seconds."""
    stats = {int(p.name): s for p in Path("/proc").iterdir() if p.name.isdigit() and (s := _stat(int(p.name)))}
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            total += stats[pid][1]
            todo.extend(children.get(pid, []))
    return total


def machine_busy_s() -> float:
    """CPU seconds all cores spent not idle since boot (/proc/stat): with the server's and the load
    generator's taken off, what else ran during a measurement (another job on shared cores)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / TICKS_PER_S  # user .. steal (guest time is already in user)
