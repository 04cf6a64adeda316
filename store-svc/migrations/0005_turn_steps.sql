-- A long turn commits each finished model step (CommitTurnStep), so its progress is
-- readable before it ends. committed_steps counts the steps stored so far: a step
-- below it is never stored twice, whether the call is retried or a new owner replays it.
ALTER TABLE turns ADD COLUMN IF NOT EXISTS committed_steps integer NOT NULL DEFAULT 0;
