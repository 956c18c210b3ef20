"""Tests of the lab vault, gateway and CLI."""
