"""Galleries for open-set recognition: enrolled embeddings in SQLite with a derived
nearest-neighbour index (`Gallery`), and the threshold chosen on held-out probes
(`calibrate`, `Calibration`)."""

from clusterloss.gallery.calibration import Calibration, CalibrationError, calibrate, probe_scores
from clusterloss.gallery.gallery import UNKNOWN, Gallery

__all__ = ["Calibration", "CalibrationError", "Gallery", "UNKNOWN", "calibrate", "probe_scores"]
