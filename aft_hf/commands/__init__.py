"""The ``aft-hf`` subcommands, one module each: argument parsing, option checks and printing; the work
is done by calls into the library modules. :mod:`aft_hf.cli` loads every module listed in its
``COMMAND_MODULES``; nothing else imports them.
"""
