-- Idempotency-Key on POST /orders (IETF httpapi idempotency-key draft): the
-- first request with a key is remembered with its response, so a retry gets
-- the same answer and no second order.
CREATE TABLE orders.idempotency_keys (
    key             text PRIMARY KEY,
    -- The request body as canonical JSON: a retry must send the same one.
    request         jsonb NOT NULL,
    -- IN_PROGRESS while the first request runs; DONE with its response.
    status          text NOT NULL CHECK (status IN ('IN_PROGRESS', 'DONE')),
    response_status integer,
    response_body   jsonb,
    -- An IN_PROGRESS key whose holder died is taken over after this.
    locked_until    timestamptz NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL
);
CREATE INDEX idempotency_keys_by_expiry ON orders.idempotency_keys (expires_at);
