"""Who may call the gateway, and how much: hashed API keys with scopes, per-key rate limits, bulkheads."""
