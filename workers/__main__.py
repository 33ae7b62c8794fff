"""``python -m workers [--queue cpu|gpu] [celery worker options]``: start a Celery worker.

Equivalent to ``celery -A workers.celery_app worker -Q <queue> --concurrency 1 --loglevel INFO``;
the extra arguments are passed through (e.g. ``--pool solo``, ``--hostname gpu0@%h``).
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m workers", description=__doc__.splitlines()[0])
    parser.add_argument("--queue", "-Q", default="cpu", choices=["cpu", "gpu", "cpu,gpu"], help="queue(s) to consume")
    parser.add_argument("--concurrency", "-c", type=int, default=1, help="jobs at once (default 1: jobs are big)")
    args, rest = parser.parse_known_args(argv)
    from workers.celery_app import create_celery_app

    app = create_celery_app()
    app.worker_main(["worker", "-Q", args.queue, "--concurrency", str(args.concurrency), "--loglevel", "INFO", *rest])


if __name__ == "__main__":
    main(sys.argv[1:])
