"""Streamed video: decode (PyAV), sample and drop (policy), classify and log (loop), write (output)."""
