"""Who may do what: users and their argon2 passwords, login (with its limiter), JWT bearer tokens
through Litestar's own JWT security, and the guards the routes declare."""
