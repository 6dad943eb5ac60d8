"""Run CNN inference on images across MPI ranks: ``python -m dcnn.infer`` (see :mod:`dcnn.cli.infer`)."""

from dcnn.cli.common import exit_command, exit_on_interrupt_while_starting

exit_on_interrupt_while_starting()  # this module is the command: Ctrl-C from its first moment ends it in one line

from dcnn.cli.infer import main  # noqa: E402

__all__ = ["command", "main"]


def command() -> None:
    """The installed ``dcnn-infer`` script: :func:`main`, ended as ``python -m dcnn.infer`` ends
    (:func:`exit_command`)."""
    exit_command(main())


if __name__ == "__main__":
    command()
