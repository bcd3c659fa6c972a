-- The order service's orders and saga state.
CREATE SCHEMA IF NOT EXISTS orders;

CREATE TABLE orders.orders (
    id             uuid PRIMARY KEY,
    customer_id    text NOT NULL,
    status         text NOT NULL,
    reason         text,
    total_cents    bigint NOT NULL CHECK (total_cents >= 0),
    currency       text NOT NULL,
    payment_token  text NOT NULL,
    correlation_id uuid NOT NULL,
    -- Sequence number of the latest status; the saga's optimistic-lock version.
    seq            integer NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_by_customer ON orders.orders (customer_id, created_at DESC);
-- Sagas still in flight, for recovery after a restart.
CREATE INDEX orders_in_flight ON orders.orders (created_at)
    WHERE status NOT IN ('CONFIRMED', 'REJECTED');

CREATE TABLE orders.order_items (
    order_id         uuid NOT NULL REFERENCES orders.orders (id),
    product_id       uuid NOT NULL,
    name             text NOT NULL,
    quantity         integer NOT NULL CHECK (quantity > 0),
    unit_price_cents bigint NOT NULL CHECK (unit_price_cents >= 0),
    PRIMARY KEY (order_id, product_id)
);

CREATE TABLE orders.status_history (
    order_id uuid NOT NULL REFERENCES orders.orders (id),
    seq      integer NOT NULL,
    status   text NOT NULL,
    reason   text,
    at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (order_id, seq)
);

CREATE TABLE orders.outbox (
    id         bigserial PRIMARY KEY,
    topic      text NOT NULL,
    key        text NOT NULL,
    event_id   uuid NOT NULL,
    payload    bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE orders.processed_events (
    event_id     uuid PRIMARY KEY,
    processed_at timestamptz NOT NULL DEFAULT now()
);
