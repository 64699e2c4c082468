"""`DataError`: bad input data (a file, a folder, an array), named in the message."""


class DataError(ValueError):
    """Bad data: an unreadable image, a class folder with too few images, fewer than two
    classes, mismatched arrays. The message names the file or folder; the command line
    prints it as one line and exits with status 2."""
