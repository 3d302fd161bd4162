"""Plots, diagrams and analyses that the notebooks draw: no model code; skip on a first read."""
