"""HTTP plumbing shared by every REST API: bodies, limits, errors, responses, streaming, the
access log and the client-disconnect probe (pure ASGI middleware where it runs per request)."""
