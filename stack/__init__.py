"""The distributed stack of ``docker-compose.yaml``, and the same stack as local processes.

- :mod:`stack.compose`: reads ``docker-compose.yaml`` and ``.env`` the way ``docker compose`` does
  (YAML anchors and merge keys, ``${VAR:-default}`` interpolation, ``env_file``) and documents the
  only changes made to run it without Docker (:data:`stack.compose.SUBSTITUTIONS`).
- :mod:`stack.init`: the ``airflow-init`` step (the Fernet key, metadata DB migration, ledger database
  and tables, the login; credentials in 0600 files), run by the compose service and by the process
  stack alike.
- :mod:`stack.process_stack`: :class:`~stack.process_stack.ProcessStack`, the compose services as
  processes on this machine's PostgreSQL and Redis (``make stack``, and the integration test).
- :mod:`stack.processes`: starting process groups and stopping them with every descendant (also used by
  the tests' LocalExecutor harness, ``tests/airflow_stack.py``).
- ``python -m stack``: the command line (``up``, ``env``, ``dotenv``).
"""
