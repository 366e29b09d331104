"""People and tenants: users (e-mail login), organizations (the tenant and billing account),
projects, memberships with roles, invitations, and project API keys. Knows nothing of chat,
providers or billing."""
