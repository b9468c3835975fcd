"""Test doubles that are real servers: fake vendor HTTP APIs on loopback (vendors.py) and image makers."""
