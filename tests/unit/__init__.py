"""Rules with no broker and no services: fast, and run first."""
