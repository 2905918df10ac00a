from hazard.compression.registry import PRESS_NAMES, PressSpec, build_press, is_decoding, tracker_of

__all__ = ["PRESS_NAMES", "PressSpec", "build_press", "is_decoding", "tracker_of"]
