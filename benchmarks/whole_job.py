"""The README's main job, whole, against a plain single-process script doing the same search.

    .venv/bin/python benchmarks/whole_job.py [--pairs 3] [--long] [--set SECTION.KEY=VALUE ...] [--out FILE.json]

Runs, in interleaved pairs (plain, raynas, plain, raynas, ...):

- **plain**: ``python benchmarks/plain_search.py --method rsps --dataset digits --out DIR`` (one
  process, no Ray started, one unit at a time: the physical limit of orchestration);
- **raynas**: ``raynas search --method rsps --dataset digits --storage STORAGE --name NAME``
  (small preset, embedded local Ray),

each a subprocess timed from its start to its exit (``time.perf_counter()`` around it), so imports,
Ray's start, the actor's start, Tune, the tables and the shutdown all count. Reports plain/raynas
per pair and the median ratio (< 1: raynas takes longer than the plain loop).

Then it checks that both computed the same search: raynas's ``RUN_DIR/candidates.parquet`` has the
plain run's candidates with the same ``valid_acc`` (to 1e-6) and ``summary.parquet`` the same
``final_arch``; the first difference fails the benchmark loudly (exit 1).

Memory: every ``--interval`` seconds (0.25) the RSS of each side's process tree is sampled (psutil:
the driver, its children and grandchildren, and any process whose command line names the run's
Ray session, in case Ray reparented one; other Ray sessions on the machine are not counted).
Reported: the peak of the summed RSS (shared pages, e.g. libtorch's text or Ray's object store,
count once per process that maps them), the peak of the summed private memory (RSS minus shared
pages: counts nothing twice), and for raynas the processes at the peak (driver, gcs_server,
raylet, other Ray daemons, each ``ray::...`` worker by its title) and which imported torch
(``libtorch`` in ``/proc/PID/maps``).

Timeline: from ``RUN_DIR/rows.jsonl`` (each row's ``t``: seconds since the session began, which the
session record's ``started`` places on the clock), the session's start, the first row, the last
train row, the first/last score and standalone rows and the end record, all in seconds since the
process started; likewise for the plain run (its own timeline in plain.json).

``--long``: a longer job (:data:`LONG`) in which the fixed costs weigh less: the small preset's
network, scaled towards the paper preset's protocol (250 epochs, chunks of 500 steps, 100 candidates
in one cohort, 200 standalone epochs): 150 supernet epochs (2400 steps on digits), chunks of 500,
100 candidates, the two picks trained 60 epochs each. About 4-5 minutes a side on 2 free cores.

Prints a markdown table per run and writes every figure to ``--out`` (JSON). The machine may be
shared: the load average (``os.getloadavg()``) before each run is part of the figures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import importlib.util
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PLAIN_SCRIPT = REPO / "benchmarks" / "plain_search.py"
JOB = ["--method", "rsps", "--dataset", "digits"]
TOLERANCE = 1e-6
MIB = 1024 * 1024

#: ``--long``: the small preset scaled towards the paper preset's step counts (see the docstring)
LONG = ["supernet.epochs=150", "searcher.chunk_steps=500", "searcher.num_candidates=100", "searcher.cohort_size=100",
        "searcher.standalone={'epochs': 60}"]


def import_psutil():
    """psutil: installed, or the copy Ray ships in ``ray/thirdparty_files`` (found without importing Ray)."""
    try:
        import psutil
    except ImportError:
        spec = importlib.util.find_spec("ray")
        if spec is None or not spec.submodule_search_locations:
            raise
        for location in spec.submodule_search_locations:
            vendored = Path(location) / "thirdparty_files"
            if (vendored / "psutil").is_dir():
                sys.path.append(str(vendored))
                break
        import psutil
    return psutil


psutil = import_psutil()

_SESSION = re.compile(r"session_\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}_\d+_\d+")
_WORKER_TITLE = re.compile(r"ray::[^\s.]+")


# --- memory -----------------------------------------------------------------------------------------
def process_kind(pid: int, root: int, title: str) -> str:
    """What a process of a run is: driver, gcs_server, raylet, a Ray worker (its title, method
    dropped: ``ray::_SupernetActor``, ``ray::ImplicitFunc``, ``ray::raynas-standalone``, ``ray::IDLE``)
    or another Ray daemon."""
    if pid == root:
        return "driver"
    worker = _WORKER_TITLE.match(title)
    if worker:
        return worker.group(0)
    program = Path(title.split(" ")[0]).name
    if program == "gcs_server":
        return "gcs_server"
    if program == "raylet":  # before the next test: its command line names default_worker.py
        return "raylet"
    if "default_worker.py" in title:
        return "ray worker (starting)"  # before it takes its ray::... title
    for daemon in ("dashboard/agent.py", "runtime_env/agent", "log_monitor.py", "monitor.py", "dashboard.py",
                   "ray_process_reaper"):
        if daemon in title:
            return f"ray daemon ({Path(daemon).stem if daemon.endswith('.py') else daemon.split('/')[0]})"
    return "other"


def maps_torch(pid: int) -> bool:
    """Whether the process has libtorch mapped (it imported torch)."""
    try:
        with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as f:
            return any("libtorch" in line for line in f)
    except OSError:
        return False


class TreeSampler(threading.Thread):
    """Samples the RSS of a process tree (and of the processes naming its Ray session) every ``interval`` s."""

    def __init__(self, pid: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.root_pid = pid
        self.root = psutil.Process(pid)
        self.interval = interval
        self.began = time.perf_counter()
        self.halt = threading.Event()
        self.sessions: set[str] = set()
        self.adopted: dict[int, "psutil.Process"] = {}  # found by session name, not in the tree
        self.torch: dict[int, bool] = {}
        self.torch_looked: dict[int, float] = {}
        self.series: list[tuple[float, int, int, int]] = []  # (t, total rss, total private, processes)
        self.peak: dict | None = None
        self.peak_private = 0
        self.per_process: dict[int, dict] = {}
        self.scanned = 0.0
        self.cpu_s = 0.0

    def run(self) -> None:
        while not self.halt.is_set():
            began = time.thread_time()
            try:
                self.sample()
            except Exception as err:  # a sampler bug must not hang the benchmark; say it
                print(f"whole_job: sampler error: {err!r}", file=sys.stderr)
            self.cpu_s += time.thread_time() - began
            self.halt.wait(self.interval)

    def stop(self) -> None:
        self.halt.set()
        self.join()

    def _members(self) -> dict[int, "psutil.Process"]:
        members = {}
        try:
            members[self.root_pid] = self.root
            for child in self.root.children(recursive=True):
                members[child.pid] = child
        except psutil.NoSuchProcess:
            pass
        now = time.perf_counter()
        if self.sessions and now - self.scanned >= 1.0:
            # a Ray process that left the tree (reparented) still names its session on its command line
            self.scanned = now
            for proc in psutil.process_iter(["cmdline"]):
                if proc.pid in members or proc.pid in self.adopted:
                    continue
                line = " ".join(proc.info.get("cmdline") or [])
                if any(s in line for s in self.sessions):
                    self.adopted[proc.pid] = proc
        for pid, proc in list(self.adopted.items()):
            if pid not in members:
                if proc.is_running():
                    members[pid] = proc
                else:
                    del self.adopted[pid]
        return members

    def sample(self) -> None:
        t = time.perf_counter() - self.began
        entries = []
        for pid, proc in self._members().items():
            try:
                with proc.oneshot():
                    title = " ".join(proc.cmdline()) or proc.name()
                    mem = proc.memory_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            for session in _SESSION.findall(title):
                self.sessions.add(session)
            if not self.torch.get(pid) and t - self.torch_looked.get(pid, -10.0) >= 1.0:
                self.torch_looked[pid] = t
                self.torch[pid] = maps_torch(pid)
            private = max(0, mem.rss - getattr(mem, "shared", 0))
            kind = process_kind(pid, self.root_pid, title)
            entry = {"pid": pid, "kind": kind, "title": title.strip()[:120], "rss": mem.rss, "private": private,
                     "torch": bool(self.torch.get(pid))}
            entries.append(entry)
            seen = self.per_process.setdefault(pid, {"pid": pid, "kinds": [], "peak_rss": 0, "torch": False})
            if kind not in seen["kinds"]:
                seen["kinds"].append(kind)
            seen["peak_rss"] = max(seen["peak_rss"], mem.rss)
            seen["torch"] = seen["torch"] or entry["torch"]
            seen["last_title"] = entry["title"]
        if not entries:
            return
        total = sum(e["rss"] for e in entries)
        private = sum(e["private"] for e in entries)
        self.series.append((round(t, 2), total, private, len(entries)))
        self.peak_private = max(self.peak_private, private)
        if self.peak is None or total > self.peak["total_rss"]:
            self.peak = {"t": round(t, 2), "total_rss": total, "total_private": private,
                         "processes": sorted(entries, key=lambda e: -e["rss"])}

    def leftovers(self) -> list[dict]:
        """Processes of the run's Ray session still alive (after the driver exited)."""
        if not self.sessions:
            return []
        out = []
        for proc in psutil.process_iter(["cmdline"]):
            line = " ".join(proc.info.get("cmdline") or [])
            if any(s in line for s in self.sessions):
                out.append({"pid": proc.pid, "title": line[:120]})
        return out

    def figures(self) -> dict:
        return {
            "interval_s": self.interval, "samples": len(self.series), "sampler_cpu_s": round(self.cpu_s, 3),
            "peak_total_rss_mib": round(self.peak["total_rss"] / MIB, 1) if self.peak else None,
            "peak_total_private_mib": round(self.peak_private / MIB, 1) if self.peak else None,
            "peak": None if self.peak is None else {
                **{k: self.peak[k] for k in ("t", "total_rss", "total_private")},
                "processes": [{**e, "rss_mib": round(e["rss"] / MIB, 1), "private_mib": round(e["private"] / MIB, 1)}
                              for e in self.peak["processes"]]},
            "per_process": [{**p, "peak_rss_mib": round(p["peak_rss"] / MIB, 1)} for p in self.per_process.values()],
            "sessions": sorted(self.sessions),
            "series": self.series,
        }


# --- one side ---------------------------------------------------------------------------------------
def ray_sessions_running() -> int:
    """Raylets on the machine when a run starts (other people's Ray sessions load it too)."""
    count = 0
    for proc in psutil.process_iter(["name"]):
        if (proc.info.get("name") or "").startswith("raylet"):
            count += 1
    return count


def run_side(side: str, cmd: list[str], log: Path, *, memory: bool, interval: float, timeout_s: float) -> dict:
    """Run one side's process to its exit: wall seconds from start to exit, and its memory."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # raynas starts its own embedded Ray
    load = os.getloadavg()
    others = ray_sessions_running()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        launched = time.time()
        began = time.perf_counter()
        # its own process group: a timed-out run is ended with everything it started, nothing else
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        sampler = TreeSampler(proc.pid, interval) if memory else None
        if sampler is not None:
            sampler.start()
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
        wall = time.perf_counter() - began
        if sampler is not None:
            sampler.stop()
    figures = {"side": side, "cmd": cmd, "rc": rc, "wall_s": round(wall, 3), "launched": launched,
               "loadavg_before": [round(x, 2) for x in load], "other_raylets_before": others, "log": str(log)}
    if sampler is not None:
        figures["memory"] = sampler.figures()
        time.sleep(1.0)
        figures["leftover_processes_1s_after_exit"] = sampler.leftovers()
    return figures


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --- the runs' results --------------------------------------------------------------------------------
def raynas_results(run_dir: Path, launched: float) -> dict:
    import pandas as pd

    candidates = pd.read_parquet(run_dir / "candidates.parquet")
    summary = pd.read_parquet(run_dir / "summary.parquet").iloc[0]
    rows, session_started, end = [], None, None
    with open(run_dir / "rows.jsonl", encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            record = json.loads(line)
            if record.get("event") == "session":
                session_started = record.get("started")
            elif record.get("event") == "end":
                end = record
            else:
                rows.append(record)
    offset = (session_started - launched) if session_started is not None else 0.0
    timeline = {"session_began": round(offset, 3)}

    def mark(name: str, t: float | None) -> None:
        if t is not None:
            timeline[name] = round(offset + float(t), 3)

    for kind in ("train", "score", "standalone"):
        of_kind = [r for r in rows if r.get("kind") == kind]
        if of_kind:
            mark(f"first_{kind}_row", of_kind[0]["t"])
            if kind == "train":
                mark("first_unit_began", of_kind[0]["t"] - float(of_kind[0].get("seconds") or 0.0))
            mark(f"last_{kind}_row", of_kind[-1]["t"])
    if end is not None:
        mark("end", end.get("t"))
    return {
        "run_dir": str(run_dir),
        "status": summary.get("status"),
        "final_arch": summary.get("final_arch"),
        "candidates": {str(a): float(v) for a, v in zip(candidates["arch"], candidates["valid_acc"])},
        "candidate_order": [str(a) for a in candidates["arch"]],
        "standalone_valid_acc": float(summary.get("standalone_valid_acc")),
        "timeline": timeline,
        "compute_s": own_seconds(rows),
        "summary": {k: (v.item() if hasattr(v, "item") else v) for k, v in summary.items()
                    if k in ("candidates", "supernet_steps", "train_s", "score_s", "standalone_s", "device_s", "wall_s")},
    }


def own_seconds(rows: list[dict]) -> dict:
    """The units' own compute seconds by kind (a standalone row's ``seconds`` is its training's running total)."""
    train = sum(float(r.get("seconds") or 0.0) for r in rows if r.get("kind") == "train")
    score = sum(float(r.get("seconds") or 0.0) for r in rows if r.get("kind") == "score")
    standalone: dict[str, float] = {}
    for r in rows:
        if r.get("kind") == "standalone":
            standalone[r["key"]] = max(standalone.get(r["key"], 0.0), float(r.get("seconds") or 0.0))
    return {"train": round(train, 3), "score": round(score, 3), "standalone": round(sum(standalone.values()), 3)}


def plain_results(out_dir: Path, launched: float) -> dict:
    plain = json.loads((out_dir / "plain.json").read_text())
    offset = plain["started"] - launched  # the interpreter's start-up, before the script's first line
    timeline = {"script_began": round(offset, 3), **{k: round(offset + v, 3) for k, v in plain["timeline"].items()}}
    rows = [{"kind": "train", **{"seconds": u["own_seconds"]}} for u in plain["units"] if u["kind"] == "train"]
    rows += [{"kind": "score", "seconds": c["seconds"]} for c in plain["candidates"].values()]
    rows += [{"kind": "standalone", "key": k, "seconds": r["seconds"]} for k, r in plain["standalone"].items()]
    return {"final_arch": plain["final_arch"], "finished": plain["finished"], "failure": plain["failure"],
            "candidates": {a: float(c["valid_acc"]) for a, c in plain["candidates"].items()},
            "standalone_valid_acc": {k: r.get("valid_acc") for k, r in plain["standalone"].items()},
            "timeline": timeline, "compute_s": own_seconds(rows), "threads": plain["threads"],
            "node_cpus": plain["node_cpus"], "tables": plain["tables"]}


def first_difference(plain: dict, raynas: dict) -> str | None:
    """The first way the two runs' searches differ, in one line (None: the same search)."""
    if raynas["status"] != "complete":
        return f"the raynas run's status is {raynas['status']!r}, not 'complete'"
    if plain["failure"] or not plain["finished"]:
        return f"the plain run did not finish: {plain['failure']}"
    for arch in raynas["candidate_order"]:
        if arch not in plain["candidates"]:
            return f"candidate {arch} is in raynas's candidates.parquet but not in plain.json"
        a, b = plain["candidates"][arch], raynas["candidates"][arch]
        if abs(a - b) > TOLERANCE:
            return f"candidate {arch}: valid_acc {b!r} in raynas's candidates.parquet, {a!r} in plain.json"
    extra = [a for a in plain["candidates"] if a not in raynas["candidates"]]
    if extra:
        return f"candidate {extra[0]} is in plain.json but not in raynas's candidates.parquet"
    if plain["final_arch"] != raynas["final_arch"]:
        return f"final arch {raynas['final_arch']} in raynas's summary.parquet, {plain['final_arch']} in plain.json"
    return None


# --- report -------------------------------------------------------------------------------------------
def run_table(pair: int, plain: dict, raynas: dict) -> str:
    def mem(side: dict, key: str) -> str:
        value = (side.get("memory") or {}).get(key)
        return "-" if value is None else f"{value:.0f}"

    lines = [f"### pair {pair}", "", "| side | wall s | peak RSS MiB (sum) | peak private MiB (sum) | loadavg 1/5/15 before "
             "| other raylets | sampler CPU s |", "|---|---:|---:|---:|---|---:|---:|"]
    for side in (plain, raynas):
        lines.append(f"| {side['side']} | {side['wall_s']:.1f} | {mem(side, 'peak_total_rss_mib')} | "
                     f"{mem(side, 'peak_total_private_mib')} | {' / '.join(f'{x:.2f}' for x in side['loadavg_before'])} | "
                     f"{side['other_raylets_before']} | {(side.get('memory') or {}).get('sampler_cpu_s', '-')} |")
    lines += ["", f"plain/raynas = **{plain['wall_s'] / raynas['wall_s']:.3f}**", ""]
    events = ["script_began", "session_began", "imported", "worker_ready", "first_unit_began", "first_train_row",
              "last_train_row", "first_score_row", "last_score_row", "first_standalone_row", "last_standalone_row",
              "end"]
    pt, rt = plain["results"]["timeline"], raynas["results"]["timeline"]
    lines += ["| event (s since process start) | plain | raynas |", "|---|---:|---:|"]
    for event in events:
        if event in pt or event in rt:
            lines.append(f"| {event} | {pt.get(event, '')} | {rt.get(event, '')} |")
    lines.append(f"| process exit | {plain['wall_s']:.3f} | {raynas['wall_s']:.3f} |")
    pc, rc = plain["results"]["compute_s"], raynas["results"]["compute_s"]
    lines += ["", "| units' own compute s | plain | raynas |", "|---|---:|---:|"]
    for kind in ("train", "score", "standalone"):
        lines.append(f"| {kind} | {pc[kind]:.2f} | {rc[kind]:.2f} |")
    peak = (raynas.get("memory") or {}).get("peak")
    if peak:
        lines += ["", f"raynas at its peak (t = {peak['t']} s after start; {len(peak['processes'])} processes):", "",
                  "| kind | pid | title | RSS MiB | private MiB | torch |", "|---|---:|---|---:|---:|---|"]
        for p in peak["processes"]:
            lines.append(f"| {p['kind']} | {p['pid']} | `{p['title'][:60]}` | {p['rss_mib']:.0f} | {p['private_mib']:.0f} "
                         f"| {'yes' if p['torch'] else 'no'} |")
        by_kind: dict[str, list] = {}
        for p in peak["processes"]:
            by_kind.setdefault(p["kind"], []).append(p)
        lines += ["", "| kind | processes | RSS MiB | private MiB | with torch |", "|---|---:|---:|---:|---:|"]
        for kind, ps in sorted(by_kind.items(), key=lambda kv: -sum(p["rss"] for p in kv[1])):
            lines.append(f"| {kind} | {len(ps)} | {sum(p['rss_mib'] for p in ps):.0f} | "
                         f"{sum(p['private_mib'] for p in ps):.0f} | {sum(p['torch'] for p in ps)} |")
        torch_workers = [p for p in raynas["memory"]["per_process"] if p["torch"]]
        lines += ["", "processes of the raynas run that imported torch (any time): "
                  + (", ".join(f"{p['pid']} {'/'.join(p['kinds'])} (peak {p['peak_rss_mib']:.0f} MiB)"
                               for p in torch_workers) or "none")]
    if raynas.get("leftover_processes_1s_after_exit"):
        lines.append(f"\nraynas's Ray processes still alive 1 s after its exit: {raynas['leftover_processes_1s_after_exit']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    user = getpass.getuser()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=3, help="interleaved (plain, raynas) pairs (default 3)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override passed to both sides (after --long's)")
    parser.add_argument("--long", action="store_true", help=f"the longer job: --set {' --set '.join(LONG)}")
    parser.add_argument("--work", default=f"/tmp/{user}/whole_job", help="folder for the plain runs' output and logs")
    parser.add_argument("--storage", default=None, help="raynas --storage (default WORK/runs)")
    parser.add_argument("--out", default=None, help="JSON of all figures (default WORK/whole_job-TIME.json)")
    parser.add_argument("--interval", type=float, default=0.25, help="memory sampling interval, s")
    parser.add_argument("--no-memory", action="store_true", help="time only (no sampler thread)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds a side may run")
    args = parser.parse_args(argv)
    if args.pairs < 1:
        parser.error("--pairs must be >= 1")

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    work = Path(args.work)
    storage = Path(args.storage) if args.storage else work / "runs"
    out = Path(args.out) if args.out else work / f"whole_job-{stamp}.json"
    sets = (LONG if args.long else []) + list(args.set)
    set_args = [a for s in sets for a in ("--set", s)]
    raynas_bin = Path(sys.executable).parent / "raynas"
    raynas_cmd = [str(raynas_bin)] if raynas_bin.exists() else [shutil.which("raynas") or "raynas"]

    figures = {"started": stamp, "job": JOB, "sets": sets, "pairs": [], "python": sys.executable,
               "cpus": os.cpu_count(), "loadavg_start": list(os.getloadavg())}
    failure = None
    print(f"whole_job: {args.pairs} pair(s) of `{' '.join(JOB + set_args)}`; loadavg {os.getloadavg()}", flush=True)
    for pair in range(1, args.pairs + 1):
        name = f"whole-job-{stamp}-p{pair}"
        plain_dir = work / "plain" / name
        plain = run_side("plain", [sys.executable, str(PLAIN_SCRIPT), *JOB, *set_args, "--out", str(plain_dir)],
                         work / "logs" / f"{name}-plain.log", memory=not args.no_memory, interval=args.interval,
                         timeout_s=args.timeout)
        print(f"  pair {pair}: plain  {plain['wall_s']:.1f} s (rc {plain['rc']})", flush=True)
        raynas = run_side("raynas", [*raynas_cmd, "search", *JOB, *set_args, "--storage", str(storage),
                                     "--name", name], work / "logs" / f"{name}-raynas.log",
                          memory=not args.no_memory, interval=args.interval, timeout_s=args.timeout)
        print(f"  pair {pair}: raynas {raynas['wall_s']:.1f} s (rc {raynas['rc']})", flush=True)
        entry = {"pair": pair, "plain": plain, "raynas": raynas, "ratio": plain["wall_s"] / raynas["wall_s"]}
        figures["pairs"].append(entry)
        for side in (plain, raynas):
            if side["rc"] != 0:
                failure = f"pair {pair}: the {side['side']} run exited {side['rc']}; its log's end:\n{tail(Path(side['log']))}"
                break
        if failure is None:
            plain["results"] = plain_results(plain_dir, plain["launched"])
            raynas["results"] = raynas_results(storage / name, raynas["launched"])
            difference = first_difference(plain["results"], raynas["results"])
            entry["same_search"] = difference is None
            if difference is not None:
                failure = f"pair {pair}: the two runs computed different searches: {difference}"
            else:
                print(run_table(pair, plain, raynas), flush=True)
        if failure is not None:
            break

    ratios = [p["ratio"] for p in figures["pairs"]]
    figures["median_ratio"] = statistics.median(ratios) if ratios else None
    figures["loadavg_end"] = list(os.getloadavg())
    figures["failure"] = failure
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=1, default=str))
    if failure is not None:
        print(f"\nwhole_job: FAILED: {failure}\nwhole_job: figures so far in {out}", file=sys.stderr)
        return 1
    print("\n| pair | plain s | raynas s | plain/raynas |\n|---:|---:|---:|---:|")
    for p in figures["pairs"]:
        print(f"| {p['pair']} | {p['plain']['wall_s']:.1f} | {p['raynas']['wall_s']:.1f} | {p['ratio']:.3f} |")
    print(f"\nmedian plain/raynas: **{figures['median_ratio']:.3f}**  (loadavg at the end {os.getloadavg()})")
    print(f"whole_job: figures in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
