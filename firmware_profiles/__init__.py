"""Firmware profiles shipped with edgefleet: one TOML file per device target (data only)."""
