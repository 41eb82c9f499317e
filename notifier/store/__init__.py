"""Storage: the ORM models, the database, Redis, the delivery log and the recipient cache."""
