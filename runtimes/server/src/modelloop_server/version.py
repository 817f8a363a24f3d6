"""The server's own version (the package's and the image's)."""

SERVER_VERSION = "0.1.0"
