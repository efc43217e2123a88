"""Fake ``comfy`` package of the test host (see ``tests/fake_host/__init__.py``)."""
