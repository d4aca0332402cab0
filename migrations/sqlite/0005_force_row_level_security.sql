-- Row-level security exists on PostgreSQL only (its 0005 forces it on every tenant table); this
-- keeps the two migration sets numbered alike. On SQLite tenancy is the application's WHERE clauses.
SELECT 1;
