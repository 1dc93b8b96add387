"""Pure domain: money, currencies, transfers and the posting rules. Standard library only."""
