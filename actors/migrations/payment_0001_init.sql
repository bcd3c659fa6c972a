-- The payment service's authorizations.
CREATE SCHEMA IF NOT EXISTS payment;

-- One row per order: the primary key is what makes a double charge impossible.
CREATE TABLE payment.authorizations (
    order_id      uuid PRIMARY KEY,
    id            uuid NOT NULL UNIQUE,
    customer_id   text NOT NULL,
    status        text NOT NULL CHECK (status IN ('AUTHORIZED', 'DECLINED')),
    amount_cents  bigint NOT NULL CHECK (amount_cents >= 0),
    currency      text NOT NULL,
    payment_token text NOT NULL,
    decline_code  text,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE payment.outbox (
    id         bigserial PRIMARY KEY,
    topic      text NOT NULL,
    key        text NOT NULL,
    event_id   uuid NOT NULL,
    payload    bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE payment.processed_events (
    event_id     uuid PRIMARY KEY,
    processed_at timestamptz NOT NULL DEFAULT now()
);
