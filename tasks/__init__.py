"""Prefect tasks: thin wrappers over the visionloop library, with retries and names."""
