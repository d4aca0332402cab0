-- Hardening the schema against a role that can create objects.
--
-- The SECURITY DEFINER functions run as the owner. Their search_path named only `public`, and
-- PostgreSQL searches pg_temp first when a path does not name it: a session's temporary table or
-- function called `clinics` or `audit_events` would shadow ours inside the owner's function.
-- Naming pg_temp last closes that (PostgreSQL's documentation, "Writing SECURITY DEFINER
-- Functions Safely").
ALTER FUNCTION clinic_id_by_slug(text) SET search_path = public, pg_temp;
ALTER FUNCTION audit_heads() SET search_path = public, pg_temp;
ALTER FUNCTION clinic_ids() SET search_path = public, pg_temp;

-- Nobody but the owner creates objects: not in the public schema (PostgreSQL 15 already revokes
-- this by default; clusters upgraded from older versions keep the old grant), and no temporary
-- objects in this database either. The server's role needs neither.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
DO $$
BEGIN
    EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', current_database());
END
$$;
