"""Accounts: devices, preferences, delivery status, API keys."""
