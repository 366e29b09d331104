"""What every app stands on and nothing of the product's domain: errors that carry their HTTP
meaning, the DRF base endpoint and exception handler, pagination, Server-Sent Events, work
detached from a request, and ``Idempotency-Key``. Imports no other app of the project."""
