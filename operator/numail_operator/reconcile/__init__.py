"""Operator layer: reconcile (see ARCHITECTURE §6 for the layer order)."""
