-- An operator can disable a tenant: its keys stop resolving (every gateway refuses them
-- within its key cache's TTL) and nothing else changes, so enabling it again restores
-- everything as it was.
ALTER TABLE tenants ADD COLUMN IF NOT EXISTS disable_time timestamptz;
