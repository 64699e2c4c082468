"""Plots and the HTML report of a run."""

from clusterloss.report.plots import plot_features, plot_history

__all__ = ["plot_features", "plot_history"]
