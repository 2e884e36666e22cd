"""The `kubedistill` command, above the packages it drives.

Each subcommand imports the package it drives inside its body: `validate`, `crd`, `render` and `operator`
need only `kubedistill.api` and `kubedistill.operator` (the operator image has neither torch nor ray), and
`run` and `demo` load the runtime only when invoked. tests/test_import_graph.py holds that.
"""

from kubedistill.cli.commands import app, main

__all__ = ["app", "main"]
