"""API load test: concurrent clients submitting, polling and reading jobs against the real stack on loopback.

Reproduce (PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379 must be up; scripts/services.sh)::

    .venv/bin/python benchmarks/api_load.py --clients 50,200 --api-workers 2

The script starts everything itself: a fresh PostgreSQL database (dropped at the end), Redis
database 6 (flushed), ``acttail serve --executor celery`` (``--api-workers`` uvicorn processes,
the service's own pool, timeout and key-cache settings) and one
``celery -A workers.celery_app worker -Q cpu`` (prefork, concurrency 1), and a tiny random Llama
under a model root. Each job computes alphas (the first one; the rest reuse the stored ESD run) and
one allocation, so the numbers measure the service (HTTP, database, broker, worker turnaround),
not the science.

Phases, side by side in one run:

1. idle: one client, sequential ``GET /v1/jobs/{id}`` of a finished job (the read baseline);
2. jobs: ``--job-clients`` threads, each submitting ``--jobs-per-client`` jobs (``POST /v1/jobs``)
   and polling them (``GET /v1/jobs/{id}`` every ``--poll-interval`` s) until they finish; every
   submitted job must be listed, finished and succeeded;
3. reads, once per ``--clients`` count: that many keep-alive connections, each sending one
   authenticated read every ``--read-interval`` s on a fixed schedule for ``--read-duration`` s
   (9 in 10 ``GET /v1/jobs/{id}`` of a random job, 1 in 10 ``GET /v1/jobs?limit=20``). Latency is
   measured from the scheduled send time, so a stalled server cannot hide behind clients that
   wait (no coordinated omission). Meanwhile ``pg_stat_activity`` is sampled every 0.2 s for
   connections of the API left "idle in transaction" (the wedge of issue 14).

The read client is a minimal asyncio HTTP/1.1 client, not httpx: on two cores the load generator
must not cost more CPU than the server it measures. Results go to benchmarks/results/api_load.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/6"
RESULTS = REPO / "benchmarks" / "results"


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of ``values``."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summary_ms(values: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values]
    return {
        "n": len(ms),
        "p50": round(percentile(ms, 50), 2),
        "p99": round(percentile(ms, 99), 2),
        "mean": round(statistics.fmean(ms), 2),
        "max": round(max(ms), 2),
    }


@dataclass
class ClientLog:
    submit_s: list[float] = field(default_factory=list)
    read_s: list[float] = field(default_factory=list)
    turnaround_s: list[float] = field(default_factory=list)
    job_ids: list[str] = field(default_factory=list)
    final: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Stack:
    """PostgreSQL database + Redis db + uvicorn + Celery worker, torn down in reverse order."""

    def __init__(self, workdir: Path, model_root: Path, api_workers: int) -> None:
        self.workdir, self.model_root, self.api_workers = workdir, model_root, api_workers
        self.db_name = f"acttail_load_{uuid.uuid4().hex[:8]}"
        self.database_url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{self.db_name}"
        self.port = free_port()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.api_key = ""

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ACTTAIL_")}
        env.update(
            ACTTAIL_HOME=str(self.workdir / "home"), ACTTAIL_DATABASE_URL=self.database_url,
            ACTTAIL_BROKER_URL=REDIS_URL, ACTTAIL_EXECUTOR="celery", ACTTAIL_MODEL_ROOTS=str(self.model_root),
            HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO),
            ACTTAIL_API_WORKERS=str(self.api_workers),
        )  # fmt: skip
        return env

    def start(self) -> None:
        import redis
        from sqlalchemy import create_engine, text

        from acttail.store import migrate
        from acttail.store.db import make_engine, make_session_factory, session_scope
        from acttail.store.teams import create_api_key, create_team

        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{self.db_name}"'))
        admin.dispose()
        redis.Redis.from_url(REDIS_URL).flushdb()
        migrate.upgrade(self.database_url)
        engine = make_engine(self.database_url)
        with session_scope(make_session_factory(engine)) as db:
            self.api_key = create_api_key(create_team("load", db_session=db), db_session=db, label="api_load")
        engine.dispose()
        bin_dir = Path(sys.executable).parent
        self._spawn("api", [str(bin_dir / "acttail"), "serve", "--host", "127.0.0.1",
                            "--port", str(self.port), "--executor", "celery"])  # fmt: skip
        self._spawn("worker", [str(bin_dir / "celery"), "-A", "workers.celery_app", "worker", "-Q", "cpu",
                               "--concurrency", "1", "--loglevel", "WARNING", "--without-gossip",
                               "--without-mingle", "--without-heartbeat"])  # fmt: skip
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        tail = (self.workdir / "api.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"API not ready after 120 s; the end of its log:\n{tail}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _spawn(self, name: str, cmd: list[str]) -> None:
        log = (self.workdir / f"{name}.log").open("wb")
        # libpq reads PGAPPNAME: the sampler tells the API's connections from the worker's.
        env = {**self.env(), "PGAPPNAME": f"acttail-{name}"}
        self.procs.append(
            subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        )

    def api_cpu_s(self) -> float:
        """CPU seconds used so far by the API's process group (``acttail serve`` and its uvicorn workers)."""
        return group_cpu_s(self.procs[0].pid)

    def stop(self) -> None:
        from sqlalchemy import create_engine, text

        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)'))
        admin.dispose()


def run_client(
    index: int, url: str, headers: dict[str, str], model_id: str, jobs: int, poll_s: float, deadline: float,
    log: ClientLog,
) -> None:  # fmt: skip
    """Submit ``jobs`` jobs (distinct targets), then poll every unfinished one until all finish."""
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        submitted: dict[str, float] = {}
        for j in range(jobs):
            target = round(0.01 + 0.9 * (index * jobs + j) / 1000, 4)  # unique per job: no dedup
            start = time.perf_counter()
            response = client.post("/v1/jobs", json={"model_id": model_id, "targets": [target]})
            log.submit_s.append(time.perf_counter() - start)
            if response.status_code != 202:
                log.errors.append(f"POST {response.status_code}: {response.text[:200]}")
                continue
            job_id = response.json()["id"]
            log.job_ids.append(job_id)
            submitted[job_id] = time.perf_counter()
        pending = set(submitted)
        while pending and time.monotonic() < deadline:
            for job_id in sorted(pending):
                start = time.perf_counter()
                response = client.get(f"/v1/jobs/{job_id}")
                log.read_s.append(time.perf_counter() - start)
                status = (
                    response.json().get("status") if response.status_code == 200 else f"http {response.status_code}"
                )
                if status in ("succeeded", "failed", "cancelled"):
                    log.final[job_id] = status
                    log.turnaround_s.append(time.perf_counter() - submitted[job_id])
                    pending.discard(job_id)
            time.sleep(poll_s)
        for job_id in pending:
            log.errors.append(f"job {job_id} unfinished at the deadline")


def idle_reads(url: str, headers: dict[str, str], job_id: str, count: int) -> list[float]:
    out = []
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        for _ in range(count):
            start = time.perf_counter()
            assert client.get(f"/v1/jobs/{job_id}").status_code == 200
            out.append(time.perf_counter() - start)
    return out


def wait_finished(url: str, headers: dict[str, str], job_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = httpx.get(f"{url}/v1/jobs/{job_id}", headers=headers, timeout=30).json()
        if body["status"] in ("succeeded", "failed", "cancelled"):
            return body
        time.sleep(0.5)
    raise RuntimeError(f"warm-up job {job_id} did not finish in {timeout} s")


def account(url: str, headers: dict[str, str], logs: list[ClientLog]) -> dict[str, Any]:
    """Every submitted job is listed by the API exactly once and finished."""
    submitted = [job_id for log in logs for job_id in log.job_ids]
    listed: list[dict[str, Any]] = []
    offset: int | None = 0
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        while offset is not None:
            page = client.get("/v1/jobs", params={"limit": 100, "offset": offset}).json()
            listed += page["items"]
            offset = page["next_offset"]
    by_id = {job["id"]: job for job in listed}
    statuses = [by_id[j]["status"] for j in submitted if j in by_id]
    return {
        "submitted": len(submitted),
        "unique_ids": len(set(submitted)),
        "listed_by_api": sum(1 for j in submitted if j in by_id),
        "succeeded": statuses.count("succeeded"),
        "failed": statuses.count("failed"),
        "unfinished": sum(1 for s in statuses if s in ("queued", "running")),
        "client_errors": [e for log in logs for e in log.errors],
    }


def group_cpu_s(pgid: int) -> float:
    """User + system CPU seconds of every live process in process group ``pgid`` (Linux /proc)."""
    total, tick = 0, os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after "(comm)": state, ppid, pgrp, ..., utime(11), stime(12)
            total += int(fields[11]) + int(fields[12])
    return total / tick


class PgSampler(threading.Thread):
    """Samples ``pg_stat_activity`` for the API's connections to the benchmark database every 0.2 s."""

    def __init__(self, db_name: str) -> None:
        super().__init__(daemon=True)
        self.db_name, self.stop_event = db_name, threading.Event()
        self.max_idle_in_transaction = 0
        self.max_connections = 0
        self.samples = 0

    def run(self) -> None:
        import psycopg

        with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", autocommit=True) as conn:
            while not self.stop_event.is_set():
                rows = conn.execute(
                    "SELECT state, count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = "
                    "'acttail-api' GROUP BY state",
                    (self.db_name,),
                ).fetchall()
                states = {state: int(count) for state, count in rows}
                self.max_idle_in_transaction = max(self.max_idle_in_transaction, states.get("idle in transaction", 0))
                self.max_connections = max(self.max_connections, sum(states.values()))
                self.samples += 1
                self.stop_event.wait(0.2)


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length)


async def _reader_client(
    port: int, key: str, paths: list[str], interval: float, start: float, stop: float, log: dict[str, Any]
) -> None:
    """One keep-alive connection sending a read every ``interval`` s from a random phase until ``stop``."""
    loop = asyncio.get_running_loop()
    rng = random.Random()
    due = start + rng.uniform(0, interval)
    connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    while due < stop:
        await asyncio.sleep(max(0.0, due - loop.time()))
        path = rng.choice(paths)
        request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n\r\n".encode()
        try:
            if connection is None:
                connection = await asyncio.open_connection("127.0.0.1", port)
            connection[1].write(request)
            status, _ = await asyncio.wait_for(_read_response(connection[0]), timeout=30)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
            log["errors"][type(exc).__name__] += 1
            if connection is not None:
                connection[1].close()
            connection = None
        else:
            log["latency_s"].append(loop.time() - due)  # from the scheduled time: no coordinated omission
            log["statuses"][status] += 1
        due += interval
        if due < loop.time():  # more than one interval behind: skip the missed slots, count them
            missed = int((loop.time() - due) / interval) + 1
            log["missed"] += missed
            due += missed * interval
    if connection is not None:
        connection[1].close()


def read_phase(stack: Stack, job_ids: list[str], clients: int, interval: float, duration: float) -> dict[str, Any]:
    """``clients`` connections reading on a fixed schedule; throughput, latency, errors, idle transactions."""
    paths = [f"/v1/jobs/{job_id}" for job_id in job_ids] * 9 + ["/v1/jobs?limit=20"] * len(job_ids)
    log: dict[str, Any] = {"latency_s": [], "statuses": Counter(), "errors": Counter(), "missed": 0}
    port, key = stack.port, stack.api_key
    sampler = PgSampler(stack.db_name)
    sampler.start()

    async def run() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time() + 0.5
        await asyncio.gather(
            *(_reader_client(port, key, paths, interval, start, start + duration, log) for _ in range(clients))
        )
        return loop.time() - start

    load_before = os.getloadavg()[0]
    cpu_before = stack.api_cpu_s()
    wall = asyncio.run(run())
    api_cpu = stack.api_cpu_s() - cpu_before
    sampler.stop_event.set()
    sampler.join()
    ok = log["statuses"].get(200, 0)
    errors = sum(n for status, n in log["statuses"].items() if status != 200) + sum(log["errors"].values())
    return {
        "clients": clients,
        "interval_s": interval,
        "duration_s": duration,
        "offered_per_s": round(clients / interval, 1),
        "wall_s": round(wall, 2),
        "ok": ok,
        "reads_per_s": round(ok / wall, 1),
        "latency_ms": summary_ms(log["latency_s"]) if log["latency_s"] else None,
        "p90_ms": round(percentile([v * 1000 for v in log["latency_s"]], 90), 2) if log["latency_s"] else None,
        "errors": errors,
        "statuses": {str(k): v for k, v in sorted(log["statuses"].items())},
        "client_errors": dict(log["errors"]),
        "missed_slots": log["missed"],
        "api_cpu_ms_per_read": round(api_cpu / max(1, ok + errors) * 1000, 2),
        "max_idle_in_transaction": sampler.max_idle_in_transaction,
        "max_db_connections": sampler.max_connections,
        "pg_samples": sampler.samples,
        "load_average_1m_before": round(load_before, 2),
        "load_average_1m_after": round(os.getloadavg()[0], 2),
    }


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
        cpu = model
    except (OSError, StopIteration):
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{os.cpu_count()}-core {cpu}, Linux {platform.release()}, Python {platform.python_version()}; "
        f"load average {load} at the start"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="50,200", help="read phases: comma-separated connection counts")
    parser.add_argument(
        "--read-interval", type=float, default=0.3, help="each read client sends one read this often (s)"
    )
    parser.add_argument("--read-duration", type=float, default=20, help="length of each read phase (s)")
    parser.add_argument("--api-workers", type=int, default=2, help="ACTTAIL_API_WORKERS of the API under test")
    parser.add_argument("--job-clients", type=int, default=4)
    parser.add_argument("--jobs-per-client", type=int, default=3)
    parser.add_argument("--poll-interval", type=float, default=0.2)
    parser.add_argument("--idle-reads", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=600, help="wall-clock limit of the job phase (s)")
    parser.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/api_load.*")
    args = parser.parse_args()
    read_clients = [int(c) for c in args.clients.split(",") if c.strip()]
    if args.job_clients * args.jobs_per_client > 900:
        parser.error("at most 900 jobs (targets must stay unique below 0.91)")

    from benchmarks._machine import busy_note
    from tests.tiny_models import save_tiny_model

    host = f"{machine()}; {busy_note()}"  # before our own processes add to the load
    workdir = Path(tempfile.mkdtemp(prefix="acttail-load-"))
    model_root = workdir / "models"
    save_tiny_model(model_root / "tiny-llama", tokenizer="wikitext")
    stack = Stack(workdir, model_root, args.api_workers)
    reads: list[dict[str, Any]] = []
    try:
        stack.start()
        headers = {"Authorization": f"Bearer {stack.api_key}"}
        # Warm-up job: computes the ESD once and loads torch in the worker, so the load phase
        # measures the service's turnaround, not the first import.
        warm = httpx.post(f"{stack.url}/v1/jobs", json={"model_id": "tiny-llama", "targets": [0.95]},
                          headers=headers, timeout=30).json()  # fmt: skip
        wait_finished(stack.url, headers, warm["id"], 300)
        idle = idle_reads(stack.url, headers, warm["id"], args.idle_reads)

        logs = [ClientLog() for _ in range(args.job_clients)]
        deadline = time.monotonic() + args.timeout
        threads = [
            threading.Thread(
                target=run_client,
                args=(i, stack.url, headers, "tiny-llama", args.jobs_per_client, args.poll_interval, deadline, logs[i]),
            )
            for i in range(args.job_clients)
        ]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - started
        accounting = account(stack.url, headers, logs)
        job_ids = [warm["id"], *(job_id for log in logs for job_id in log.job_ids)]
        for clients in read_clients:
            reads.append(
                read_phase(stack, job_ids, clients, args.read_interval, args.read_duration)
            )  # fmt: skip
            print(json.dumps(reads[-1]), flush=True)
    finally:
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    submit = summary_ms([s for log in logs for s in log.submit_s])
    polls = summary_ms([s for log in logs for s in log.read_s])
    idle_summary = summary_ms(idle)
    turnaround = summary_ms([s for log in logs for s in log.turnaround_s])
    result = {
        "command": (f"python benchmarks/api_load.py --clients {args.clients} --read-interval {args.read_interval} "
                    f"--read-duration {args.read_duration:g} --api-workers {args.api_workers} "
                    f"--job-clients {args.job_clients} --jobs-per-client {args.jobs_per_client}"),
        "machine": host,
        "stack": (f"acttail serve --executor celery ({args.api_workers} uvicorn processes, default pool/timeout/"
                  "key-cache settings) + Celery worker (prefork, concurrency 1) + Redis + PostgreSQL, loopback"),
        "job_clients": args.job_clients,
        "jobs_per_client": args.jobs_per_client,
        "poll_interval_s": args.poll_interval,
        "wall_s": round(wall, 2),
        "jobs_per_s": round(accounting["submitted"] / wall, 2),
        "submit_latency_ms": submit,
        "read_latency_ms_under_load": polls,
        "read_latency_ms_idle": idle_summary,
        "job_turnaround_ms": turnaround,
        "accounting": accounting,
        "reads": reads,
    }  # fmt: skip
    ok = (
        accounting["submitted"] == accounting["unique_ids"] == accounting["listed_by_api"] == accounting["succeeded"]
        == args.job_clients * args.jobs_per_client
        and not accounting["client_errors"]
    )  # fmt: skip
    result["all_jobs_accounted_for"] = ok
    result["read_errors"] = sum(r["errors"] for r in reads)
    print(render(result))
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "api_load.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        (RESULTS / "api_load.md").write_text(render(result) + "\n", encoding="utf-8")
    sys.exit(0 if ok and not result["read_errors"] else 1)


def render(r: dict[str, Any]) -> str:
    def row(name: str, s: dict[str, float]) -> str:
        return f"| {name} | {s['n']} | {s['p50']:.1f} | {s['p99']:.1f} | {s['mean']:.1f} | {s['max']:.1f} |"

    def read_row(x: dict[str, Any]) -> str:
        lat = x["latency_ms"] or {"p50": float("nan"), "p99": float("nan"), "max": float("nan")}
        return (f"| {x['clients']} | {x['offered_per_s']:.0f} | {x['reads_per_s']:.0f} | {lat['p50']:.1f} | "
                f"{x['p90_ms']:.1f} | {lat['p99']:.1f} | {lat['max']:.1f} | {x['errors']} | {x['missed_slots']} | "
                f"{x['api_cpu_ms_per_read']:.2f} | {x['max_idle_in_transaction']} | {x['max_db_connections']} | "
                f"{x['load_average_1m_before']:.1f} → {x['load_average_1m_after']:.1f} |")  # fmt: skip

    a = r["accounting"]
    return "\n".join([
        "# API load test",
        "",
        f"Command: `{r['command']}`  ",
        f"Machine: {r['machine']}  ",
        f"Stack: {r['stack']}",
        "",
        "## Authenticated reads",
        "",
        "Each connection sends one read every interval on a fixed schedule (9/10 `GET /v1/jobs/{id}`, 1/10 "
        "`GET /v1/jobs?limit=20`); latency counts from the scheduled send time. \"idle in tx\" is the most "
        "connections of the API seen \"idle in transaction\" in `pg_stat_activity` (sampled every 0.2 s); \"API CPU "
        "ms/read\" is the CPU time of all API processes divided by the reads answered.",
        "",
        "| clients | offered/s | reads/s (200) | p50 ms | p90 ms | p99 ms | max ms | errors | missed slots | "
        "API CPU ms/read | idle in tx | API DB conns | load 1m |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *(read_row(x) for x in r["reads"]),
        "",
        "## Jobs: submit and poll",
        "",
        (f"{r['job_clients']} concurrent clients x {r['jobs_per_client']} jobs, polling every {r['poll_interval_s']} s; "
         f"load phase {r['wall_s']} s ({r['jobs_per_s']} jobs/s end to end)."),
        "",
        "| latency (ms) | n | p50 | p99 | mean | max |",
        "|---|---|---|---|---|---|",
        row("POST /v1/jobs (submission)", r["submit_latency_ms"]),
        row("GET /v1/jobs/{id} while jobs run", r["read_latency_ms_under_load"]),
        row("GET /v1/jobs/{id} idle, one client (baseline)", r["read_latency_ms_idle"]),
        row("job turnaround (submit → finished seen)", r["job_turnaround_ms"]),
        "",
        (f"Accounting: {a['submitted']} submitted, {a['unique_ids']} unique IDs, {a['listed_by_api']} listed by "
         f"GET /v1/jobs, {a['succeeded']} succeeded, {a['failed']} failed, {a['unfinished']} unfinished, "
         f"{len(a['client_errors'])} client errors → all jobs accounted for: **{r['all_jobs_accounted_for']}**."),
    ])  # fmt: skip


if __name__ == "__main__":
    main()
