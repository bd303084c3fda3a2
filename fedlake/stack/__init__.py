"""A prod-like deployment on one machine (`fedlake up` / `fedlake down`): the same pieces a real
deployment runs — PostgreSQL over TCP with passwords, an S3 endpoint, a CA and certificates, one agent
process per silo over TLS with bearer tokens, Dagster on PostgreSQL — started from silos.yaml and
policies.yaml alone, so that the first prod-like query works without trial and error."""

from fedlake.stack.up import down, up

__all__ = ["down", "up"]
