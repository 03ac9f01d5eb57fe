"""AWS HealthImaging for Apache Airflow: hook, operators, sensors, triggers and waiters.

Laid out like the Amazon provider (one module per kind); importable as ``healthimaging`` because
Airflow puts ``plugins/`` on ``sys.path``.
"""
