"""API inventory: routes, schemas, sensitive data, OpenAPI and a report from API call records (pure)."""
