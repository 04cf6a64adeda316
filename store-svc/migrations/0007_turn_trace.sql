-- The W3C traceparent of the call that enqueued a turn (session-svc's SubmitMessage
-- span), so the worker that runs the turn later, on any replica, continues that trace:
-- one trace from the gateway call to the sealed turn. Empty when the caller sent none.
ALTER TABLE turns ADD COLUMN IF NOT EXISTS traceparent text NOT NULL DEFAULT '';
