"""``[core] hostname_callable`` for several workers on one machine.

In Docker every worker container has a host name of its own, and Airflow records it on each task
instance it runs (``task_instance.hostname``). Processes on one machine share the host name, so the
process stack gives each worker ``STACK_HOSTNAME`` (``worker1``, ``worker2``, ...) and points
``AIRFLOW__CORE__HOSTNAME_CALLABLE`` here.
"""

from __future__ import annotations

import os
import socket


def get_hostname() -> str:
    return os.environ.get("STACK_HOSTNAME") or socket.getfqdn()
