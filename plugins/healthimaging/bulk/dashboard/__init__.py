"""The data-ops dashboard of bulk copies inside the Airflow UI (issue 12).

``app.py`` is the FastAPI app the plugin mounts at ``/healthimaging`` (pages, static files, JSON API),
``access.py`` who may use it, ``ledger_source.py`` which ledger database it reads, ``queries.py`` its
read-only SQL. Nothing is imported here: the plugin module is loaded by every Airflow process.
"""
