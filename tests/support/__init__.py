"""Test doubles for the unit tier: a fake Debian host and the mail stack it emulates."""
