"""Reporting helpers (markdown tables, number formatting, atomic writes, versions)."""
from .markdown import (  # noqa: F401
    atomic_directory,
    atomic_savefig,
    atomic_write_text,
    fmt_ci,
    fmt_num,
    fmt_p,
    md_table,
    versions_block,
)
