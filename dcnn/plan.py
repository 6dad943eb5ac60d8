"""Choose a mode, grid and batch for a cluster: ``python -m dcnn.plan`` (see :mod:`dcnn.cli.plan`)."""

from dcnn.cli.common import exit_command, exit_on_interrupt_while_starting

exit_on_interrupt_while_starting()  # this module is the command: Ctrl-C from its first moment ends it in one line

from dcnn.cli.plan import main  # noqa: E402

__all__ = ["main"]

if __name__ == "__main__":
    exit_command(main())
