"""``[core] hostname_callable`` for several Airflow processes on one machine.

In Docker every container has a host name of its own, and Airflow records it on each task instance it
runs (``task_instance.hostname``) and each job (what ``airflow jobs check --hostname`` looks for).
Processes on one machine share the host name, so the process stack gives each Airflow process
``STACK_HOSTNAME`` (``worker1``, ``worker2``, ... for the workers, the process name for the others) and
points ``AIRFLOW__CORE__HOSTNAME_CALLABLE`` here.
"""

from __future__ import annotations

import os
import socket


def get_hostname() -> str:
    return os.environ.get("STACK_HOSTNAME") or socket.getfqdn()
