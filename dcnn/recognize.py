"""Face recognition over images across MPI ranks: ``python -m dcnn.recognize`` (see :mod:`dcnn.cli.recognize`)."""

from dcnn.cli.common import exit_command, exit_on_interrupt_while_starting

exit_on_interrupt_while_starting()  # this module is the command: Ctrl-C from its first moment ends it in one line

from dcnn.cli.recognize import main  # noqa: E402

__all__ = ["main"]

if __name__ == "__main__":
    exit_command(main())
