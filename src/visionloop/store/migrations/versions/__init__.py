"""One module per schema revision, oldest first by number; written by ``visionloop db revision``."""
