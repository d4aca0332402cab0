-- Row-level security is forced on every tenant table: until now it was only enabled, and enabled
-- alone exempts the table owner (the role that runs migrations and the operator commands, and
-- that owns the SECURITY DEFINER functions) from every policy. Forced, the owner too writes only
-- through a tenant transaction (app.clinic_id set, checked by tenant_isolation's WITH CHECK).
--
-- The owner keeps one explicit exemption, reads across tenants, because that is its job:
-- `clinic audit verify` and `clinic access-review` read every tenant on the admin connection, and
-- the definer functions clinic_id_by_slug (login), audit_heads (checkpoints) and clinic_ids
-- (tiering, outbox) run as the owner and must see every clinic. Superusers bypass RLS anyway; the
-- policy matters when the owner is an ordinary role, as README's `admin_url` suggests.
-- The policy names the owner of each table as it is now (the role that runs migrations); the
-- server's role (clinic_app) owns nothing and is not named, so it stays under tenant_isolation.
--
-- A migration that rewrites rows must now set app.clinic_id per tenant (or run as a superuser).
DO $$
DECLARE
    t text;
    owner text;
BEGIN
    FOREACH t IN ARRAY ARRAY[
        'clinics', 'locations', 'users', 'user_locations', 'mfa_recovery_codes', 'sessions',
        'patients', 'audit_events', 'consults', 'consult_links', 'images', 'location_hours',
        'rooms', 'appointment_types', 'availability', 'availability_exceptions',
        'appointment_series', 'appointments', 'appointment_events', 'idempotency_keys',
        'outbox_messages', 'portal_messages'
    ] LOOP
        SELECT pg_get_userbyid(c.relowner) INTO STRICT owner
        FROM pg_class c WHERE c.oid = format('public.%I', t)::regclass;
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY owner_reads_all_tenants ON %I FOR SELECT TO %I USING (true)', t, owner);
    END LOOP;
END
$$;
