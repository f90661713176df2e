"""The benchmark harness behind ``make bench`` (``python -m bench``).

Every figure is measured on real processes started here (Redis, the sandbox, ``celery -A
worker worker`` pools as the Procfile runs them) and, where it makes sense, reported as a
ratio to a baseline taken in the same run, because the machines it runs on are shared
and noisy. See bench/README.md (method, results, limits) and the README's "Benchmarks".

Modules: ``stack`` (processes on free ports), ``procfile`` (the pools' command lines),
``pool_control`` (a pool told to stop or start consuming), ``baseline_app`` (the Celery
baseline tasks: no-op, bare HTTP, bare SMTP), ``sandbox_api`` (reading the sandbox),
``measure`` (timing helpers), ``part_timer`` (a step's CPU time split over the functions
it passes through), ``scenarios/`` (one module per figure), ``report`` (targets, table,
JSON and machine info), ``cli`` (the command line).
"""
