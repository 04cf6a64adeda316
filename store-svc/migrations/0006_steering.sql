-- Steering: a message sent with MULTITASK_POLICY_STEER while a turn runs joins that
-- turn (messages.turn_id) and is taken by it at its next step boundary. steered_position
-- is the position of the newest such message the turn has taken (at first, that of the
-- turn's own user message, so the search for untaken ones reads only the messages after
-- it); CompleteTurn moves any message still beyond it into a new turn of its own.
ALTER TABLE turns ADD COLUMN IF NOT EXISTS steered_position bigint NOT NULL DEFAULT 0;
UPDATE turns SET steered_position = m.position FROM messages m
  WHERE m.id = turns.user_message_id AND turns.steered_position = 0 AND turns.status IN (1, 2);
