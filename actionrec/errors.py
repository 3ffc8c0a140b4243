"""User-facing errors.

Everything a user can cause (a bad file, a wrong option, a missing GPU) raises ``ActionrecError`` or a
subclass with a one-line message that names the file or value and the cause. The CLI prints it as
``actionrec: error: <message>`` and exits with status 2: never a traceback.
"""


class ActionrecError(Exception):
    """An error the user can fix; its message is a single line telling them what to do."""


class DeviceError(ActionrecError):
    """The requested compute device is not available."""


class DataError(ActionrecError):
    """An input file (video, dataset, weights, IDX, CIFAR record) is missing, malformed or inconsistent."""


class ShapeError(ActionrecError):
    """Arrays or saved weights do not have the shapes a layer or model expects."""
