"""Subcommands of the ``mudg-fast`` CLI (see mudg_fast.cli)."""
