"""hazard: learned hazard predictors for KV-cache compression."""

__version__ = "0.1.0"

# Bumped whenever the trace Features change; readers refuse other versions.
SCHEMA_VERSION = 1
