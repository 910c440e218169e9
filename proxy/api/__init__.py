"""HTTP handlers: parse, call the core, shape the response. No business rules here."""
