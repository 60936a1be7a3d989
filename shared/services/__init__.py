"""Business rules. Services flush; the request or task boundary commits."""
