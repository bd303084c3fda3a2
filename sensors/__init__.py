"""Sensors and schedules; the per-silo new-data and drift sensors live here."""
