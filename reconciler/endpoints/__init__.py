"""What every target keeps for an endpoint, whatever runs it: its credentials (keys, token
secret, admin secret, ports). Shared by targets.docker and targets.kubernetes, which must
not import each other (import-linter)."""
