"""Bulk copies from manifests: reading and validating manifests, the ledger (copies, leases, the
shared rate limit, manifests taken), the batch engine, the steps of a run, reports and lineage."""
