"""The distributed stack of ``docker-compose.yaml``, and the same stack as local processes.

- :mod:`stack.compose`: reads ``docker-compose.yaml`` and ``.env`` the way ``docker compose`` does
  (YAML anchors and merge keys, ``${VAR:-default}`` interpolation, ``env_file``) and documents the
  only changes made to run it without Docker (:data:`stack.compose.SUBSTITUTIONS`).
- :mod:`stack.init`: the ``airflow-init`` step (the Fernet key, metadata DB migration, ledger database
  and tables, the login; credentials in 0600 files), run by the compose service and by the process
  stack alike.
- :mod:`stack.process_stack`: :class:`~stack.process_stack.ProcessStack`, the compose services as
  processes on this machine's PostgreSQL and Redis, with compose's CeleryExecutor (``make stack``, the
  integration tests) or the LocalExecutor (the tests' end-to-end stack, ``tests/airflow_stack.py``).
- :mod:`stack.supervisor`: named processes, each in a process group of its own with a log file; alive
  checks, kills, the ordered stop of every descendant, log tails (on :mod:`stack.processes`).
- :mod:`stack.health`: Airflow's ``/api/v2/monitor/health``, and the compose file's health checks as
  local commands.
- :mod:`stack.postgres`, :mod:`stack.redis_db`: a stack's throwaway databases on the machine's servers.
- ``python -m stack``: the command line (``up``, ``env``, ``dotenv``).
"""
