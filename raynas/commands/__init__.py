"""Subcommands of ``raynas`` that have a module of their own (see ``raynas.cli.COMMAND_MODULES``).

Each module has ``add_parser(sub)`` (argparse only, nothing heavy imported) and
``run(args) -> int``; like ``raynas.cli`` they present (print), the library they call does not.
"""
