-- Steering: a message sent with MULTITASK_POLICY_STEER while a turn runs joins that
-- turn (messages.turn_id) and is taken by it at its next step boundary. steered_position
-- is the position of the newest such message the turn has taken; CompleteTurn moves
-- any message still beyond it into a new turn of its own.
ALTER TABLE turns ADD COLUMN IF NOT EXISTS steered_position bigint NOT NULL DEFAULT 0;
