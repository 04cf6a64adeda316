-- Turn scheduling: each turn carries the agent configuration it was enqueued with, and
-- the claim finds work per tenant (fair order, optional cap on running turns).

-- A copy of sessions.agent_config taken by EnqueueTurn under the session lock, so an
-- UpdateSession never changes a turn that is already waiting.
ALTER TABLE turns ADD COLUMN IF NOT EXISTS agent_config jsonb NOT NULL DEFAULT '{}';
-- Turns enqueued before this column existed run with their session's configuration, as
-- they would have (1 = QUEUED, 2 = RUNNING; finished turns keep '{}'). Repeatable: a
-- second run finds nothing to copy that it has not copied already.
UPDATE turns SET agent_config = sessions.agent_config
  FROM sessions
  WHERE turns.session_id = sessions.id AND turns.status IN (1, 2)
    AND turns.agent_config = '{}' AND sessions.agent_config <> '{}';

-- When the tenant last got a claim while other tenants waited too: equal fair ranks go
-- to the tenant served least recently.
ALTER TABLE tenants ADD COLUMN IF NOT EXISTS last_claim_time timestamptz;

-- A tenant's runnable sessions, oldest waiting first: the claim walks the tenants that
-- have work (a skip scan over tenant_id) and takes the first few of each.
CREATE INDEX IF NOT EXISTS sessions_runnable_by_tenant
  ON sessions (tenant_id, waiting_since) WHERE queued_turns > 0 AND running_turn_id IS NULL;
-- A tenant's running turns, counted by the fair order and by the per-tenant cap.
CREATE INDEX IF NOT EXISTS sessions_running_by_tenant
  ON sessions (tenant_id) WHERE running_turn_id IS NOT NULL;
-- Replaced by sessions_runnable_by_tenant. Left in place, it misleads the planner: for a
-- tenant with few runnable sessions behind another's many, "walk all runnable sessions in
-- waiting order and filter on the tenant" looks cheap and reads every one of them.
DROP INDEX IF EXISTS sessions_runnable;
