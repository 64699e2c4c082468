"""Plots and the HTML report of a run."""

from clusterloss.app.report.html import write_report
from clusterloss.app.report.plots import plot_features, plot_history, plot_neighbors

__all__ = ["plot_features", "plot_history", "plot_neighbors", "write_report"]
