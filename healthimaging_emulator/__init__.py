"""A local emulator of AWS HealthImaging (service id ``medical-imaging``).

The emulator speaks the service's rest-json protocol over HTTP, derived from botocore's service
model, keeps its state in SQLite, and reproduces the service's asynchronous copies, quotas and
faults. Start it with ``python -m healthimaging_emulator``; see README.md.
"""
