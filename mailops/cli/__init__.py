"""The ``mailops`` command: the parser and dispatch in :mod:`.main`, one module per
command group."""
