"""Factories shared by the tests (imported as ``helpers``; never import a test module)."""
