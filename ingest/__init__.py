"""Stage 1 of the flow: sources -> the lake (canonical Parquet tables, manifest, quarantine)."""

__version__ = "0.1.0"
