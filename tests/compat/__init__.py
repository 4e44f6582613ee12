"""The differential test against the reference SDK (see test_differential.py)."""
