"""Fake ``comfy.utils``: ``ProgressBar`` with ComfyUI's interface; updates are recorded."""

from __future__ import annotations

PROGRESS: list[tuple[int, int]] = []  # (value, total) of every update, across bars
BARS: list["ProgressBar"] = []


class ProgressBar:
    def __init__(self, total, node_id=None):
        self.total = total
        self.current = 0
        self.node_id = node_id
        BARS.append(self)

    def update_absolute(self, value, total=None, preview=None):
        if total is not None:
            self.total = total
        if value > self.total:
            value = self.total
        self.current = value
        PROGRESS.append((value, self.total))

    def update(self, value):
        self.update_absolute(self.current + value)
