"""Twilio: the Messages adapter, the status callbacks' delivery reports and their signature check."""
