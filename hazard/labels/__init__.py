from hazard.labels.detectors import detect_amnesia, detect_loop, divergence
from hazard.labels.horizons import HORIZONS, hazard_labels
from hazard.labels.onset import Verdict, verdict
from hazard.labels.progress import progress_onsets, stall_onset

__all__ = ["HORIZONS", "Verdict", "detect_amnesia", "detect_loop", "divergence", "hazard_labels",
           "progress_onsets", "stall_onset", "verdict"]
