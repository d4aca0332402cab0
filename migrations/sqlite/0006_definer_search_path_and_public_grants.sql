-- PostgreSQL only (its 0006 pins the definer functions' search_path and revokes CREATE and TEMP
-- from PUBLIC); this keeps the two migration sets numbered alike.
SELECT 1;
