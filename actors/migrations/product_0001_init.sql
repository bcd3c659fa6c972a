-- The product service's catalogue and inventory.
CREATE SCHEMA IF NOT EXISTS product;

CREATE TABLE product.products (
    id          uuid PRIMARY KEY,
    sku         text NOT NULL UNIQUE,
    name        text NOT NULL,
    description text NOT NULL DEFAULT '',
    price_cents bigint NOT NULL CHECK (price_cents >= 0),
    currency    text NOT NULL DEFAULT 'EUR',
    -- The database itself refuses to oversell, whatever the code does.
    stock       integer NOT NULL CHECK (stock >= 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Stock held for an order; released when the saga compensates.
CREATE TABLE product.reservations (
    order_id    uuid NOT NULL,
    product_id  uuid NOT NULL REFERENCES product.products (id),
    quantity    integer NOT NULL CHECK (quantity > 0),
    status      text NOT NULL CHECK (status IN ('RESERVED', 'RELEASED')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (order_id, product_id)
);

-- Transactional outbox: events committed with the change that caused them.
CREATE TABLE product.outbox (
    id         bigserial PRIMARY KEY,
    topic      text NOT NULL,
    key        text NOT NULL,
    event_id   uuid NOT NULL,
    payload    bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Ids of consumed events, recorded with their effect: redelivery is harmless.
CREATE TABLE product.processed_events (
    event_id     uuid PRIMARY KEY,
    processed_at timestamptz NOT NULL DEFAULT now()
);
