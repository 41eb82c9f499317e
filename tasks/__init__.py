"""Celery edge of notifier: the app and thin tasks over notifier's domain functions."""
