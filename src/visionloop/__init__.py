"""visionloop: the closed loop for a computer-vision image classifier."""

from visionloop.config import apply_offline_environment

apply_offline_environment()

__version__ = "0.1.0"
