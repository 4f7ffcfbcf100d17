"""Operator layer: build (see ARCHITECTURE §6 for the layer order)."""
