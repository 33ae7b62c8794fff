"""Job execution: the Celery app (``workers.celery_app``), its one task (``workers.tasks``) and
the job pipeline both executors share (``workers.runner.run_job``).

Start a worker (same command in CI, docker-compose and by hand)::

    celery -A workers.celery_app worker -Q cpu --concurrency 1   # CPU machine
    celery -A workers.celery_app worker -Q gpu --concurrency 1   # one per GPU (CUDA_VISIBLE_DEVICES)

or ``python -m workers --queue gpu``, which runs the same thing. Settings come from ``ACTTAIL_*``
environment variables (``acttail.settings.Settings``).
"""
