"""Figures: episode grids (and, later, report plots). matplotlib with the Agg backend, files only."""
