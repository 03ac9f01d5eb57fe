"""Shared test setup: the emulator fixtures (healthimaging_emulator, healthimaging_client)."""

pytest_plugins = ["healthimaging_emulator.pytest_plugin"]
