"""Use cases. Each opens one unit of work, calls the domain, and commits or not."""
