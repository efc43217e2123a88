"""Fake ``comfy.patcher_extension``: the callback names the pack uses."""


class CallbacksMP:
    ON_CLONE = "on_clone"
    ON_LOAD = "on_load_after"
    ON_DETACH = "on_detach_after"
    ON_CLEANUP = "on_cleanup"

    @classmethod
    def init_callbacks(cls) -> dict:
        return {cls.ON_CLONE: {}, cls.ON_LOAD: {}, cls.ON_DETACH: {}, cls.ON_CLEANUP: {}}
