-- Upload quotas (issue 16 point 7): what one account uploaded in the last 24 hours is summed on
-- every upload, so it is read through an index.
CREATE INDEX images_uploader ON images (clinic_id, uploaded_by, created_at);
