"""Money: prices, the usage ledger, budgets and their holds, rate limits, metering of every
upstream call, statements, the usage dashboard. Builds on providers and accounts; chat and the
gateway build on it."""
