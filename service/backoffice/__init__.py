"""The back office: CSV pre-flight checks, upload jobs and their store, and the wire models of its routes."""
