"""``.. mudg-cli::``: the reference of every ``mudg-fast`` command, generated at build time from
the argparse definitions in :mod:`mudg_fast.cli`, so the page cannot drift from the code."""

from __future__ import annotations

import importlib
import inspect

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles


def _help_text(name: str | None) -> str:
    from mudg_fast.cli import build_parser

    parser = build_parser(name)
    if name is None:
        return parser.format_help()
    sub = next(a for a in parser._subparsers._group_actions)  # noqa: SLF001 (argparse has no public accessor)
    return sub.choices[name].format_help()


class MudgCli(SphinxDirective):
    has_content = False

    def run(self):
        from mudg_fast.cli import COMMANDS

        lines = ["Every command with its options, as ``mudg-fast COMMAND --help`` prints them.", "",
                 ".. code-block:: text", ""]
        lines += ["   " + ln for ln in _help_text(None).splitlines()]
        lines.append("")
        for name, (module, help_text) in COMMANDS.items():
            title = f"mudg-fast {name}"
            lines += [title, "-" * len(title), ""]
            doc = inspect.getdoc(importlib.import_module(module)) or help_text
            # The module docstring's first line restates the command; the rest explains it.
            body = doc.split("\n", 1)[1].strip() if "\n" in doc else help_text.capitalize() + "."
            lines += [body or help_text.capitalize() + ".", "", ".. code-block:: text", ""]
            lines += ["   " + ln for ln in _help_text(name).splitlines()]
            lines.append("")
        node = nodes.section()
        node.document = self.state.document
        nested_parse_with_titles(self.state, StringList(lines, source="mudg-cli"), node)
        return node.children


def setup(app):
    app.add_directive("mudg-cli", MudgCli)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
