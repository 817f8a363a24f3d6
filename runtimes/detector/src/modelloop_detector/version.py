"""The detector's own version (the package's and the image's)."""

DETECTOR_VERSION = "0.1.0"
