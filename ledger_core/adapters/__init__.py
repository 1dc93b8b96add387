"""The only code that talks to PostgreSQL, Redis and the network."""
