"""The one exception type for mistakes a user can cause or fix.

Every module raises :class:`InputError` (or its subclass
:class:`NumericalError`) with a message that says what is wrong and what to
do; the command-line tools print it as a single line and exit with status 2.
"""


class InputError(ValueError):
    """A user-fixable problem: bad data, bad settings, an unusable store."""


class NumericalError(InputError):
    """Training produced non-finite numbers (NaN or inf); change γ/β or the data scaling.

    ``iteration`` is the training iteration it happened in, when known.
    """

    def __init__(self, message: str, iteration: int | None = None):
        super().__init__(message)
        self.iteration = iteration
