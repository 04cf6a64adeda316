-- Tenants: every other row in Parley belongs to exactly one.
CREATE TABLE IF NOT EXISTS tenants (
  id          text PRIMARY KEY,
  name        text NOT NULL DEFAULT '',
  create_time timestamptz NOT NULL DEFAULT now()
);
