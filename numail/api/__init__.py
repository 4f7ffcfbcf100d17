"""Pydantic models of every numail.ai custom resource, and condition helpers."""
