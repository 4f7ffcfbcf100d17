"""Operator layer: handlers (see ARCHITECTURE §6 for the layer order)."""
