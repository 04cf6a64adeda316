-- The conversation store: API keys, sessions, messages, turns, events, usage.
-- Every table carries tenant_id; every query filters on it.

ALTER TABLE tenants ADD COLUMN IF NOT EXISTS rate_limit_per_s integer NOT NULL DEFAULT 0;
ALTER TABLE tenants ADD COLUMN IF NOT EXISTS rate_limit_burst integer NOT NULL DEFAULT 0;

-- Only a SHA-256 of each secret is kept; `prefix` (the secret's public first part) finds
-- the row, the hash confirms it.
CREATE TABLE IF NOT EXISTS api_keys (
  id             text PRIMARY KEY,
  tenant_id      text NOT NULL REFERENCES tenants (id),
  name           text NOT NULL DEFAULT '',
  prefix         text NOT NULL UNIQUE,
  secret_sha256  bytea NOT NULL,
  scopes         text[] NOT NULL DEFAULT '{}',
  create_time    timestamptz NOT NULL DEFAULT now(),
  last_used_time timestamptz,
  revoke_time    timestamptz
);
CREATE INDEX IF NOT EXISTS api_keys_by_tenant ON api_keys (tenant_id, id);

-- A session row also holds the bookkeeping of its turn queue, so that locking it
-- serialises everything that changes the session's turns (see turns below).
CREATE TABLE IF NOT EXISTS sessions (
  id              text PRIMARY KEY,
  tenant_id       text NOT NULL REFERENCES tenants (id),
  external_id     text,
  user_id         text NOT NULL DEFAULT '',
  title           text NOT NULL DEFAULT '',
  status          smallint NOT NULL DEFAULT 1,
  agent_config    jsonb NOT NULL DEFAULT '{}',
  tags            text[] NOT NULL DEFAULT '{}',
  metadata        jsonb NOT NULL DEFAULT '{}',
  version         bigint NOT NULL DEFAULT 1,
  epoch           bigint NOT NULL DEFAULT 1,
  lease_epoch     bigint NOT NULL DEFAULT 0,
  message_count   bigint NOT NULL DEFAULT 0,
  turn_count      bigint NOT NULL DEFAULT 0,
  queued_turns    integer NOT NULL DEFAULT 0,
  running_turn_id text,
  waiting_since   timestamptz,
  create_time     timestamptz NOT NULL DEFAULT now(),
  update_time     timestamptz NOT NULL DEFAULT now(),
  close_time      timestamptz
);
CREATE UNIQUE INDEX IF NOT EXISTS sessions_external_id
  ON sessions (tenant_id, external_id) WHERE external_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS sessions_by_tenant ON sessions (tenant_id, id);
CREATE INDEX IF NOT EXISTS sessions_tags ON sessions USING gin (tags);
CREATE INDEX IF NOT EXISTS sessions_metadata ON sessions USING gin (metadata jsonb_path_ops);
-- Sessions with work to hand out, oldest waiting first.
CREATE INDEX IF NOT EXISTS sessions_runnable
  ON sessions (waiting_since) WHERE queued_turns > 0 AND running_turn_id IS NULL;

-- `position` is assigned from sessions.message_count under the session row lock: a
-- strict per-session order that does not depend on any clock.
CREATE TABLE IF NOT EXISTS messages (
  session_id      text NOT NULL,
  position        bigint NOT NULL,
  id              text NOT NULL UNIQUE,
  tenant_id       text NOT NULL,
  turn_id         text NOT NULL DEFAULT '',
  role            smallint NOT NULL,
  parts           jsonb NOT NULL,
  idempotency_key text,
  create_time     timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (session_id, position)
);
CREATE UNIQUE INDEX IF NOT EXISTS messages_idempotency
  ON messages (session_id, idempotency_key) WHERE idempotency_key IS NOT NULL;

CREATE TABLE IF NOT EXISTS turns (
  id                     text PRIMARY KEY,
  tenant_id              text NOT NULL,
  session_id             text NOT NULL,
  position               bigint NOT NULL,
  status                 smallint NOT NULL,
  user_message_id        text NOT NULL DEFAULT '',
  attempt                integer NOT NULL DEFAULT 0,
  recovery               boolean NOT NULL DEFAULT false,
  lease_owner            text,
  lease_epoch            bigint NOT NULL DEFAULT 0,
  lease_expiry           timestamptz,
  cancel_requested       boolean NOT NULL DEFAULT false,
  finish_reason          smallint NOT NULL DEFAULT 0,
  usage                  jsonb NOT NULL DEFAULT '{}',
  error                  jsonb,
  steps                  integer NOT NULL DEFAULT 0,
  first_seq              bigint NOT NULL DEFAULT 0,
  last_seq               bigint NOT NULL DEFAULT 0,
  time_to_first_token_ms bigint NOT NULL DEFAULT 0,
  create_time            timestamptz NOT NULL DEFAULT now(),
  start_time             timestamptz,
  end_time               timestamptz
);
CREATE UNIQUE INDEX IF NOT EXISTS turns_by_session ON turns (session_id, position);
-- Backs up the claim protocol: never two running turns in one session.
CREATE UNIQUE INDEX IF NOT EXISTS turns_one_running ON turns (session_id) WHERE status = 2;
CREATE INDEX IF NOT EXISTS turns_expiring ON turns (lease_expiry) WHERE status = 2;

-- The durable event log: the serialized parley.v1.Event of every non-transient event.
CREATE TABLE IF NOT EXISTS events (
  session_id text NOT NULL,
  seq        bigint NOT NULL,
  tenant_id  text NOT NULL,
  epoch      bigint NOT NULL,
  turn_id    text NOT NULL DEFAULT '',
  payload    bytea NOT NULL,
  PRIMARY KEY (session_id, seq)
);

-- One row per finished turn, for billing and dashboards.
CREATE TABLE IF NOT EXISTS usage (
  turn_id            text PRIMARY KEY,
  tenant_id          text NOT NULL,
  session_id         text NOT NULL,
  input_tokens       bigint NOT NULL DEFAULT 0,
  output_tokens      bigint NOT NULL DEFAULT 0,
  cache_read_tokens  bigint NOT NULL DEFAULT 0,
  cache_write_tokens bigint NOT NULL DEFAULT 0,
  create_time        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS usage_by_tenant ON usage (tenant_id, create_time);
