"""Entry points: the CLI, the HTTP API and the bridge's main; the only callers of tasks/ besides producers."""
