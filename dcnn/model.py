"""Print a model's layer table: ``python -m dcnn.model`` (see :mod:`dcnn.cli.model`)."""

from dcnn.cli.common import exit_command, exit_on_interrupt_while_starting

exit_on_interrupt_while_starting()  # this module is the command: Ctrl-C from its first moment ends it in one line

from dcnn.cli.model import main  # noqa: E402

__all__ = ["command", "main"]


def command() -> None:
    """The installed ``dcnn-model`` script: :func:`main`, ended as ``python -m dcnn.model`` ends
    (:func:`exit_command`)."""
    exit_command(main())


if __name__ == "__main__":
    command()
